"""Anthropic Message Batch result lines as :data:`ResultRow` values.

Pure (no I/O, no SDK): it runs where results are collected, on executors too. The classes and
the helpers that build rows are shared with every provider (``spark_llm_batch._results``); this is
Anthropic's evidence for each (see ``/work/shared/provider-apis.md``):

===============  ===================================================================
class            Anthropic evidence
===============  ===================================================================
invalid_request  errored ``invalid_request_error``, ``not_found_error``, ``request_too_large``
auth             errored ``authentication_error``, ``permission_error``, ``billing_error``
rate_limited     errored ``rate_limit_error``, ``overloaded_error``
server_error     errored ``api_error``, ``timeout_error``, an unknown error or result type
expired          ``expired``
cancelled        ``canceled``
refused          succeeded with ``stop_reason`` ``refusal`` (message = the answer's text)
truncated        succeeded with ``stop_reason`` ``max_tokens`` and no text at all
===============  ===================================================================
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
from spark_llm_batch.providers.base import ResultRow

__all__ = ["parse_anthropic_row"]

# Anthropic's stop reasons in OpenAI's finish_reason words; others (tool_use, refusal, pause_turn)
# pass through as they are.
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def parse_anthropic_row(line: str | bytes) -> ResultRow:
    """One line of a Message Batch results file as a :data:`ResultRow`.

    ``succeeded`` answers are classified as OpenAI's are (``spark_llm_batch._results.answer_row``):
    a ``refusal`` is ``failed``/``refused`` (its text kept), a ``max_tokens`` cut with no text at
    all is ``failed``/``truncated``, any other answer is ``succeeded``. The text is the message's
    text blocks joined, or the compact JSON of a ``tool_use`` block's ``input`` (the structured
    answer of a forced tool). ``input_tokens`` counts every prompt token, cached or not (as
    OpenAI's ``prompt_tokens`` does). ``errored`` maps its ``error.error.type``; ``canceled`` and
    ``expired`` are the classes ``cancelled`` and ``expired``.

    Raises:
        ValueError: the line is not a JSON object with a ``custom_id``.

    Example:
        >>> parse_anthropic_row('{"custom_id":"c1","result":{"type":"expired"}}')[:5]
        ('c1', 'failed', None, None, 'expired')
    """
    obj = decode_line(line)
    custom_id = obj["custom_id"]
    result = obj.get("result")
    result = result if isinstance(result, dict) else {}
    kind = result.get("type")
    if kind == "succeeded":
        message = result.get("message")
        return _answer(custom_id, message if isinstance(message, dict) else {})
    if kind == "errored":
        outer = result.get("error")
        error: dict[str, Any] = outer if isinstance(outer, dict) else {}
        inner = error.get("error")  # {"type": "error", "error": {"type", "message"}}
        if isinstance(inner, dict):
            error = inner
        word = str_or_none(error.get("type"))
        error_class = classify_http_error(None, word)
        return failed_row(custom_id, error_class, error.get("message") or word or "errored")
    if kind == "canceled":
        return failed_row(custom_id, "cancelled", "the batch was canceled before this request ran")
    if kind == "expired":
        return failed_row(custom_id, "expired", "the batch expired before this request ran")
    return failed_row(custom_id, "server_error", f"unknown result type {kind!r}")


def _answer(custom_id: str, message: dict[str, Any]) -> ResultRow:
    texts, tool_input = [], None
    for block in message.get("content") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use" and tool_input is None:
            tool_input = json.dumps(block.get("input"), separators=(",", ":"), ensure_ascii=False)
    text = tool_input if tool_input is not None else ("".join(texts) or None)
    stop = str_or_none(message.get("stop_reason"))
    finish = _FINISH.get(stop, stop) if stop is not None else None
    refusal = None
    if finish == "refusal":
        refusal = text or "the model refused to answer (stop_reason refusal)"
    usage = message.get("usage")
    tokens = _usage(usage if isinstance(usage, dict) else {})
    model = str_or_none(message.get("model"))
    return answer_row(custom_id, text, finish, tokens=tokens, model=model, refusal=refusal)


def _usage(usage: dict[str, Any]) -> tuple[int | None, int | None]:
    inp, out = usage.get("input_tokens"), usage.get("output_tokens")
    if isinstance(inp, int):
        for cached in ("cache_creation_input_tokens", "cache_read_input_tokens"):
            extra = usage.get(cached)
            inp += extra if isinstance(extra, int) else 0
    return (inp if isinstance(inp, int) else None), (out if isinstance(out, int) else None)
