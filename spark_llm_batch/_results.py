"""Failure classes and the classification of provider result lines into :class:`ResultRecord`.

Everything here is pure (no I/O, no SDK): a provider streams the raw lines of a finished batch and
hands each one to its parser. One parser per provider wire format sits beside the others
(``parse_openai_line`` now; ``parse_anthropic_line`` next), all producing the same normalised
:class:`~spark_llm_batch.providers.base.ResultRecord` with a class from :data:`FAILURE_CLASSES`.

The failure table as implemented for OpenAI (see ``/work/shared/provider-apis.md``):

=====================  ==============================================================  =========
class                  OpenAI evidence                                                  retryable
=====================  ==============================================================  =========
invalid_request        error line, HTTP 400/404/413/422 (other 4xx), or                 no
                       ``invalid_request_error``
auth                   HTTP 401/403, ``authentication_error``/``permission_error``,     no (fatal)
                       ``insufficient_quota`` (a 429 that is really billing)
rate_limited           HTTP 429, ``rate_limit_exceeded``                                yes
server_error           HTTP 408/409/5xx, ``request_timeout``, ``server_error``,         yes
                       unknown non-HTTP error codes
expired                ``batch_expired``                                                yes
cancelled              ``batch_cancelled``                                              caller decides
refused                200 with ``finish_reason`` ``content_filter`` or a               per policy
                       ``message.refusal`` (status ``failed``, message = refusal text)
truncated              200, ``finish_reason`` ``length`` and no text at all             no
=====================  ==============================================================  =========

A 200 answer cut at ``max_tokens`` that has text is ``succeeded`` with ``finish_reason`` ``length``:
it is an answer and is recorded as one. ``invalid_input``, ``too_large`` (encoding), ``missing``
(collection) and ``batch_failed`` (a batch failed as a whole) are assigned by other stages.
"""

from __future__ import annotations

import json
from typing import Any

from spark_llm_batch.errors import redact
from spark_llm_batch.providers.base import ResultRecord, ResultRow

__all__ = [
    "FAILURE_CLASSES",
    "FATAL",
    "RETRYABLE",
    "classify_http_error",
    "openai_record",
    "openai_row",
    "parse_openai_line",
    "parse_openai_row",
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
        "batch_failed",
        "auth",
    }
)
"""Every ``error_class`` value a failed result can carry."""

RETRYABLE: frozenset[str] = frozenset(
    {"rate_limited", "server_error", "expired", "missing", "refused"}
)
"""Classes re-submitted while :class:`RetryPolicy` allows more attempts (``refused`` defaults to 1).

``cancelled`` is absent on purpose: it is retried only when the user did not cancel, which the
orchestrator knows and this module does not.
"""

FATAL: frozenset[str] = frozenset({"auth"})
"""Classes that make the whole job unsafe to continue (raise, do not record and move on)."""

# Long provider messages (a 400 quoting the whole request) would bloat every results row.
_MAX_MESSAGE = 2000

# Error ``type``/``code`` words, for lines whose HTTP status is missing or uninformative.
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
    # An unknown non-HTTP failure: retrying is bounded by the policy, and only successes are billed.
    return "server_error"


def parse_openai_line(line: str | bytes) -> ResultRecord:
    """Parse one line of an OpenAI batch output or error file.

    Raises:
        ValueError: the line is not a JSON object with a ``custom_id``.

    Example:
        >>> rec = parse_openai_line(
        ...     '{"id":"r1","custom_id":"c1","response":null,'
        ...     '"error":{"code":"batch_expired","message":"expired"}}'
        ... )
        >>> (rec.status, rec.error_class)
        ('failed', 'expired')
    """
    return ResultRecord(*parse_openai_row(line))


def parse_openai_row(line: str | bytes) -> ResultRow:
    """:func:`parse_openai_line` as a plain tuple of :class:`ResultRecord`'s fields, in order.

    What collection uses: a tuple costs a fraction of a frozen dataclass, which matters at a
    million lines per collection.

    Raises:
        ValueError: the line is not a JSON object with a ``custom_id``.

    Example:
        >>> parse_openai_row('{"custom_id":"c1","response":null,"error":{"code":"batch_expired"}}')
        ('c1', 'failed', None, None, 'expired', 'batch_expired', None, None, None)
    """
    obj = _object(line)
    if obj is None:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"result line is not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
        raise ValueError("result line has no custom_id")
    return openai_row(obj)


_DECODER = json.JSONDecoder()


