"""Finding ``llm_batch(TABLE(...), name => literal, ...)`` calls in a SQL statement.

Pure text work, no Spark: :func:`find_calls` cuts the statement into tokens (string literals with
their escapes, backtick identifiers, comments and words), finds each call of the table function
outside strings and comments, and reads its arguments. It locates calls and their arguments;
it parses no other SQL, and what it does not understand is Spark's to report.

Example:
    >>> [call] = find_calls("SELECT * FROM llm_batch(TABLE(t), prompt => 'p', model => 'gpt-4o')")
    >>> call.source, call.is_table, call.args
    ('t', True, {'prompt': 'p', 'model': 'gpt-4o'})
    >>> find_calls("SELECT 'llm_batch(TABLE(t))' -- llm_batch(TABLE(t))")
    []
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from spark_llm_batch.errors import ConfigError

__all__ = ["FUNCTION", "Call", "Token", "find_calls", "tokens"]

FUNCTION = "llm_batch"
"""The table function's name (case-insensitive in SQL, as Spark's names are)."""

_WORD = re.compile(r"[A-Za-z0-9_]+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?(BD|[LSYDF])?", re.IGNORECASE)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "0": "\0", "Z": "\x1a"}
_EXAMPLE = (
    "llm_batch(TABLE(reviews), prompt => 'review', model => 'gpt-4o-mini', store => '/lake/s')"
)


@dataclass(frozen=True)
class Token:
    """One token: ``kind`` is ``word``, ``string`` (``text`` is its decoded value), ``quoted`` (a
    backtick identifier, as written) or ``punct``; ``start``/``end`` are its span in the text."""

    kind: str
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Call:
    """One call of the table function.

    Attributes:
        start / end: the call's span in the statement, name to closing parenthesis.
        source: the input: a table name (``is_table``) or a query's text.
        is_table: whether ``source`` is a table name, else a query.
        args: the named arguments and their values (``str``, ``int``, ``float``, ``bool``, ``None``).
    """

    start: int
    end: int
    source: str
    is_table: bool
    args: dict[str, Any]


class _Unreadable(Exception):
    """The statement does not tokenize (an unterminated string or comment): Spark reports it."""


def find_calls(sql: str) -> list[Call]:
    """The calls of the table function in ``sql``, outside string literals and comments, in order.

    Calls nested inside another call's ``TABLE(...)`` belong to that call's query text. A
    statement that does not tokenize is left to Spark (no calls).

    Raises:
        ConfigError: a call's arguments are not ``TABLE(...)`` then named SQL literals.
    """
    if FUNCTION not in sql.lower():
        return []
    try:
        toks = tokens(sql)
    except _Unreadable:
        return []
    calls, i = [], 0
    while i < len(toks):
        tok = toks[i]
        is_call = tok.kind == "word" and tok.text.lower() == FUNCTION
        if is_call and i + 1 < len(toks) and toks[i + 1].text == "(":
            close = _closing(toks, i + 1)
            calls.append(_call(sql, toks, i, close))
            i = close + 1
        else:
            i += 1
    return calls


def tokens(sql: str) -> list[Token]:
    """``sql`` cut into tokens, whitespace and comments dropped.

    Strings are ``'...'`` or ``"..."`` with backslash escapes (Spark's default; ``r'...'`` is
    raw), identifiers in backticks double a backtick to hold one, ``--`` comments end at the
    line's end and ``/* */`` comments nest, as in Spark.

    Example:
        >>> [t.text for t in tokens("a => 'it\\\\'s' /* x /* y */ */ `b``c`")]
        ['a', '=>', "it's", '`b``c`']
    """
    out: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            i = _comment_end(sql, i)
        elif c in "'\"":
            prev = out[-1] if out else None
            raw = prev is not None and prev.text in ("r", "R") and prev.end == i
            start = out.pop().start if raw else i
            value, i = _string(sql, i, raw)
            out.append(Token("string", value, start, i))
        elif c == "`":
            end = i + 1
            while True:
                end = sql.find("`", end)
                if end < 0:
                    raise _Unreadable
                if not sql.startswith("``", end):
                    break
                end += 2
            out.append(Token("quoted", sql[i : end + 1], i, end + 1))
            i = end + 1
        elif match := _WORD.match(sql, i):
            out.append(Token("word", match.group(), i, match.end()))
            i = match.end()
        else:
            width = 2 if sql.startswith("=>", i) else 1
            out.append(Token("punct", sql[i : i + width], i, i + width))
            i += width
    return out


def _comment_end(sql: str, i: int) -> int:
    depth = 0
    while i < len(sql):
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    raise _Unreadable


def _string(sql: str, i: int, raw: bool) -> tuple[str, int]:
    """The decoded string literal opening at ``i`` and the index after it."""
    quote, i = sql[i], i + 1
    chars: list[str] = []
    while i < len(sql):
        c = sql[i]
        if c == quote:
            return "".join(chars), i + 1
        if c == "\\" and i + 1 < len(sql):
            nxt = sql[i + 1]
            if raw:
                chars.append(c + nxt)  # a raw string keeps the backslash, and the quote too
            elif nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", sql[i + 2 : i + 6]):
                chars.append(chr(int(sql[i + 2 : i + 6], 16)))
                i += 4
            elif nxt in "%_":
                chars.append(c + nxt)  # Spark keeps these escapes for LIKE patterns
            else:
                chars.append(_ESCAPES.get(nxt, nxt))
            i += 2
        else:
            chars.append(c)
            i += 1
    raise _Unreadable


def _closing(toks: list[Token], open_at: int) -> int:
    """The index of the ``)`` that closes the ``(`` at ``open_at``."""
    depth = 0
    for j in range(open_at, len(toks)):
        if toks[j].text == "(" and toks[j].kind == "punct":
            depth += 1
        elif toks[j].text == ")" and toks[j].kind == "punct":
            depth -= 1
            if depth == 0:
                return j
    raise ConfigError(f"{FUNCTION}( is never closed: a ')' is missing")


def _split(toks: list[Token]) -> list[list[Token]]:
    """``toks`` split at the commas outside parentheses."""
    parts: list[list[Token]] = [[]]
    depth = 0
    for tok in toks:
        if tok.kind == "punct" and tok.text in "()":
            depth += 1 if tok.text == "(" else -1
        if depth == 0 and tok.kind == "punct" and tok.text == ",":
            parts.append([])
        else:
            parts[-1].append(tok)
    return parts


def _call(sql: str, toks: list[Token], name_at: int, close: int) -> Call:
    first, *rest = _split(toks[name_at + 2 : close])
    source, is_table = _table_arg(sql, first)
    args: dict[str, Any] = {}
    for part in rest:
        if len(part) < 3 or part[0].kind != "word" or part[1].text != "=>":
            text = sql[part[0].start : part[-1].end] if part else "(empty)"
            raise ConfigError(
                f"{FUNCTION}: after TABLE(...) every argument is named, as name => value; "
                f"got {text!r} (e.g. {_EXAMPLE})"
            )
        name = part[0].text.lower()
        if name in args:
            raise ConfigError(f"{FUNCTION}: argument {name!r} is given twice")
        args[name] = _literal(sql, name, part[2:])
    return Call(toks[name_at].start, toks[close].end, source, is_table, args)


def _table_arg(sql: str, part: list[Token]) -> tuple[str, bool]:
    """The input of ``TABLE(<name>)`` or ``TABLE(<query>)``: its text, and whether it is a name."""
    words = [t.text.lower() for t in part[:2]]
    if len(part) < 4 or words != ["table", "("] or part[-1].text != ")":
        raise ConfigError(
            f"{FUNCTION}: the first argument must be TABLE(<table name>) or TABLE(<query>), "
            f"e.g. {_EXAMPLE}"
        )
    inner = part[2:-1]
    text = sql[inner[0].start : inner[-1].end]
    # A name is identifiers joined by dots: a.b.c, `a`.`b c`.
    kinds = ["name" if t.kind in ("word", "quoted") else t.text for t in inner]
    is_name = kinds[::2] == ["name"] * len(kinds[::2]) and set(kinds[1::2]) <= {"."}
    is_name = is_name and len(kinds) % 2 == 1 and inner[0].text.lower() not in _QUERY_WORDS
    return text, is_name


_QUERY_WORDS = frozenset({"select", "with", "values", "from", "table"})


def _literal(sql: str, name: str, toks: list[Token]) -> Any:
    """The value of a SQL literal: strings (adjacent ones joined, as Spark does), numbers,
    ``true``/``false``, ``null``."""
    if all(t.kind == "string" for t in toks):
        return "".join(t.text for t in toks)
    text = sql[toks[0].start : toks[-1].end]
    word = text.lower()
    if word in ("true", "false"):
        return word == "true"
    if word == "null":
        return None
    if _NUMBER.fullmatch(text):
        number = text.rstrip("LSYDBFlsydbf")
        return float(number) if any(c in number for c in ".eE") else int(number)
    raise ConfigError(
        f"{FUNCTION}: argument {name!r} must be a SQL literal (a string, a number, true, false "
        f"or null), got {text!r}"
    )
