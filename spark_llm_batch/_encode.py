"""Rows to request lines: build each prompt's chunk-file line and request hash on executors.

The provider owns the wire format (``request_body`` / ``request_line``); this module only makes it
fast. It renders one line and one canonical body with sentinel values on the driver, splits them at
the sentinels into a :class:`_Template`, and checks on a tricky probe prompt that splicing reproduces
the provider's own output exactly. Executors then only JSON-escape each prompt and splice it (and its
hash, which is also the provider ``custom_id``) into the template: no dict building, no full
``json.dumps`` per row. A provider whose output cannot be spliced falls back to calling it per row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spark_llm_batch._columns import ERR_CLASS, ERR_MSG, HASH, LINE, NBYTES
from spark_llm_batch.config import ProviderSettings

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

    from spark_llm_batch.config import BatchConfig
    from spark_llm_batch.providers.base import Provider

__all__ = ["HASH_VERSION", "encode_requests", "request_hash"]

HASH_VERSION = 1
"""Bumped if the canonical hash encoding ever changes (it would re-send every request)."""

INVALID_INPUT = "invalid_input"
TOO_LARGE = "too_large"

# A prompt that exercises every escaping rule: quotes, backslash, controls, non-ASCII, astral plane,
# the JSON-legal but JS-hostile U+2028, and an HTML-ish slash some encoders escape.
_PROBE_PROMPT = 'Probe "q" \\ </x> \x00\x1f\n\r\t é ü 中文 😀 \u2028 {0} {{}}'

_Escaper = Callable[[str], str]


# The C string encoders behind ``json.dumps`` (ensure_ascii False / True), called directly: the
# same output without ``dumps``' per-call overhead, which dominated encoding (~6x faster).
_encode_basestring: Callable[[str], str] = json.encoder.encode_basestring
_encode_basestring_ascii: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _escape_unicode(text: str) -> str:
    return _encode_basestring(text)[1:-1]


def _escape_ascii(text: str) -> str:
    return _encode_basestring_ascii(text)[1:-1]


# The two ways Python's json writes a string; the probe decides which one the provider uses.
_ESCAPERS: tuple[_Escaper, ...] = (_escape_unicode, _escape_ascii)


def _canonical(obj: Any) -> str:
    # Sorted keys, no whitespace: equal requests serialise equally whatever their dict order.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _hash_document(provider: Provider, config: BatchConfig, body: Any) -> dict[str, Any]:
    # The body carries model, messages, params and response format; provider and endpoint are added
    # because the same body means a different request elsewhere.
    return {
        "v": HASH_VERSION,
        "provider": provider.name,
        "endpoint": config.endpoint,
        "model": config.model_name,
        "body": body,
    }


def request_hash(provider: Provider, config: BatchConfig, prompt: str) -> str:
    """The request hash of ``prompt``: 32 lowercase hex characters, also the provider ``custom_id``.

    It covers provider, endpoint, model and the whole request body (messages, params, response
    format), so it changes when any of them does, and never depends on where the row sits.

    Example:
        >>> request_hash(provider, config, "Say hi")  # doctest: +SKIP
        '5f0c0e5d4a1b2c3d4e5f60718293a4b5'
    """
    document = _hash_document(provider, config, provider.request_body(config, prompt))
    return hashlib.sha256(_canonical(document).encode("utf-8")).hexdigest()[:32]


def _format_template(text: str, markers: dict[str, int]) -> str:
    """``text`` as a ``str.format`` template, each marker replaced by its positional field."""
    text = text.replace("{", "{{").replace("}", "}}")
    for marker, index in markers.items():
        text = text.replace(marker, f"{{{index}}}")
    return text


@dataclass(frozen=True)
class _Template:
    """Everything an executor needs to encode prompts; small and picklable."""

    line: str | None  # format template: {0} = custom id, {1} = escaped prompt; None = slow path
    canonical: str | None  # format template of the hash document: {0} = escaped prompt
    null_hash: str  # hash given to rows whose prompt is null
    escape: _Escaper | None
    provider: Provider | None  # only on the slow path
    config: BatchConfig | None  # only on the slow path, without credentials
    max_bytes: int

    def encode(self, prompt: str) -> tuple[str, str]:
        """``(hash, line)`` of one non-empty prompt."""
        if self.line is None or self.canonical is None or self.escape is None:
            assert self.provider is not None
            assert self.config is not None
            custom_id = request_hash(self.provider, self.config, prompt)
            body = self.provider.request_body(self.config, prompt)
            return custom_id, self.provider.request_line(custom_id, body, self.config)
        canonical = _escape_unicode(prompt)  # the hash document is always written unescaped UTF-8
        escaped = canonical if self.escape is _escape_unicode else self.escape(prompt)
        digest = hashlib.sha256(self.canonical.format(canonical).encode("utf-8")).hexdigest()
        return digest[:32], self.line.format(digest[:32], escaped)


def _build_template(provider: Provider, config: BatchConfig, max_bytes: int) -> _Template:
    prompt_mark = f"LLMPROMPT{uuid.uuid4().hex}"  # alphanumeric: identical under any JSON escaping
    id_mark = uuid.uuid4().hex
    body = provider.request_body(config, prompt_mark)
    line = _format_template(
        provider.request_line(id_mark, body, config), {id_mark: 0, prompt_mark: 1}
    )
    canonical = _format_template(
        _canonical(_hash_document(provider, config, body)), {prompt_mark: 0}
    )
    null_hash = hashlib.sha256(f"null-prompt\x00{canonical}".encode()).hexdigest()[:32]
    expected_hash = request_hash(provider, config, _PROBE_PROMPT)
    expected_line = provider.request_line(
        expected_hash, provider.request_body(config, _PROBE_PROMPT), config
    )
    for escape in _ESCAPERS:
        fast = _Template(line, canonical, null_hash, escape, None, None, max_bytes)
        if fast.encode(_PROBE_PROMPT) == (expected_hash, expected_line):
            return fast
    # The provider serialises in a way splicing cannot reproduce: correct but slower. The template
    # travels to executors, so it carries no credentials (request bodies never need them).
    anonymous = config.model_copy(update={"provider_settings": ProviderSettings()})
    bare = dataclasses.replace(provider, settings=ProviderSettings())
    return _Template(None, None, null_hash, None, bare, anonymous, max_bytes)


def _encode_prompts(
    prompts: list[str | None], template: _Template
) -> tuple[list[str], list[str | None], list[str | None]]:
    """Hashes, lines and invalid-input messages of one batch's prompts (the per-row Python part)."""
    hashes: list[str] = []
    lines: list[str | None] = []
    errors: list[str | None] = []
    for prompt in prompts:
        if prompt is None:
            hashes.append(template.null_hash)
            lines.append(None)
            errors.append("prompt is null")
        elif not prompt.strip():
            hashes.append(template.encode(prompt)[0])
            lines.append(None)
            errors.append("prompt is empty or only whitespace")
        else:
            custom_id, line = template.encode(prompt)
            hashes.append(custom_id)
            lines.append(line)
            errors.append(None)
    return hashes, lines, errors


