"""Generate a deterministic JSON value that conforms to a JSON Schema.

Used by :mod:`._answers` for structured output (OpenAI ``response_format`` json_schema and
forced tools, Anthropic forced tools and ``output_config.format``). The value is a pure function
of ``(schema, seed)``: each node's choice comes from a CRC of the seed and the node's path, so
two prompts (two seeds) get different values and one prompt always gets the same one.

Supported: ``type`` (one or a list, ``null`` included), ``properties``/``required``/
``additionalProperties``/``minProperties``, ``items``/``prefixItems``/``minItems``/``maxItems``/
``uniqueItems``, ``enum``, ``const``, ``minLength``/``maxLength``, the common string ``format``
values, ``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum`` (draft 4 booleans too),
``multipleOf``, ``anyOf``/``oneOf`` (first non-null branch; a ``null`` branch once nested
deeply, so recursive schemas terminate), ``allOf`` (merged), local ``$ref`` into ``$defs``/
``definitions``, OpenAPI ``nullable``.

Not honoured: ``pattern`` (a few candidates are tried; otherwise the string is kept),
``not``, ``if``/``then``/``else``, ``patternProperties``, ``contains``: structured-output APIs
reject or ignore most of these.

Example:
    >>> generate({"type": "integer", "minimum": 5, "maximum": 5}, seed="abc")
    5
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import uuid
import zlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SchemaError", "generate"]

# Past this depth, optional properties are skipped and null/shortest branches are preferred, so
# recursive schemas (trees, linked lists) produce a finite value.
_SHALLOW_DEPTH = 6
# A schema still nesting at this depth has a required cycle: no finite value conforms.
_MAX_DEPTH = 64
_DEFAULT_SPAN = 100


class SchemaError(ValueError):
    """The schema is malformed or cannot be satisfied (e.g. a required recursive cycle)."""


def generate(schema: Mapping[str, Any] | bool, *, seed: str) -> Any:
    """Return a JSON value conforming to ``schema``, chosen deterministically by ``seed``.

    Args:
        schema: a JSON Schema (a mapping, or ``True`` for "anything").
        seed: any string; the same seed always gives the same value.

    Returns:
        A JSON-serialisable value.

    Raises:
        SchemaError: for ``false`` schemas, non-local ``$ref``s and unsatisfiable cycles.

    Example:
        >>> generate({"type": "object", "properties": {"ok": {"type": "boolean"}}}, seed="s")
        {'ok': True}
    """
    return _Generator(schema, seed).value(schema, "$", 0)


class _Generator:
    __slots__ = ("_root", "_seed")

    def __init__(self, root: Mapping[str, Any] | bool, seed: str) -> None:
        self._root = root
        self._seed = zlib.crc32(seed.encode())

    def hash(self, path: str) -> int:
        return zlib.crc32(path.encode(), self._seed)

    def value(self, schema: Any, path: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise SchemaError(f"schema at {path} recurses without an optional exit")
        if schema is True or schema == {}:
            return self.string({}, path)
        if not isinstance(schema, Mapping):
            raise SchemaError(f"schema at {path} must be an object or true, got {schema!r}")
        node = self.resolve(schema)
        if "const" in node:
            return node["const"]
        if "enum" in node:
            choices = node["enum"]
            if not isinstance(choices, list) or not choices:
                raise SchemaError(f"enum at {path} must be a non-empty array")
            return choices[self.hash(path) % len(choices)]
        for key in ("anyOf", "oneOf"):
            if key in node:
                rest = {k: v for k, v in node.items() if k != key}
                branch = self.resolve(self.pick(node[key], path, depth))
                return self.value({**rest, **branch}, path, depth)
        return _BUILDERS[self.type_of(node, depth)](self, node, path, depth)

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        """Inline ``$ref`` and merge ``allOf`` so callers see one flat schema."""
        node = schema
        seen = 0
        while "$ref" in node:
            seen += 1
            if seen > _MAX_DEPTH:
                raise SchemaError(f"$ref cycle at {schema['$ref']!r}")
            target = self.lookup(str(node["$ref"]))
            node = {**{k: v for k, v in node.items() if k != "$ref"}, **target}
        if "allOf" in node:
            merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
            for part in node["allOf"]:
                _merge_into(merged, self.resolve(part) if isinstance(part, Mapping) else {})
            node = merged
        return node

    def lookup(self, ref: str) -> Mapping[str, Any]:
        if not ref.startswith("#"):
            raise SchemaError(f"only local $ref values are supported, got {ref!r}")
        target: Any = self._root
        for raw in ref[1:].split("/")[1:]:
            key = raw.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or key not in target:
                raise SchemaError(f"$ref {ref!r} points nowhere")
            target = target[key]
        if target is True:
            return {}
        if not isinstance(target, Mapping):
            raise SchemaError(f"$ref {ref!r} does not point to a schema")
        return target

    def pick(self, branches: Any, path: str, depth: int) -> Mapping[str, Any]:
        if not isinstance(branches, list) or not branches:
            raise SchemaError(f"anyOf/oneOf at {path} must be a non-empty array")
        resolved = [self.resolve(b) if isinstance(b, Mapping) else {} for b in branches]
        nulls = [i for i, b in enumerate(resolved) if b.get("type") == "null"]
        if depth >= _SHALLOW_DEPTH and nulls:
            return resolved[nulls[0]]
        for branch in resolved:
            if branch.get("type") != "null":
                return branch
        return resolved[0]

    def type_of(self, node: Mapping[str, Any], depth: int) -> str:
        declared = node.get("type")
        if isinstance(declared, list):
            options = [t for t in declared if t != "null"]
            if not options or ("null" in declared and depth >= _SHALLOW_DEPTH):
                return "null"
            return str(options[0])
        if isinstance(declared, str):
            if declared not in _BUILDERS:
                raise SchemaError(f"unknown type {declared!r}")
            return declared
        return _infer_type(node)

    def object(self, node: Mapping[str, Any], path: str, depth: int) -> dict[str, Any]:
        props: Mapping[str, Any] = node.get("properties") or {}
        required = node.get("required") or []
        shallow = depth >= _SHALLOW_DEPTH
        out: dict[str, Any] = {}
        for name, sub in props.items():
            if not shallow or name in required:
                out[name] = self.value(sub, f"{path}.{name}", depth + 1)
        extra = node.get("additionalProperties", True)
        extra_schema = extra if isinstance(extra, Mapping) else {}
        for name in required:
            if name not in out:
                out[name] = self.value(extra_schema, f"{path}.{name}", depth + 1)
        missing = int(node.get("minProperties", 0)) - len(out)
        if extra is not False:
            for i in range(missing):
                out[f"key{i}"] = self.value(extra_schema, f"{path}.key{i}", depth + 1)
        return out

    def array(self, node: Mapping[str, Any], path: str, depth: int) -> list[Any]:
        items = node.get("items", {})
        prefix = node.get("prefixItems") or (items if isinstance(items, list) else [])
        rest = node.get("additionalItems", {}) if isinstance(items, list) else items
        low = int(node.get("minItems", 0))
        high = node.get("maxItems")
        count = low if depth >= _SHALLOW_DEPTH else max(low, len(prefix), 1 + self.hash(path) % 3)
        if high is not None:
            count = min(count, int(high))
        if rest is False:
            count = min(count, len(prefix))
        unique = bool(node.get("uniqueItems"))
        out: list[Any] = []
        seen: set[str] = set()
        for i in range(count):
            sub = prefix[i] if i < len(prefix) else rest
            value = self.value(sub, f"{path}[{i}]", depth + 1)
            if unique:
                value = self.unique(sub, value, f"{path}[{i}]", depth + 1, seen)
            out.append(value)
        return out

    def unique(self, sub: Any, value: Any, path: str, depth: int, seen: set[str]) -> Any:
        """Return ``value`` or, when ``seen`` has it, a varied value not yet seen."""
        node = self.resolve(sub) if isinstance(sub, Mapping) else {}
        # Re-draw with varied paths first, then walk a small enum exhaustively (lazily: the
        # first value is almost always new).
        redraws = (self.value(sub, f"{path}#{n}", depth) for n in range(8))
        for candidate in itertools.chain([value], redraws, node.get("enum", [])):
            key = json.dumps(candidate, sort_keys=True)
            if key not in seen:
                seen.add(key)
                return candidate
        return value

    def string(self, node: Mapping[str, Any], path: str, depth: int = 0) -> str:
        h = self.hash(path)
        fmt = node.get("format")
        label = path.rsplit(".", 1)[-1].split("[", 1)[0].lstrip("$") or "value"
        text = _FORMATS[fmt](h) if fmt in _FORMATS else f"{label}-{h:08x}"
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            text = _try_pattern(pattern, text, h)
        low = int(node.get("minLength", 0))
        if len(text) < low:
            text += "x" * (low - len(text))
        high = node.get("maxLength")
        return text if high is None else text[: int(high)]

    def integer(self, node: Mapping[str, Any], path: str, depth: int) -> int:
        low, high = _bounds(node)
        first, last = math.ceil(low), math.floor(high)
        if node.get("exclusiveMinimum") is True or _exclusive(node, "exclusiveMinimum") == first:
            first += 1
        if node.get("exclusiveMaximum") is True or _exclusive(node, "exclusiveMaximum") == last:
            last -= 1
        step = node.get("multipleOf")
        if isinstance(step, int) and step > 0:
            first = math.ceil(first / step) * step
            count = (last - first) // step + 1
            return first + (self.hash(path) % max(count, 1)) * step
        return first + self.hash(path) % max(last - first + 1, 1)

    def number(self, node: Mapping[str, Any], path: str, depth: int) -> float:
        low, high = _bounds(node)
        step = node.get("multipleOf")
        h = self.hash(path)
        if isinstance(step, (int, float)) and step > 0:
            first, last = math.ceil(low / step), math.floor(high / step)
            first += first * step == low and _exclusive(node, "exclusiveMinimum") is not None
            last -= last * step == high and _exclusive(node, "exclusiveMaximum") is not None
            count = last - first + 1
            return (first + h % max(count, 1)) * step
        # A fraction strictly inside (0, 1) keeps exclusive bounds satisfied.
        value = low + (high - low) * ((h % 997) + 1) / 999
        rounded = round(value, 2)
        return rounded if low < rounded < high else value

    def boolean(self, node: Mapping[str, Any], path: str, depth: int) -> bool:
        return bool(self.hash(path) & 1)

    def null(self, node: Mapping[str, Any], path: str, depth: int) -> None:
        return None


def _infer_type(node: Mapping[str, Any]) -> str:
    if any(k in node for k in ("properties", "required", "additionalProperties")):
        return "object"
    if any(k in node for k in ("items", "prefixItems", "minItems", "maxItems")):
        return "array"
    if any(k in node for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
        return "number"
    return "string"


def _merge_into(merged: dict[str, Any], part: Mapping[str, Any]) -> None:
    for key, value in part.items():
        if key == "properties":
            merged["properties"] = {**merged.get("properties", {}), **value}
        elif key == "required":
            merged["required"] = [*merged.get("required", []), *value]
        else:
            merged[key] = value


def _exclusive(node: Mapping[str, Any], key: str) -> float | None:
    value = node.get(key)
    # Draft 4 uses booleans modifying minimum/maximum; draft 6+ uses numbers.
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _bounds(node: Mapping[str, Any]) -> tuple[float, float]:
    low: float | None = node.get("minimum")
    high: float | None = node.get("maximum")
    ex_low, ex_high = _exclusive(node, "exclusiveMinimum"), _exclusive(node, "exclusiveMaximum")
    if ex_low is not None and (low is None or ex_low >= low):
        low = ex_low
    if ex_high is not None and (high is None or ex_high <= high):
        high = ex_high
    if low is None and high is None:
        return 0.0, float(_DEFAULT_SPAN)
    if low is None:
        assert high is not None
        return high - _DEFAULT_SPAN, float(high)
    if high is None:
        return float(low), low + _DEFAULT_SPAN
    return float(low), float(high)


def _try_pattern(pattern: str, text: str, h: int) -> str:
    try:
        regex = re.compile(pattern)
    except re.error:
        return text
    for candidate in (text, f"{h:08x}", str(h), f"{h:08X}", "a", "A", "0"):
        if regex.search(candidate):
            return candidate
    return text


def _uuid(h: int) -> str:
    return str(uuid.UUID(hashlib.md5(str(h).encode(), usedforsecurity=False).hexdigest()))


_FORMATS: dict[str, Callable[[int], str]] = {
    "date-time": lambda h: f"2025-{h % 12 + 1:02d}-{h % 28 + 1:02d}T{h % 24:02d}:{h % 60:02d}:00Z",
    "date": lambda h: f"2025-{h % 12 + 1:02d}-{h % 28 + 1:02d}",
    "time": lambda h: f"{h % 24:02d}:{h % 60:02d}:00Z",
    "duration": lambda h: f"P{h % 30 + 1}D",
    "email": lambda h: f"user{h % 10000}@example.com",
    "hostname": lambda h: f"host-{h:08x}.example.com",
    "ipv4": lambda h: f"10.{h >> 16 & 255}.{h >> 8 & 255}.{h & 255}",
    "ipv6": lambda h: f"2001:db8::{h >> 16 & 0xFFFF:x}:{h & 0xFFFF:x}",
    "uri": lambda h: f"https://example.com/r/{h:08x}",
    "url": lambda h: f"https://example.com/r/{h:08x}",
    "uri-reference": lambda h: f"/r/{h:08x}",
    "uuid": _uuid,
}

_BUILDERS: dict[str, Callable[[_Generator, Mapping[str, Any], str, int], Any]] = {
    "object": _Generator.object,
    "array": _Generator.array,
    "string": _Generator.string,
    "integer": _Generator.integer,
    "number": _Generator.number,
    "boolean": _Generator.boolean,
    "null": _Generator.null,
}
