"""Failure classes, and the helpers every provider's result parser shares.

Everything here is pure (no I/O, no SDK). A provider streams the raw lines of a finished batch and
hands each one to its own parser, which sits beside the provider
(``spark_llm_batch.providers._openai_results``, ``spark_llm_batch.providers._anthropic_results``,
each listing its provider's evidence for every class). Parsers decode lines with
:func:`decode_line` and build rows with :func:`answer_row` and :func:`failed_row`, so every
provider's answers are classified alike, into a
:data:`~spark_llm_batch.providers.base.ResultRow` with a class from :data:`FAILURE_CLASSES`:

===============  ===============================================================  ==============
class            what happened                                                     retryable
===============  ===============================================================  ==============
invalid_request  the provider rejected the request as it is                        no
auth             the key, its permissions or the account's billing were refused    no (fatal)
rate_limited     a rate limit, or the provider was overloaded                      yes
server_error     a provider-side failure or timeout, or an error word we do not    yes
                 know
expired          the batch expired before the request ran                          yes
cancelled        the batch was cancelled before the request ran                    caller decides
refused          an answer that refuses (content filter, refusal)                  per policy
truncated        an answer cut at the token limit before any text was produced     no
===============  ===============================================================  ==============

An answer cut at the token limit that has text is ``succeeded`` with ``finish_reason`` ``length``:
it is an answer and is recorded as one. ``invalid_input``, ``too_large`` (encoding), ``missing``
and ``invalid_output`` (collection: a structured answer that does not match ``response_format``;
retried per policy) and ``batch_failed`` (a batch failed as a whole) are assigned by other stages.
"""

from __future__ import annotations

import json
from typing import Any

from spark_llm_batch.errors import redact
from spark_llm_batch.providers.base import ResultRow

__all__ = [
    "FAILURE_CLASSES",
    "FATAL",
    "RETRYABLE",
    "answer_row",
    "classify_http_error",
    "clip_message",
    "decode_line",
    "failed_row",
    "json_object",
    "str_or_none",
]

FAILURE_CLASSES: frozenset[str] = frozenset(
    {
        "invalid_input",
        "too_large",
        "invalid_request",
        "rate_limited",
        "server_error",
        "expired",
        "cancelled",
        "refused",
        "truncated",
        "missing",
        "invalid_output",
        "batch_failed",
        "auth",
    }
)
"""Every ``error_class`` value a failed result can carry."""

RETRYABLE: frozenset[str] = frozenset(
    {"rate_limited", "server_error", "expired", "missing", "refused", "invalid_output"}
)
"""Classes re-submitted while :class:`RetryPolicy` allows more attempts (``refused`` and
``invalid_output`` default to 1: no retry).

``cancelled`` is absent on purpose: it is retried only when the user did not cancel, which the
orchestrator knows and this module does not.
"""

FATAL: frozenset[str] = frozenset({"auth"})
"""Classes that make the whole job unsafe to continue (raise, do not record and move on)."""

# Long provider messages (a 400 quoting the whole request) would bloat every results row.
_MAX_MESSAGE = 2000
_TRUNCATED = "the answer hit the token limit before any text was produced: raise max_tokens"

# Error ``type``/``code`` words of every provider, for lines whose HTTP status is missing or
# uninformative.
_WORD_CLASSES = {
    "invalid_request_error": "invalid_request",
    "authentication_error": "auth",
    "permission_error": "auth",
    "billing_error": "auth",
    "insufficient_quota": "auth",
    "rate_limit_exceeded": "rate_limited",
    "rate_limit_error": "rate_limited",
    "server_error": "server_error",
    "api_error": "server_error",
    "request_timeout": "server_error",
    "batch_expired": "expired",
    "batch_cancelled": "cancelled",
    # Anthropic's overload, timeout, unknown-resource and size errors.
    "overloaded_error": "rate_limited",
    "timeout_error": "server_error",
    "not_found_error": "invalid_request",
    "request_too_large": "invalid_request",
}


def classify_http_error(
    status: int | None, error_type: str | None = None, code: str | None = None
) -> str:
    """Map an HTTP status plus the error body's ``type`` and ``code`` to a failure class.

    The body's words win where they are more specific than the status (a 429
    ``insufficient_quota`` is billing, not a rate limit).

    Example:
        >>> classify_http_error(429)
        'rate_limited'
        >>> classify_http_error(429, "insufficient_quota", "insufficient_quota")
        'auth'
        >>> classify_http_error(None, code="batch_expired")
        'expired'
    """
    words = [w for w in (code, error_type) if w]
    if "insufficient_quota" in words:
        return "auth"
    if status in (401, 403):
        return "auth"
    if status == 429:
        return "rate_limited"
    if status is not None and (status >= 500 or status in (408, 409)):
        return "server_error"
    if status is not None and 400 <= status < 500:
        return "invalid_request"
    for word in words:
        if word in _WORD_CLASSES:
            return _WORD_CLASSES[word]
    # An unknown non-HTTP failure: the policy bounds its retries; a failed request is not billed.
    return "server_error"