def _object(line: str | bytes) -> Any:
    """``json.loads(line)`` for the usual line (UTF-8 bytes of an object, no BOM, no padding), else
    ``None``: the caller then runs ``json.loads``, which raises what it always raised.

    It skips what ``json.loads`` spends on bytes before the C scanner runs (encoding detection,
    two regex matches for surrounding blanks): a quarter of the decoding time of a result line.
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


def openai_record(obj: dict[str, Any]) -> ResultRecord:
    """Classify one decoded OpenAI result line (see the module's table)."""
    return ResultRecord(*openai_row(obj))


def openai_row(obj: dict[str, Any]) -> ResultRow:
    """:func:`openai_record` as a plain tuple (see :func:`parse_openai_row`)."""
    custom_id = obj["custom_id"]
    response = obj.get("response")
    if isinstance(response, dict) and response.get("status_code") == 200:
        raw_body = response.get("body")
        return _answer(custom_id, raw_body if isinstance(raw_body, dict) else {})
    raw_error = obj.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    if not isinstance(response, dict):
        # Non-HTTP failures (expired, cancelled, timeout) carry no response at all.
        code = _str(error.get("code"))
        return _failed(
            custom_id, classify_http_error(None, code=code), error.get("message") or code
        )
    status = response.get("status_code")
    raw_body = response.get("body")
    body: dict[str, Any] = raw_body if isinstance(raw_body, dict) else {}
    body_error = body.get("error")
    err: dict[str, Any] = body_error if isinstance(body_error, dict) else error
    error_class = classify_http_error(
        status if isinstance(status, int) else None,
        _str(err.get("type")),
        _str(err.get("code")),
    )
    message = err.get("message") or f"HTTP {status}"
    return _failed(custom_id, error_class, message, model=_str(body.get("model")))


def _answer(custom_id: str, body: dict[str, Any]) -> ResultRow:
    """A 200 response: an answer, a refusal, or an empty truncation."""
    text, refusal, finish_reason = _extract(body)
    input_tokens, output_tokens = _usage(body.get("usage"))
    model = body.get("model")
    model = model if isinstance(model, str) else None
    if refusal is not None or finish_reason == "content_filter":
        message = _message(refusal or "the provider's content filter stopped the answer")
        return (custom_id, "failed", text, finish_reason or "content_filter", "refused", message,
                input_tokens, output_tokens, model)  # fmt: skip
    if finish_reason == "length" and not text:
        message = "the answer hit the token limit before any text was produced: raise max_tokens"
        return (custom_id, "failed", text, finish_reason, "truncated", message,
                input_tokens, output_tokens, model)  # fmt: skip
    return (custom_id, "succeeded", text, finish_reason, None, None,
            input_tokens, output_tokens, model)  # fmt: skip


def _extract(body: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """``(text, refusal, finish_reason)`` of a chat, completions or responses body."""
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        finish = choice.get("finish_reason")
        finish = finish if isinstance(finish, str) else None
        message = choice.get("message")
        if isinstance(message, dict):  # /v1/chat/completions
            content, refusal = message.get("content"), message.get("refusal")
            return (
                content if isinstance(content, str) else None,
                refusal if isinstance(refusal, str) and refusal else None,
                finish,
            )
        return _str(choice.get("text")), None, finish  # /v1/completions
    output = body.get("output")
    if isinstance(output, list):  # /v1/responses
        return _responses_text(body, output)
    if "data" in body:  # /v1/embeddings and others: keep the whole answer as JSON text
        return json.dumps(body.get("data"), separators=(",", ":")), None, None
    return None, None, None


def _responses_text(
    body: dict[str, Any], output: list[Any]
) -> tuple[str | None, str | None, str | None]:
    texts: list[str] = []
    refusals: list[str] = []
    for item in output:
        for part in (item or {}).get("content") or []:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                refusals.append(part["refusal"])
    details = body.get("incomplete_details") or {}
    reason = _str(details.get("reason")) if isinstance(details, dict) else None
    finish = {"max_output_tokens": "length", "content_filter": "content_filter"}.get(
        reason or "", reason
    )
    if finish is None and body.get("status") == "completed":
        finish = "stop"
    return ("".join(texts) or None), ("\n".join(refusals) or None), finish


def _usage(usage: Any) -> tuple[int | None, int | None]:
    """Input and output tokens from chat (prompt/completion) or responses (input/output) usage."""
    if not isinstance(usage, dict):
        return None, None
    inp = usage.get("prompt_tokens", usage.get("input_tokens"))
    out = usage.get("completion_tokens", usage.get("output_tokens"))
    return (inp if isinstance(inp, int) else None), (out if isinstance(out, int) else None)


def _failed(
    custom_id: str, error_class: str, message: Any, *, model: str | None = None
) -> ResultRow:
    return (custom_id, "failed", None, None, error_class, _message(message), None, None, model)


def _message(message: Any) -> str:
    text = message if isinstance(message, str) else json.dumps(message, default=str)
    # Redact before cutting, so a key split at the cut cannot slip past the patterns.
    return redact(text)[:_MAX_MESSAGE]


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
