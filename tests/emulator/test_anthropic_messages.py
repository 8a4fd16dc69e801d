"""Anthropic real-time Messages on the emulator: answers, auth, faults, structured output."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest

from spark_llm_batch.emulator import Emulator, Fault, marker
from spark_llm_batch.emulator._answers import REFUSAL_TEXT, expected_json, expected_text
from tests.emulator._schema_check import schema_errors

MODEL = "claude-emulated-1"
SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {"type": "string", "maxLength": 30},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "urgent": {"type": "boolean"},
    },
    "required": ["topic", "tags", "urgent"],
    "additionalProperties": False,
}


def ask(client: anthropic.Anthropic, prompt: str, **extra: Any) -> anthropic.types.Message:
    messages = [{"role": "user", "content": prompt}]
    return client.messages.create(model=MODEL, max_tokens=256, messages=messages, **extra)  # type: ignore[arg-type]


def test_answer_and_billing(anthropic_client: anthropic.Anthropic, emulator: Emulator) -> None:
    message = ask(anthropic_client, "What is a Delta table?", system="Be brief.")
    expected = expected_text("What is a Delta table?", model=MODEL, system="Be brief.")
    assert message.content[0].type == "text"
    assert message.content[0].text == expected
    assert message.stop_reason == "end_turn"
    assert message.role == "assistant"
    billed = [
        e for e in emulator.ledger() if e["batch_id"] is None and e["provider"] == "anthropic"
    ]
    assert any(e["output_tokens"] == message.usage.output_tokens for e in billed)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": "sk-ant-test"},
        {"Authorization": "Bearer sk-ant-test"},
        {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"},
        {"Authorization": "Bearer sk-ant-test", "anthropic-version": "2026-10-21"},
    ],
)
def test_auth_header_variants(emulator: Emulator, headers: dict[str, str]) -> None:
    body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    response = httpx2.post(emulator.url + "/v1/messages", json=body, headers=headers)
    assert response.status_code == 200
    assert response.json()["type"] == "message"


def test_missing_key_is_401(emulator: Emulator) -> None:
    response = httpx2.post(emulator.url + "/v1/messages/batches", json={"requests": []})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_invalid_params_are_400(anthropic_client: anthropic.Anthropic, emulator: Emulator) -> None:
    with pytest.raises(anthropic.BadRequestError, match="messages"):
        anthropic_client.messages.create(model=MODEL, max_tokens=5, messages=[])
    response = httpx2.post(
        emulator.url + "/v1/messages", json={"model": MODEL}, headers={"x-api-key": "k"}
    )
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
        "request_id": response.json()["request_id"],
    }
    response = httpx2.post(emulator.url + "/v1/messages", content=b"{", headers={"x-api-key": "k"})
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        (Fault.RATE_LIMITED, anthropic.RateLimitError, 429),
        (Fault.SERVER_ERROR, anthropic.InternalServerError, 500),
        (Fault.INVALID_REQUEST, anthropic.BadRequestError, 400),
        (Fault.TIMEOUT, anthropic.APIStatusError, 504),
    ],
)
def test_realtime_faults(
    anthropic_client: anthropic.Anthropic, fault: Fault, error: type[Exception], status: int
) -> None:
    with pytest.raises(error) as info:
        ask(anthropic_client, f"row 7 {marker(fault)}")
    assert isinstance(info.value, anthropic.APIStatusError)
    assert info.value.status_code == status
    if status == 429:
        assert "retry-after" in info.value.response.headers


def test_realtime_refusal(anthropic_client: anthropic.Anthropic) -> None:
    message = ask(anthropic_client, f"row 8 {marker(Fault.REFUSED)}")
    assert message.stop_reason == "refusal"
    assert message.content[0].type == "text"
    assert message.content[0].text == REFUSAL_TEXT


def test_forced_tool_use(anthropic_client: anthropic.Anthropic) -> None:
    tool = {"name": "classify", "description": "Classify a ticket", "input_schema": SCHEMA}
    message = ask(
        anthropic_client, "ticket 1", tools=[tool], tool_choice={"type": "tool", "name": "classify"}
    )
    block = message.content[0]
    assert block.type == "tool_use"
    assert block.name == "classify"
    assert schema_errors(SCHEMA, block.input) == []
    assert block.input == expected_json(SCHEMA, "ticket 1", model=MODEL)


def test_output_config_json_schema(anthropic_client: anthropic.Anthropic) -> None:
    output_config = {"format": {"type": "json_schema", "schema": SCHEMA}}
    message = ask(anthropic_client, "ticket 2", output_config=output_config)
    block = message.content[0]
    assert block.type == "text"
    assert json.loads(block.text) == expected_json(SCHEMA, "ticket 2", model=MODEL)


def test_max_tokens_truncates(anthropic_client: anthropic.Anthropic) -> None:
    message = anthropic_client.messages.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "a longer prompt"}]
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2


def test_count_tokens(anthropic_client: anthropic.Anthropic) -> None:
    counted = anthropic_client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "a" * 40}]
    )
    assert counted.input_tokens == 3 + 4 + 10


def test_streaming_is_rejected(emulator: Emulator) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 8,
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
    }
    response = httpx2.post(emulator.url + "/v1/messages", json=body, headers={"x-api-key": "k"})
    assert response.status_code == 400
    assert "stream" in response.json()["error"]["message"]