def decode_line(line: str | bytes) -> dict[str, Any]:
    """One result line as a JSON object that carries a string ``custom_id``.

    Raises:
        ValueError: the line is not JSON (or not UTF-8), not an object, or has no ``custom_id``.

    Example:
        >>> decode_line(b'{"custom_id":"c1","result":{}}')
        {'custom_id': 'c1', 'result': {}}
    """
    obj = json_object(line)
    if obj is None:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"result line is not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
        raise ValueError("result line has no custom_id")
    return obj


_DECODER = json.JSONDecoder()


def json_object(line: str | bytes) -> Any:
    """``json.loads(line)`` for the usual line (UTF-8 bytes of an object, no BOM, no padding), else
    ``None``: the caller then runs ``json.loads``, which raises what it always raised.

    It skips what ``json.loads`` spends on bytes before the C scanner runs (encoding detection,
    two regex matches for surrounding blanks): a quarter of the decoding time of a result line.

    Example:
        >>> json_object(b'{"a":1}'), json_object(b' {"a":1}'), json_object('{"a":1}')
        ({'a': 1}, None, None)
    """
    # json.loads decodes bytes starting with "{" and a non-zero byte as UTF-8 (detect_encoding).
    if not isinstance(line, bytes) or line[:1] != b"{" or line[1:2] == b"\x00":
        return None
    try:
        text = line.decode("utf-8", "surrogatepass")
        obj, end = _DECODER.raw_decode(text)
    except ValueError:
        return None
    return obj if end == len(text) else None


def answer_row(
    custom_id: str,
    text: str | None,
    finish_reason: str | None,
    *,
    tokens: tuple[int | None, int | None],
    model: str | None,
    refusal: str | None = None,
) -> ResultRow:
    """The row of an answer the provider produced (and billed).

    ``refused`` when the parser found a ``refusal`` (the message to record; the text is kept too),
    else ``truncated`` when it was cut at the token limit (``finish_reason`` ``length``) before any
    text, else ``succeeded``. ``tokens`` is the usage, input then output.

    Example:
        >>> answer_row("c1", None, "length", tokens=(3, 9), model="m")[:5]
        ('c1', 'failed', None, 'length', 'truncated')
        >>> answer_row("c1", "Hi", "length", tokens=(3, 9), model="m")[:5]
        ('c1', 'succeeded', 'Hi', 'length', None)
    """
    inp, out = tokens
    if refusal is not None:
        return (custom_id, "failed", text, finish_reason, "refused", clip_message(refusal),
                inp, out, model)  # fmt: skip
    if finish_reason == "length" and not text:
        return (custom_id, "failed", text, finish_reason, "truncated", _TRUNCATED, inp, out, model)
    return (custom_id, "succeeded", text, finish_reason, None, None, inp, out, model)


def failed_row(
    custom_id: str, error_class: str, message: Any, *, model: str | None = None
) -> ResultRow:
    """The row of a request that got no answer: ``error_class`` and the clipped ``message``.

    Example:
        >>> failed_row("c1", "expired", "the batch expired")
        ('c1', 'failed', None, None, 'expired', 'the batch expired', None, None, None)
    """
    return (custom_id, "failed", None, None, error_class, clip_message(message), None, None, model)


def clip_message(message: Any) -> str:
    """A provider's failure message as a results row stores it: a non-string as JSON text, with
    credentials redacted, at most 2000 characters (a 400 may quote the whole request).

    Example:
        >>> clip_message({"type": "api_error"})
        '{"type": "api_error"}'
        >>> len(clip_message("x" * 5000))
        2000
    """
    text = message if isinstance(message, str) else json.dumps(message, default=str)
    # Redact before cutting, so a key split at the cut cannot slip past the patterns.
    return redact(text)[:_MAX_MESSAGE]


def str_or_none(value: Any) -> str | None:
    """``value`` if it is a string, else ``None`` (JSON fields whose type is not guaranteed).

    Example:
        >>> str_or_none("stop"), str_or_none(3)
        ('stop', None)
    """
    return value if isinstance(value, str) else None
