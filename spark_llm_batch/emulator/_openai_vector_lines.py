"""Answer lines for plain chat requests, built column-wise in Arrow (for :mod:`._openai_vector`).

:func:`write_block` writes one block of answers, the bytes :class:`~._openai_fastchat.FastChat`
writes line by line (but for the random ids): the template :func:`~._openai_fastchat.chat_line`
is rendered once with marker values and cut into literal pieces, which Arrow joins with per-row
columns (ids, answer keys, echoes, token counts) into one buffer, written at once. Per-row Python
work is the sha256 digest, plus the whitespace collapse and JSON escaping of echoes (and
custom_ids) that are not plain printable ASCII.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spark_llm_batch.emulator._answers import _CREATED
from spark_llm_batch.emulator._openai_fastchat import chat_line, encode_str
from spark_llm_batch.emulator._prompt import _ECHO_CHARS, answer_text

__all__ = ["blob", "value_offsets", "write_block"]

_ESCAPED = r'[^\x20-\x7e]|["\\]'  # a character encode_str escapes (ensure_ascii)
_ODD_HEAD = _ESCAPED + "|  "  # ... or whitespace the echo collapses
_DIGEST_HEX = 12  # the answer key: the first 12 hex characters of the sha256 (_prompt.digest)
_ANSWER_BASE = len(answer_text("0" * _DIGEST_HEX, [("user", "")]))  # answer length minus echo
# The code points of a prompt that decide its echo: one past the cut tells if a word goes on.
_HEAD = _ECHO_CHARS + 1


def write_block(
    fh: BinaryIO, custom_id: pa.Array, system: pa.Array, text: pa.Array, model: str, start: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write the answers of one block of requests to ``fh``.

    Args:
        fh: the output file, positioned at ``start``.
        custom_id: the requests' custom_ids.
        system: their system turns (null where there is none).
        text: their user turns.
        model: the batch's model.
        start: the file's size before this block.

    Returns:
        Each line's end offset in the file, and each request's input and output tokens.
    """
    n = len(text)
    keys = _digests(_canonical(model, system, text))
    ascii_text = _ascii(text)
    echo, echo_len = _echoes(text, ascii=ascii_text)
    text_len = _code_points(text, ascii=ascii_text)
    in_tok = 7 + (text_len + 3) // 4  # 3 + (4 + count_tokens) per turn (_prompt.prompt_tokens)
    if system.null_count < n:
        has_system = pc.is_valid(system).to_numpy(zero_copy_only=False)
        system = pc.fill_null(system, "")
        system_len = _code_points(system, ascii=_ascii(system))
        in_tok += has_system * (4 + (system_len + 3) // 4)
    out_tok = np.maximum((_ANSWER_BASE + echo_len + 3) // 4, 1)
    ids = _uuid_hex(2 * n)
    slots = {
        "line_id": ids[:n],
        "request_id": ids[n:],
        "custom_id": _escaped(custom_id),
        "key": keys,
        "model": encode_str(model),
        "echo": echo,
        "in": _decimal(in_tok),
        "out": _decimal(out_tok),
        "total": _decimal(in_tok + out_tok),
    }
    lines = pc.binary_join_element_wise(*_fill(_template(), slots), "")
    offsets = value_offsets(lines).astype(np.int64)
    fh.write(memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]])
    return start + offsets[1:] - offsets[0], in_tok, out_tok


def _template() -> list[str]:
    """:func:`chat_line` cut at its slots: literal text at even indexes, slot names at odd."""
    answer = encode_str(answer_text("@key@", [("user", "@echo@")]))
    line = chat_line(
        "@line_id@", '"@custom_id@"', "@request_id@", "@key@", _CREATED, "@model@", answer,
        "@in@", "@out@", "@total@",
    )  # fmt: skip
    return re.split(r"@(\w+)@", line)


def _fill(template: list[str], slots: dict[str, pa.Array | str]) -> list[pa.Array | str]:
    """The template's pieces with the slots filled, neighbouring strings merged."""
    pieces: list[pa.Array | str] = []
    for i, piece in enumerate(template):
        value = slots[piece] if i % 2 else piece
        if isinstance(value, str) and pieces and isinstance(pieces[-1], str):
            pieces[-1] += value
        elif not isinstance(value, str) or value:
            pieces.append(value)
    return pieces


def _canonical(model: str, system: pa.Array, text: pa.Array) -> pa.Array:
    """What the answer key hashes (``_prompt.digest``): model, then ``role:text`` turns."""
    if system.null_count == len(system):
        return pc.binary_join_element_wise(f"{model}\nuser:", text, "")
    turn = pc.binary_join_element_wise("\nsystem:", system, "", null_handling="emit_null")
    return pc.binary_join_element_wise(model, pc.fill_null(turn, ""), "\nuser:", text, "")


