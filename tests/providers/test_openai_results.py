"""Classification of OpenAI batch result lines into ResultRow / ResultRecord (pure functions, real
line shapes)."""

from __future__ import annotations

import json
from dataclasses import astuple
from typing import Any

import pytest

from spark_llm_batch._results import FAILURE_CLASSES
from spark_llm_batch.providers import _openai_results
from spark_llm_batch.providers._openai_results import (
    openai_record,
    parse_openai_line,
    parse_openai_row,
)


def _chat(
    content: str | None,
    finish: str = "stop",
    refusal: str | None = None,
    status: int = 200,
) -> str:
    body = {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
    line = {
        "id": "batch_req_1",
        "custom_id": "c" * 32,
        "response": {"status_code": status, "request_id": "req_1", "body": body},
        "error": None,
    }
    return json.dumps(line)


def _http_error(status: int, type_: str | None, code: str | None, message: str = "boom") -> str:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    line = {
        "id": "batch_req_2",
        "custom_id": "e" * 32,
        "response": {"status_code": status, "request_id": "req_2", "body": body},
        "error": None,
    }
    return json.dumps(line)


def _non_http(code: str, message: str = "nope") -> str:
    line = {
        "id": "batch_req_3",
        "custom_id": "n" * 32,
        "response": None,
        "error": {"code": code, "message": message},
    }
    return json.dumps(line)


def test_succeeded_chat_line() -> None:
    rec = parse_openai_line(_chat("Paris."))
    assert rec.custom_id == "c" * 32
    assert (rec.status, rec.text, rec.finish_reason) == ("succeeded", "Paris.", "stop")
    assert (rec.input_tokens, rec.output_tokens) == (12, 7)
    assert rec.model == "gpt-4o-mini-2024-07-18"
    assert rec.error_class is None
    assert rec.error_message is None


def test_bytes_line_and_unicode() -> None:
    rec = parse_openai_line(_chat("caf\u00e9 \u2028 \U0001f600").encode())
    assert rec.text == "caf\u00e9 \u2028 \U0001f600"


def test_length_with_text_is_an_answer() -> None:
    rec = parse_openai_line(_chat("A long ans", finish="length"))
    assert (rec.status, rec.finish_reason, rec.error_class) == ("succeeded", "length", None)
    assert rec.text == "A long ans"


def test_length_without_text_is_truncated() -> None:
    rec = parse_openai_line(_chat(None, finish="length"))
    assert (rec.status, rec.error_class, rec.finish_reason) == ("failed", "truncated", "length")
    assert "max_tokens" in (rec.error_message or "")


def test_content_filter_is_refused() -> None:
    rec = parse_openai_line(_chat(None, finish="content_filter", refusal="I can't help with that."))
    assert (rec.status, rec.error_class, rec.finish_reason) == (
        "failed",
        "refused",
        "content_filter",
    )
    assert rec.error_message == "I can't help with that."
    assert rec.output_tokens == 7


def test_content_filter_without_refusal_text() -> None:
    rec = parse_openai_line(_chat("partial", finish="content_filter"))
    assert (rec.status, rec.error_class) == ("failed", "refused")
    assert rec.text == "partial"
    assert rec.error_message


def test_structured_output_refusal_with_stop() -> None:
    rec = parse_openai_line(_chat(None, finish="stop", refusal="No."))
    assert (rec.status, rec.error_class, rec.error_message, rec.finish_reason) == (
        "failed",
        "refused",
        "No.",
        "stop",
    )


@pytest.mark.parametrize(
    ("status", "type_", "code", "expected"),
    [
        (400, "invalid_request_error", None, "invalid_request"),
        (404, "invalid_request_error", "model_not_found", "invalid_request"),
        (401, "invalid_request_error", "invalid_api_key", "auth"),
        (403, "permission_error", None, "auth"),
        (429, "rate_limit_error", "rate_limit_exceeded", "rate_limited"),
        (429, "insufficient_quota", "insufficient_quota", "auth"),
        (500, "server_error", None, "server_error"),
        (503, None, None, "server_error"),
        (408, None, "request_timeout", "server_error"),
    ],
)
def test_http_error_lines(status: int, type_: str | None, code: str | None, expected: str) -> None:
    rec = parse_openai_line(_http_error(status, type_, code, message="It broke."))
    assert (rec.status, rec.error_class, rec.error_message) == ("failed", expected, "It broke.")
    assert rec.text is None


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("batch_expired", "expired"),
        ("batch_cancelled", "cancelled"),
        ("request_timeout", "server_error"),
        ("something_new", "server_error"),
    ],
)
def test_non_http_error_lines(code: str, expected: str) -> None:
    rec = parse_openai_line(_non_http(code, "This request could not be executed."))
    assert (rec.status, rec.error_class) == ("failed", expected)
    assert rec.error_message == "This request could not be executed."