def _encode_batch(batch: pa.RecordBatch, prompt_col: str, template: _Template) -> pa.RecordBatch:
    import pyarrow as pa
    import pyarrow.compute as pc

    hashes, lines, errors = _encode_prompts(batch.column(prompt_col).to_pylist(), template)
    line_arr = pa.array(lines, pa.string())
    # Byte sizes in one vectorised pass over the UTF-8 buffer; +1 for the newline ending each line.
    nbytes = pc.add(pc.binary_length(line_arr), pa.scalar(1, pa.int64())).cast(pa.int64())
    too_large = pc.fill_null(pc.greater(nbytes, template.max_bytes), False)
    invalid = pc.is_null(line_arr)
    limit = f" bytes, over the batch limit of {template.max_bytes} bytes (limits.max_bytes)"
    size_msg = pc.binary_join_element_wise("request line is ", nbytes.cast(pa.string()), limit, "")
    null = pa.scalar(None, pa.string())

    def failure(if_invalid: Any, if_too_large: Any) -> pa.Array:
        return pc.if_else(invalid, if_invalid, pc.if_else(too_large, if_too_large, null)).cast(
            pa.string()
        )

    extra = {
        HASH: pa.array(hashes, pa.string()),
        LINE: pc.if_else(too_large, null, line_arr),
        NBYTES: nbytes,
        ERR_CLASS: failure(
            pa.scalar(INVALID_INPUT, pa.string()), pa.scalar(TOO_LARGE, pa.string())
        ),
        ERR_MSG: failure(pa.array(errors, pa.string()), size_msg),
    }
    return pa.RecordBatch.from_arrays(
        [*batch.columns, *extra.values()], names=[*batch.schema.names, *extra.keys()]
    )


def _output_schema(df: DataFrame) -> StructType:
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    added = [(HASH, StringType(), False), (LINE, StringType(), True), (NBYTES, LongType(), True)]
    added += [(ERR_CLASS, StringType(), True), (ERR_MSG, StringType(), True)]
    return StructType([*df.schema.fields, *(StructField(*field) for field in added)])


def encode_requests(
    df: DataFrame, prompt_col: str, config: BatchConfig, provider: Provider
) -> DataFrame:
    """Add each row's request hash and chunk-file line, on executors, one Arrow batch at a time.

    The output holds every input column unchanged plus ``HASH``, ``LINE``, ``NBYTES``, ``ERR_CLASS``
    and ``ERR_MSG`` (see :mod:`spark_llm_batch._columns`). Every row gets a hash. A null, empty or
    whitespace-only prompt gets ``LINE`` null and ``ERR_CLASS`` ``"invalid_input"``; a line whose
    size (newline included) exceeds ``config.limits.max_bytes`` (default: the provider's limit) gets
    ``LINE`` null, ``ERR_CLASS`` ``"too_large"`` and its would-be size in ``NBYTES``.

    Each line equals ``provider.request_line(hash, provider.request_body(config, prompt), config)``.
    Spark Connect safe: only ``mapInArrow``.

    Args:
        df: the input rows.
        prompt_col: the name of a string column holding the prompts.
        config: the call's configuration (model, system, params, response format, limits).
        provider: the provider that defines the wire format.

    Returns:
        A lazy DataFrame with the input schema plus the five columns above.

    Example:
        >>> encoded = encode_requests(df, "prompt", config, provider)  # doctest: +SKIP
        >>> encoded.filter(encoded["__llm_line"].isNotNull()).count()  # doctest: +SKIP
        998
    """
    _, max_bytes = provider.batch_limits(config)
    template = _build_template(provider, config, max_bytes)
    schema = _output_schema(df)

    def encode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield _encode_batch(batch, prompt_col, template)

    return df.mapInArrow(encode, schema)