def _digests(canonical: pa.Array) -> pa.Array:
    """The first :data:`_DIGEST_HEX` hex characters of each value's sha256."""
    sha256 = hashlib.sha256  # over bytes objects: cheaper than memoryview slices of the buffer
    digests = b"".join(
        [sha256(value).digest() for value in canonical.view(pa.binary()).to_pylist()]
    )
    heads = np.frombuffer(digests, np.uint8).reshape(-1, 32)[:, : _DIGEST_HEX // 2]
    return _fixed_width(binascii.hexlify(heads.tobytes()), _DIGEST_HEX)


def _echoes(text: pa.Array, *, ascii: bool) -> tuple[pa.Array, np.ndarray]:
    """Each answer's echo, JSON-escaped without quotes, and its length in code points.

    The echo is the text's whitespace runs collapsed to one space, stripped, cut to
    ``_ECHO_CHARS``. When the first ``_HEAD`` code points are printable ASCII without a quote,
    backslash, leading or double space, it is just the first ``_ECHO_CHARS`` of them (unless the
    text is that short and ends in a space); other rows are done in Python.
    """
    head = _prefixes(text, _HEAD, ascii=ascii)
    size = pc.binary_length(head)
    ends_in_space = pc.and_(pc.less(size, _HEAD), pc.ends_with(head, " "))
    odd = pc.or_(pc.starts_with(head, " "), ends_in_space)
    if not _plain(head, double_spaces=False):
        odd = pc.or_(odd, pc.match_substring_regex(head, _ODD_HEAD))
    echo = _prefixes(head, _ECHO_CHARS, ascii=ascii)
    length = np.minimum(size.to_numpy(), _ECHO_CHARS)
    rows = np.flatnonzero(odd.to_numpy(zero_copy_only=False))
    if rows.size:
        echoes = [_echo(value) for value in text.take(pa.array(rows)).to_pylist()]
        length[rows] = [len(value) for value in echoes]
        escaped = pa.array([encode_str(value)[1:-1] for value in echoes], pa.string())
        echo = pc.replace_with_mask(echo, odd, escaped)
    return echo, length


def _echo(text: str) -> str:
    """The echo of ``text``; collapsing a prefix gives a prefix of the collapsed text."""
    head = " ".join(text[: 2 * _ECHO_CHARS].split())
    if len(head) < _ECHO_CHARS and len(text) > 2 * _ECHO_CHARS:
        head = " ".join(text.split())
    return head[:_ECHO_CHARS]


def _escaped(values: pa.Array) -> pa.Array:
    """``values`` JSON-escaped, without quotes."""
    if _plain(values):
        return values
    odd = pc.match_substring_regex(values, _ESCAPED)
    fixed = [encode_str(value)[1:-1] for value in values.filter(odd).to_pylist()]
    return pc.replace_with_mask(values, odd, pa.array(fixed, pa.string()))


def _plain(strings: pa.Array, *, double_spaces: bool = True) -> bool:
    """Whether every value is printable ASCII without quote or backslash (nothing to escape).

    With ``double_spaces=False``, no value may hold two spaces in a row either (the values are
    checked laid end to end, so a pair across two also counts). Cheaper than a regex per value.
    """
    if not pc.all(pc.ascii_is_printable(strings)).as_py():
        return False
    data = _values(strings)
    if b'"' in data or b"\\" in data:
        return False
    space = np.frombuffer(data, np.uint8) == 0x20
    return double_spaces or not np.any(space[:-1] & space[1:])


def _values(strings: pa.Array) -> bytes:
    """The values of a string array laid end to end."""
    offsets, data = value_offsets(strings), strings.buffers()[2]
    return b"" if data is None else bytes(memoryview(data)[offsets[0] : offsets[-1]])


def _ascii(strings: pa.Array) -> bool:
    """Whether every value is ASCII, so that code points are bytes (cheaper kernels)."""
    offsets, data = value_offsets(strings), strings.buffers()[2]
    size = int(offsets[-1] - offsets[0])
    if data is None or not size:
        return True
    return bool(np.frombuffer(data, np.uint8, size, int(offsets[0])).max() < 0x80)


def _code_points(strings: pa.Array, *, ascii: bool) -> np.ndarray:
    """Each value's length in code points (``len`` of the str)."""
    return np.diff(value_offsets(strings)) if ascii else pc.utf8_length(strings).to_numpy()


def _prefixes(strings: pa.Array, length: int, *, ascii: bool) -> pa.Array:
    """The first ``length`` code points of each value."""
    if ascii:
        return pc.binary_slice(strings.view(pa.binary()), 0, length).view(pa.string())
    return pc.utf8_slice_codeunits(strings, 0, length)


def _uuid_hex(n: int) -> pa.Array:
    """``n`` random uuid4 hex strings (version and variant bits set as uuid.uuid4 does)."""
    # Ids need no cryptographic randomness: a generator seeded from the OS is 3x os.urandom.
    raw = np.random.default_rng().integers(0, 256, (n, 16), np.uint8)
    raw[:, 6] = raw[:, 6] & 0x0F | 0x40
    raw[:, 8] = raw[:, 8] & 0x3F | 0x80
    return _fixed_width(binascii.hexlify(raw.tobytes()), 32)


def _fixed_width(data: bytes, width: int) -> pa.Array:
    """``data`` cut into strings of ``width`` bytes each (no copy)."""
    n = len(data) // width
    offsets = pa.py_buffer(np.arange(0, n * width + 1, width, dtype=np.int32))
    return pa.Array.from_buffers(pa.string(), n, [None, offsets, pa.py_buffer(data)])


def blob(data: pa.Buffer, start: int, end: int) -> pa.Array:
    """Bytes ``start:end`` of ``data`` as a one-string Arrow array, without a copy."""
    offsets = pa.py_buffer(np.array([start, end], np.int64))
    return pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, data])


def value_offsets(strings: pa.Array) -> np.ndarray:
    """Where each value of a string array starts in its data buffer, and where the last ends."""
    everything = np.frombuffer(strings.buffers()[1], np.int32)
    return everything[strings.offset : strings.offset + len(strings) + 1]


def _decimal(values: np.ndarray) -> pa.Array:
    """Integers as decimal strings, as JSON writes them."""
    return pc.cast(pa.array(values), pa.string())