def test_error_line_without_message_uses_code() -> None:
    line = json.dumps(
        {"id": "x", "custom_id": "k", "response": None, "error": {"code": "batch_expired"}}
    )
    assert parse_openai_line(line).error_message == "batch_expired"


def test_error_body_without_error_object() -> None:
    line = json.dumps(
        {"custom_id": "k", "response": {"status_code": 502, "body": "Bad gateway"}, "error": None}
    )
    rec = parse_openai_line(line)
    assert (rec.error_class, rec.error_message) == ("server_error", "HTTP 502")


def test_messages_are_redacted_and_bounded() -> None:
    secret = "sk-proj-" + "A1b2C3d4" * 4
    rec = parse_openai_line(
        _http_error(401, "invalid_request_error", "invalid_api_key", f"Incorrect key {secret}")
    )
    assert secret not in (rec.error_message or "")
    assert "***" in (rec.error_message or "")
    long = parse_openai_line(_http_error(400, "invalid_request_error", None, "x" * 10_000))
    assert len(long.error_message or "") <= 2000


def test_responses_endpoint_body() -> None:
    body: dict[str, Any] = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "model": "gpt-4.1-mini",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hi"}]}],
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    line = json.dumps(
        {"custom_id": "r", "response": {"status_code": 200, "body": body}, "error": None}
    )
    rec = parse_openai_line(line)
    assert (rec.status, rec.text, rec.finish_reason, rec.input_tokens, rec.output_tokens) == (
        "succeeded",
        "Hi",
        "stop",
        3,
        1,
    )


def test_embeddings_body_kept_as_json() -> None:
    body = {
        "object": "list",
        "data": [{"index": 0, "embedding": [0.1, 0.2]}],
        "model": "text-embedding-3-small",
    }
    line = json.dumps(
        {"custom_id": "r", "response": {"status_code": 200, "body": body}, "error": None}
    )
    rec = parse_openai_line(line)
    assert rec.status == "succeeded"
    assert json.loads(rec.text or "")[0]["embedding"] == [0.1, 0.2]


@pytest.mark.parametrize("line", ["not json", "[1, 2]", '{"id": "x"}', '{"custom_id": 5}'])
def test_unreadable_lines_raise_value_error(line: str) -> None:
    with pytest.raises(ValueError, match=r"JSON|custom_id"):
        parse_openai_line(line)


def test_every_produced_class_is_known() -> None:
    produced = {
        parse_openai_line(line).error_class
        for line in [
            _chat(None, "content_filter", "no"),
            _chat(None, "length"),
            _http_error(400, "invalid_request_error", None),
            _http_error(401, None, None),
            _http_error(429, None, None),
            _http_error(500, None, None),
            _non_http("batch_expired"),
            _non_http("batch_cancelled"),
        ]
    }
    assert produced <= FAILURE_CLASSES
    assert produced == {
        "refused",
        "truncated",
        "invalid_request",
        "auth",
        "rate_limited",
        "server_error",
        "expired",
        "cancelled",
    }


def test_module_is_pure() -> None:
    # The parser runs on executors without the SDK: nothing here imports it.
    assert "openai" not in _openai_results.__dict__


@pytest.mark.parametrize(
    "line",
    [
        _chat("Paris."),
        _chat(None, finish="length"),
        _chat("partial", finish="content_filter"),
        _chat(None, finish="stop", refusal="No."),
        _http_error(429, None, None),
        _http_error(400, "invalid_request_error", None, "x" * 3000),
        _non_http("batch_expired"),
    ],
)
def test_rows_hold_the_records_fields(line: str) -> None:
    # Collection reads rows; everything else reads records: both must say the same.
    record = parse_openai_line(line)
    assert parse_openai_row(line) == astuple(record)
    assert parse_openai_row(line.encode()) == astuple(record)


@pytest.mark.parametrize(
    "line",
    [
        b"\xef\xbb\xbf" + _chat("bom").encode(),  # json.loads strips a UTF-8 BOM
        b"  " + _chat("leading blanks").encode(),
        _chat("trailing blanks").encode() + b" \t",
        _chat("caf\u00e9 \U0001f600", finish="length").encode(),
    ],
)
def test_byte_lines_parse_as_json_loads_would(line: bytes) -> None:
    assert parse_openai_line(line) == openai_record(json.loads(line))


@pytest.mark.parametrize(
    "line", [_chat("x").encode() + b"}", b'{"custom_id": "c", "a": "\xff"}', b"{" + b"\x00" * 4]
)
def test_bad_byte_lines_raise_value_error(line: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - JSON, encoding and shape errors alike
        parse_openai_line(line)
