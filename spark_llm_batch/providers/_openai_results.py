"""OpenAI batch result lines (output and error files) as :data:`ResultRow` values.

Pure (no I/O, no SDK): it runs where results are collected, on executors too. The classes and
the helpers that build rows are shared with every provider (``spark_llm_batch._results``); this is
OpenAI's evidence for each (see ``/work/shared/provider-apis.md``):

=====================  ==============================================================
class                  OpenAI evidence
=====================  ==============================================================
invalid_request        error line, HTTP 400/404/413/422 (other 4xx), or
                       ``invalid_request_error``
auth                   HTTP 401/403, ``authentication_error``/``permission_error``,
                       ``insufficient_quota`` (a 429 that is really billing)
rate_limited           HTTP 429, ``rate_limit_exceeded``
server_error           HTTP 408/409/5xx, ``request_timeout``, ``server_error``,
                       unknown non-HTTP error codes
expired                ``batch_expired``
cancelled              ``batch_cancelled``
refused                200 with ``finish_reason`` ``content_filter`` or a
                       ``message.refusal`` (status ``failed``, message = refusal text)
truncated              200, ``finish_reason`` ``length`` and no text at all
=====================  ==============================================================
"""

from __future__ import annotations

import json
from typing import Any

from spark_llm_batch._results import (
    answer_row,
    classify_http_error,
    decode_line,
    failed_row,
    str_or_none,
)
from spark_llm_batch.providers.base import ResultRecord, ResultRow

__all__ = ["openai_record", "openai_row", "parse_openai_line", "parse_openai_row"]


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
    return openai_row(decode_line(line))


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
        code = str_or_none(error.get("code"))
        return failed_row(
            custom_id, classify_http_error(None, code=code), error.get("message") or code
        )
    status = response.get("status_code")
    raw_body = response.get("body")
    body: dict[str, Any] = raw_body if isinstance(raw_body, dict) else {}
    body_error = body.get("error")
    err: dict[str, Any] = body_error if isinstance(body_error, dict) else error
    error_class = classify_http_error(
        status if isinstance(status, int) else None,
        str_or_none(err.get("type")),
        str_or_none(err.get("code")),
    )
    message = err.get("message") or f"HTTP {status}"
    return failed_row(custom_id, error_class, message, model=str_or_none(body.get("model")))


def _answer(custom_id: str, body: dict[str, Any]) -> ResultRow:
    """A 200 response: an answer, a refusal, or an empty truncation."""
    text, refusal, finish_reason = _extract(body)
    if refusal is None and finish_reason == "content_filter":
        refusal = "the provider's content filter stopped the answer"
    if refusal is not None:
        finish_reason = finish_reason or "content_filter"
    tokens = _usage(body.get("usage"))
    model = str_or_none(body.get("model"))
    return answer_row(custom_id, text, finish_reason, tokens=tokens, model=model, refusal=refusal)


def _extract(body: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """``(text, refusal, finish_reason)`` of a chat, completions or responses body."""
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        finish = str_or_none(choice.get("finish_reason"))
        message = choice.get("message")
        if isinstance(message, dict):  # /v1/chat/completions
            refusal = str_or_none(message.get("refusal"))
            return str_or_none(message.get("content")), refusal or None, finish
        return str_or_none(choice.get("text")), None, finish  # /v1/completions
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
    reason = str_or_none(details.get("reason")) if isinstance(details, dict) else None
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
