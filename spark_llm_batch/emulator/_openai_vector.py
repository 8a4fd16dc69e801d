"""Whole-file preparation of a plain chat batch, in Arrow: the common case, several times cheaper.

:func:`prepare_plain_chat` answers a batch file at once when every line is a request the per-line
path would answer with :class:`~._openai_fastchat.FastChat`, and writes the same bytes (but for
the random ids) and the same :class:`~._openai_batch.Plan`. Anything else returns ``None`` before a
byte is written, and the caller runs the general path over the whole file, whose validation and
error reports are therefore untouched. A file is taken here only when (the caller has checked the
endpoint, the fault rates and the size limit):

1. its bytes are valid UTF-8 (strict: no encoded surrogates, which the general path lets through);
2. every line starts with ``{`` and ends with ``}`` (then maybe spaces, tabs or ``\r``), blank
   lines at the end aside, and Arrow's JSON reader parses the file into one row per line. (Arrow
   reads objects across newlines and several on a line; within those bounds an object cannot run
   onto the next line, as ``}`` then ``{`` is a syntax error, so each line is exactly one object.)
   Where it matters the reader is at least as strict as ``json.loads``: it refuses duplicate keys,
   lone surrogates, raw control characters, trailing garbage, numbers out of double range and a
   type that changes between lines (tests pin each case). It also reads ``Inf`` and ``-NaN``,
   which ``json.loads`` refuses, so a file with any non-finite number is left to the line path;
3. the types are the plain shape: string ``custom_id``/``method``/``url``; a ``body`` struct with a
   string ``model``, ``messages`` a list of structs with string ``role`` and ``content``, and no
   shaping key (:data:`~._openai_fastchat.SHAPING_KEYS`, even one that is always null); nothing
   nested deeper than :data:`_MAX_DEPTH` (``json.loads`` recurses);
4. every row passes the general path's checks (non-empty unique custom_ids, at most
   ``max_requests``, method ``POST``, the endpoint's url, one non-empty model), its messages are
   ``[user]`` or ``[system, user]`` with non-null contents, and no string anywhere in a body holds
   a fault marker (checked on the parsed strings, so escaped spellings count).

The answers are written by :func:`._openai_vector_lines.write_block`, a reader block at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from spark_llm_batch.emulator._openai_batch import Plan
from spark_llm_batch.emulator._openai_fastchat import CHAT_ENDPOINT, SHAPING_KEYS
from spark_llm_batch.emulator._openai_vector_lines import blob, value_offsets, write_block

__all__ = ["prepare_plain_chat"]

_WHITESPACE = b" \t\r\n"  # JSON's
_BLOCK_BYTES = 4 << 20  # JSON reader block, and so output block (a longer line gets its own)
_MAX_DEPTH = 32  # json.loads recurses: the line path raises RecursionError ~1,000 levels down
_MARKER = r"\[\[emulator:"  # a regex: RE2 skips to its first byte, 10x match_substring
_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
# The fields the answer reads, typed up front so Arrow never infers them as timestamps.
_SCHEMA = pa.schema(
    [
        ("custom_id", pa.string()),
        ("method", pa.string()),
        ("url", pa.string()),
        ("body", pa.struct([("model", pa.string()), ("messages", pa.list_(_MESSAGE))])),
    ]
)

Turns = tuple[pa.Array, pa.Array, pa.Array]  # custom_id, system (null: none), user text


def prepare_plain_chat(
    src: Path, *, max_requests: int, ok_path: Path, err_path: Path
) -> Plan | None:
    """Answer ``src`` whole as the general path would, or return ``None`` (nothing written).

    Args:
        src: a chat batch input file within the size limit; no fault rates are configured.
        max_requests: the batch's request limit.
        ok_path: where the answers go.
        err_path: the error file (left empty: a plain request always succeeds).

    Example:
        >>> prepare_plain_chat(Path("in.jsonl"), max_requests=50_000,
        ...                    ok_path=Path("ok"), err_path=Path("err"))  # doctest: +SKIP
        Plan(errors=[], model='gpt-4o-mini', ...)
    """
    table = _parse(src.read_bytes())
    if table is None or table.num_rows > max_requests or not _plain_schema(table.schema):
        return None
    model = _model(table)
    batches = None if model is None else _turns(table)
    if model is None or batches is None:
        return None
    custom_ids = table.column("custom_id").to_pylist()
    if len(set(custom_ids)) != len(custom_ids):
        return None  # a duplicate
    del table  # the turns hold what the answers need
    plan = Plan(model=model, custom_ids=custom_ids)
    end = 0
    with ok_path.open("wb") as fh:
        for custom_id, system, text in batches:
            ends, in_tok, out_tok = write_block(fh, custom_id, system, text, model, end)
            end = int(ends[-1])
            plan.ends += ends.tolist()
            plan.input_tokens += in_tok.tolist()
            plan.output_tokens += out_tok.tolist()
    err_path.write_bytes(b"")
    plan.ok = [1] * len(plan.custom_ids)
    return plan


def _parse(raw: bytes) -> pa.Table | None:
    """The file as a table, one row per line, or ``None`` (conditions 1 and 2 of the module)."""
    data = pa.py_buffer(raw)
    end = len(raw)
    while end and raw[end - 1] in _WHITESPACE:  # trailing blank lines: skipped by both paths
        end -= 1
    if not end or raw[0] != ord("{") or raw[end - 1] != ord("}"):
        return None
    try:
        if not raw.isascii():  # ASCII is UTF-8, and much quicker to tell
            blob(data, 0, len(raw)).validate(full=True)
    except pa.ArrowInvalid:
        return None
    lines = blob(data, 0, end)
    newlines = pc.count_substring_regex(lines, r"\n")[0].as_py()
    if pc.count_substring_regex(lines, r"\}[ \t\r]*\n\{")[0].as_py() != newlines:
        return None  # a line that does not start with "{" or end with "}"
    read = pa_json.ReadOptions(use_threads=False, block_size=_BLOCK_BYTES)
    parse = pa_json.ParseOptions(explicit_schema=_SCHEMA, unexpected_field_behavior="infer")
    try:
        table = pa_json.read_json(pa.BufferReader(data), read_options=read, parse_options=parse)
    except pa.ArrowException:
        return None
    return table if table.num_rows == newlines + 1 else None


def _plain_schema(schema: pa.Schema) -> bool:
    """Condition 3 beyond the explicit types: no shaping key, nothing nested too deep."""
    body = schema.field("body").type
    if SHAPING_KEYS.intersection(body.field(i).name for i in range(body.num_fields)):
        return False
    return all(_depth(field.type) <= _MAX_DEPTH for field in schema)


def _depth(kind: pa.DataType) -> int:
    """How many structs and lists nest in ``kind``."""
    if pa.types.is_struct(kind):
        return 1 + max((_depth(kind.field(i).type) for i in range(kind.num_fields)), default=0)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return 1 + _depth(kind.value_type)
    return 0


def _model(table: pa.Table) -> str | None:
    """The batch's one model, when every row passes the general path's checks but uniqueness."""
    custom_id = table.column("custom_id")
    if custom_id.null_count or pc.min(pc.binary_length(custom_id)).as_py() == 0:
        return None
    for name, value in (("method", "POST"), ("url", CHAT_ENDPOINT)):
        if not _all_equal(table.column(name), value):
            return None
    models = pc.struct_field(table.column("body"), "model")
    if models.null_count or pc.count_distinct(models).as_py() != 1:
        return None
    return models[0].as_py() or None


def _all_equal(column: pa.ChunkedArray, value: str) -> bool:
    """Whether every value of ``column`` is ``value`` (a null is not)."""
    return column.null_count == 0 and bool(pc.all(pc.equal(column, value)).as_py())


def _turns(table: pa.Table) -> list[Turns] | None:
    """Each record batch's (custom_id, system, user text), or ``None`` if one is not plain."""
    out: list[Turns] = []
    for batch in table.to_batches():
        if not batch.num_rows:
            continue
        body = batch.column("body")
        if any(_marked(strings) for strings in _leaves(body, pa.types.is_string)):
            return None
        numbers = _leaves(batch.to_struct_array(), pa.types.is_floating)
        if not all(pc.all(pc.is_finite(values)).as_py() is not False for values in numbers):
            return None
        turns = _batch_turns(pc.struct_field(body, "messages"))
        if turns is None:
            return None
        out.append((batch.column("custom_id"), *turns))
    return out


