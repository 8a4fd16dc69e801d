"""A small JSON Schema checker for tests (the project adds no ``jsonschema`` dependency).

Covers the keywords the emulator's generator claims to honour; independent code, so a bug in the
generator is not mirrored here.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import uuid
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any, NoReturn

__all__ = ["schema_errors"]

_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}

_FORMATS: dict[str, Any] = {
    "date-time": lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")),
    "date": date.fromisoformat,
    "time": lambda s: time.fromisoformat(s.replace("Z", "+00:00")),
    "email": lambda s: re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", s) or _bad(),
    "uuid": uuid.UUID,
    "ipv4": ipaddress.IPv4Address,
    "ipv6": ipaddress.IPv6Address,
    "uri": lambda s: re.match(r"[a-z]+://", s) or _bad(),
    "hostname": lambda s: re.fullmatch(r"[a-zA-Z0-9.-]+", s) or _bad(),
}


def _bad() -> NoReturn:
    raise ValueError("bad format")


def schema_errors(schema: Any, value: Any, root: Any = None, path: str = "$") -> list[str]:
    """Return the ways ``value`` violates ``schema`` (empty when it conforms)."""
    root = schema if root is None else root
    if schema is True or schema == {}:
        return []
    if "$ref" in schema:
        target = root
        for key in schema["$ref"].lstrip("#").split("/")[1:]:
            target = target[key]
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return schema_errors(target, value, root, path) + schema_errors(rest, value, root, path)
    errors: list[str] = []
    for sub in schema.get("allOf", []):
        errors += schema_errors(sub, value, root, path)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            matches = [not schema_errors(s, value, root, path) for s in schema[key]]
            if not any(matches):
                errors.append(f"{path}: matches no {key} branch")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} != const {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in enum")
    declared = schema.get("type")
    if declared is not None:
        allowed = declared if isinstance(declared, list) else [declared]
        if schema.get("nullable"):
            allowed = [*allowed, "null"]
        if not any(_TYPES[t](value) for t in allowed):
            return [*errors, f"{path}: {value!r} is not of type {declared}"]
    if isinstance(value, dict):
        errors += _object_errors(schema, value, root, path)
    elif isinstance(value, list):
        errors += _array_errors(schema, value, root, path)
    elif isinstance(value, str):
        errors += _string_errors(schema, value, path)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        errors += _number_errors(schema, value, path)
    return errors


def _object_errors(
    schema: Mapping[str, Any], value: dict[str, Any], root: Any, path: str
) -> list[str]:
    errors = [f"{path}: missing {k!r}" for k in schema.get("required", []) if k not in value]
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            errors += schema_errors(props[key], item, root, f"{path}.{key}")
        elif extra is False:
            errors.append(f"{path}: unexpected property {key!r}")
        elif isinstance(extra, Mapping):
            errors += schema_errors(extra, item, root, f"{path}.{key}")
    if len(value) < schema.get("minProperties", 0):
        errors.append(f"{path}: fewer than minProperties")
    return errors


def _array_errors(schema: Mapping[str, Any], value: list[Any], root: Any, path: str) -> list[str]:
    errors = []
    if len(value) < schema.get("minItems", 0):
        errors.append(f"{path}: fewer than minItems")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{path}: more than maxItems")
    if schema.get("uniqueItems"):
        keys = [json.dumps(v, sort_keys=True) for v in value]
        if len(set(keys)) != len(keys):
            errors.append(f"{path}: items not unique")
    prefix = schema.get("prefixItems", [])
    for i, item in enumerate(value):
        sub = prefix[i] if i < len(prefix) else schema.get("items", {})
        errors += schema_errors(sub, item, root, f"{path}[{i}]")
    return errors


def _string_errors(schema: Mapping[str, Any], value: str, path: str) -> list[str]:
    errors = []
    if len(value) < schema.get("minLength", 0):
        errors.append(f"{path}: shorter than minLength")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{path}: longer than maxLength")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{path}: {value!r} does not match {schema['pattern']!r}")
    check = _FORMATS.get(schema.get("format", ""))
    if check is not None:
        try:
            check(value)
        except ValueError:
            errors.append(f"{path}: {value!r} is not a valid {schema['format']}")
    return errors


def _number_errors(schema: Mapping[str, Any], value: float, path: str) -> list[str]:
    errors = []
    low, high = schema.get("minimum"), schema.get("maximum")
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if low is not None and (value < low or (ex_low is True and value == low)):
        errors.append(f"{path}: {value} below minimum")
    if high is not None and (value > high or (ex_high is True and value == high)):
        errors.append(f"{path}: {value} above maximum")
    if not isinstance(ex_low, bool) and ex_low is not None and value <= ex_low:
        errors.append(f"{path}: {value} not above exclusiveMinimum")
    if not isinstance(ex_high, bool) and ex_high is not None and value >= ex_high:
        errors.append(f"{path}: {value} not below exclusiveMaximum")
    step = schema.get("multipleOf")
    if step is not None:
        ratio = value / step
        if not math.isclose(ratio, round(ratio), abs_tol=1e-9):
            errors.append(f"{path}: {value} not a multiple of {step}")
    return errors