def _batch_turns(messages: pa.ListArray) -> tuple[pa.Array, pa.Array] | None:
    """(system, user text) of each row when its messages are [user] or [system, user]."""
    n = len(messages)
    lengths = pc.list_value_length(messages).to_numpy(zero_copy_only=False)
    if messages.null_count or lengths.min() < 1 or lengths.max() > 2:
        return None
    offsets = messages.offsets.to_numpy()
    items = messages.values
    roles, contents = pc.struct_field(items, "role"), pc.struct_field(items, "content")
    if lengths.max() == 1:  # a turn per row: the items line up with the rows
        text, last_roles = contents.slice(offsets[0], n), roles.slice(offsets[0], n)
    else:
        last = pa.array(offsets[1:] - 1)
        text, last_roles = contents.take(last), roles.take(last)
    if text.null_count or not _all_equal(last_roles, "user"):
        return None
    system = pa.nulls(n, pa.string())
    two = lengths == 2
    if two.any():
        first = pa.array(offsets[:-1][two])
        leading = contents.take(first)
        if leading.null_count or not _all_equal(roles.take(first), "system"):
            return None
        system = leading if two.all() else pc.replace_with_mask(system, pa.array(two), leading)
    return system, text


def _leaves(value: pa.Array, wanted: Callable[[pa.DataType], bool]) -> Iterator[pa.Array]:
    """Every leaf of a ``wanted`` type under ``value`` (under null slots too: more, never less)."""
    kind = value.type
    if wanted(kind):
        yield value
    elif pa.types.is_struct(kind):
        for i in range(kind.num_fields):
            yield from _leaves(value.field(i), wanted)
    elif pa.types.is_list(kind):
        yield from _leaves(value.flatten(), wanted)


def _marked(strings: pa.Array) -> bool:
    """Whether a value of ``strings`` may hold a fault marker (true if one does)."""
    # One search over the values laid end to end (RE2 skips to each "["): a marker across two
    # values is a false alarm, which only sends the file to the line path.
    if not len(strings) or strings.buffers()[2] is None:
        return False
    offsets = value_offsets(strings)
    everything = blob(strings.buffers()[2], int(offsets[0]), int(offsets[-1]))
    return bool(pc.match_substring_regex(everything, _MARKER)[0].as_py())
