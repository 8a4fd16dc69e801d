"""Anthropic Message Batches on the emulator, driven through the official SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from spark_llm_batch.emulator import Emulator, Fault, marker
from spark_llm_batch.emulator._answers import expected_json, expected_text
from tests.emulator._schema_check import schema_errors

MODEL = "claude-haiku-4-5"
# Slow clock: nothing moves unless a test advances it, so each state can be observed exactly.
STILL = {"processing_seconds": 100.0, "clock_speed": 1.0}


def request(custom_id: str, prompt: str, **params: Any) -> dict[str, Any]:
    base = {"model": MODEL, "max_tokens": 256, "messages": [{"role": "user", "content": prompt}]}
    return {"custom_id": custom_id, "params": {**base, **params}}


def client_for(emu: Emulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=emu.anthropic_base_url, api_key="sk-ant-test", max_retries=0
    )


def results_by_id(client: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    return {r.custom_id: r.result for r in client.messages.batches.results(batch_id)}


def test_lifecycle_and_results(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator(**STILL)
    client = client_for(emu)
    prompts = {f"row-{i}": f"Summarise review {i}" for i in range(3)}
    batch = client.messages.batches.create(
        requests=[request(cid, p) for cid, p in prompts.items()]  # type: ignore[misc]
    )
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 3
    assert batch.request_counts.succeeded == 0
    assert batch.results_url is None
    assert batch.ended_at is None
    assert (batch.expires_at - batch.created_at).total_seconds() == pytest.approx(86400)
    emu.advance(50)
    assert client.messages.batches.retrieve(batch.id).request_counts.processing == 3
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        client.messages.batches.results(batch.id)
    emu.advance(51)
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    assert ended.request_counts.model_dump() == {
        "processing": 0, "succeeded": 3, "errored": 0, "canceled": 0, "expired": 0,
    }  # fmt: skip
    assert ended.ended_at is not None
    assert ended.results_url is not None
    assert ended.results_url.startswith(emu.url + "/v1/messages/batches/")
    results = results_by_id(client, batch.id)
    for cid, prompt in prompts.items():
        message = results[cid].message
        assert message.content[0].text == expected_text(prompt, model=MODEL)
        assert message.usage.service_tier == "batch"
    raw = httpx2.get(ended.results_url, headers={"x-api-key": "k"}).content
    assert raw.endswith(b"\n")
    assert b"\n\n" not in raw
    assert b"\r" not in raw
    assert len(raw.splitlines()) == 3


def test_session_emulator_quick_batch(anthropic_client: anthropic.Anthropic) -> None:
    batch = anthropic_client.messages.batches.create(
        requests=[request("a", "first"), request("b", "second")]  # type: ignore[list-item]
    )
    deadline = time.monotonic() + 10
    while batch.processing_status != "ended" and time.monotonic() < deadline:
        time.sleep(0.02)
        batch = anthropic_client.messages.batches.retrieve(batch.id)
    results = results_by_id(anthropic_client, batch.id)
    assert results["a"].message.content[0].text == expected_text("first", model=MODEL)
    assert results["b"].message.content[0].text == expected_text("second", model=MODEL)


def test_list_pagination(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator(**STILL)
    client = client_for(emu)
    created = []
    for i in range(5):
        created.append(client.messages.batches.create(requests=[request("x", f"p{i}")]).id)  # type: ignore[list-item]
        emu.advance(0.001)
    newest_first = created[::-1]
    assert [b.id for b in client.messages.batches.list(limit=2)] == newest_first
    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2]
    assert (page.has_more, page.first_id, page.last_id) == (True, newest_first[0], newest_first[1])
    after = client.messages.batches.list(limit=2, after_id=newest_first[1])
    assert [b.id for b in after.data] == newest_first[2:4]
    assert after.has_more
    last = client.messages.batches.list(limit=2, after_id=newest_first[3])
    assert [b.id for b in last.data] == newest_first[4:]
    assert last.has_more is False
    before = client.messages.batches.list(limit=2, before_id=newest_first[4])
    assert [b.id for b in before.data] == newest_first[2:4]
    assert before.has_more
    assert [b.id for b in client.messages.batches.list(limit=1000)] == newest_first
    for bad in (0, 1001):
        with pytest.raises(anthropic.BadRequestError):
            client.messages.batches.list(limit=bad)


def test_cancel_keeps_finished_and_cancels_the_rest(
    fresh_emulator: Callable[..., Emulator],
) -> None:
    emu = fresh_emulator(**STILL, cancelling_seconds=10.0)
    client = client_for(emu)
    # Request i of 4 finishes at 25 * (i + 1) simulated seconds.
    batch = client.messages.batches.create(requests=[request(f"r{i}", f"q{i}") for i in range(4)])  # type: ignore[misc]
    emu.advance(30)
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    assert client.messages.batches.retrieve(batch.id).processing_status == "canceling"
    assert client.messages.batches.cancel(batch.id).processing_status == "canceling"  # idempotent
    emu.advance(10)
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    counts = ended.request_counts
    assert (counts.succeeded, counts.canceled, counts.processing) == (1, 3, 0)
    results = results_by_id(client, batch.id)
    assert [results[f"r{i}"].type for i in range(4)] == ["succeeded", *["canceled"] * 3]
    billed = [e["custom_id"] for e in emu.ledger() if e["batch_id"] == batch.id]
    assert billed == ["r0"]
    with pytest.raises(anthropic.BadRequestError, match="ended"):
        client.messages.batches.cancel(batch.id)


def test_delete_only_when_ended(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator(**STILL)
    client = client_for(emu)
    batch = client.messages.batches.create(requests=[request("a", "x")])  # type: ignore[list-item]
    with pytest.raises(anthropic.BadRequestError, match="still processing"):
        client.messages.batches.delete(batch.id)
    emu.advance(101)
    results_url = client.messages.batches.retrieve(batch.id).results_url
    assert results_url is not None
    deleted = client.messages.batches.delete(batch.id)
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)
    assert httpx2.get(results_url, headers={"x-api-key": "k"}).status_code == 404
    assert batch.id not in [b.id for b in client.messages.batches.list()]


def test_expiry_expires_unfinished_requests(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator(**STILL, completion_window_seconds=60.0)
    client = client_for(emu)
    batch = client.messages.batches.create(requests=[request(f"r{i}", f"q{i}") for i in range(4)])  # type: ignore[misc]
    emu.advance(59)
    assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
    emu.advance(2)
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    assert ended.ended_at == ended.expires_at
    assert (ended.request_counts.succeeded, ended.request_counts.expired) == (2, 2)
    results = results_by_id(client, batch.id)
    assert [results[f"r{i}"].type for i in range(4)] == ["succeeded"] * 2 + ["expired"] * 2
    assert sorted(e["custom_id"] for e in emu.ledger() if e["batch_id"] == batch.id) == ["r0", "r1"]


def test_per_request_faults_and_invalid_params(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator(**STILL)
    client = client_for(emu)
    plain = request("plain", "fine")
    requests = [
        plain,
        request("limited", f"x {marker(Fault.RATE_LIMITED)}"),
        request("server", f"x {marker(Fault.SERVER_ERROR)}"),
        request("invalid", f"x {marker(Fault.INVALID_REQUEST)}"),
        request("timeout", f"x {marker(Fault.TIMEOUT)}"),
        request("refused", f"x {marker(Fault.REFUSED)}"),
        {
            "custom_id": "no-model",
            "params": {"max_tokens": 5, "messages": plain["params"]["messages"]},
        },
        {
            "custom_id": "no-max",
            "params": {"model": MODEL, "messages": plain["params"]["messages"]},
        },
        {"custom_id": "no-messages", "params": {"model": MODEL, "max_tokens": 5}},
        request("streaming", "x", stream=True),
    ]
    batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    emu.advance(101)
    counts = client.messages.batches.retrieve(batch.id).request_counts
    assert (counts.succeeded, counts.errored) == (2, 8)
    results = results_by_id(client, batch.id)
    errors = {cid: r.error.error.type for cid, r in results.items() if r.type == "errored"}
    assert errors == {
        "limited": "rate_limit_error",
        "server": "api_error",
        "invalid": "invalid_request_error",
        "timeout": "timeout_error",
        "no-model": "invalid_request_error",
        "no-max": "invalid_request_error",
        "no-messages": "invalid_request_error",
        "streaming": "invalid_request_error",
    }
    assert "max_tokens" in results["no-max"].error.error.message
    assert results["refused"].message.stop_reason == "refusal"
    # Only succeeded requests are billed, once, however often the ledger and batch are read.
    client.messages.batches.retrieve(batch.id)
    emu.ledger()
    billed = sorted(e["custom_id"] for e in emu.ledger() if e["batch_id"] == batch.id)
    assert billed == ["plain", "refused"]


def test_structured_output_in_a_batch(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator(**STILL)
    client = client_for(emu)
    schema = {
        "type": "object",
        "properties": {
            "label": {"enum": ["pos", "neg"]},
            "score": {"type": "integer", "minimum": 1, "maximum": 5},
        },
        "required": ["label", "score"],
        "additionalProperties": False,
    }
    tool = {"name": "grade", "description": "Grade a review", "input_schema": schema}
    requests = [
        request(f"r{i}", f"review {i}", tools=[tool], tool_choice={"type": "tool", "name": "grade"})
        for i in range(20)
    ]
    batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    emu.advance(101)
    for cid, result in results_by_id(client, batch.id).items():
        block = result.message.content[0]
        assert block.type == "tool_use"
        assert result.message.stop_reason == "tool_use"
        assert schema_errors(schema, block.input) == []
        assert block.input == expected_json(schema, f"review {cid[1:]}", model=MODEL)


@pytest.mark.parametrize(
    ("custom_ids", "fragment"),
    [
        (["has space"], "pattern"),
        (["a" * 65], "pattern"),
        ([""], "pattern"),
        (["dot.ted"], "pattern"),
        (["same", "other", "same"], "duplicate"),
    ],
)
def test_custom_id_validation(
    anthropic_client: anthropic.Anthropic, custom_ids: list[str], fragment: str
) -> None:
    with pytest.raises(anthropic.BadRequestError, match=fragment) as info:
        anthropic_client.messages.batches.create(requests=[request(c, "x") for c in custom_ids])  # type: ignore[misc]
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_limits(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator(anthropic_max_requests=3, anthropic_max_bytes=4000)
    client = client_for(emu)
    client.messages.batches.create(requests=[request(f"r{i}", "x") for i in range(3)])  # type: ignore[misc]
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.batches.create(requests=[request(f"r{i}", "x") for i in range(4)])  # type: ignore[misc]
    assert info.value.status_code == 413
    assert info.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.batches.create(requests=[request("big", "y" * 5000)])  # type: ignore[list-item]
    assert info.value.status_code == 413


def test_unknown_batch_is_404(anthropic_client: anthropic.Anthropic) -> None:
    for call in (
        anthropic_client.messages.batches.retrieve,
        anthropic_client.messages.batches.cancel,
        anthropic_client.messages.batches.delete,
    ):
        with pytest.raises(anthropic.NotFoundError) as info:
            call("msgbatch_nope")
        assert info.value.body["type"] == "error"  # type: ignore[index]
        assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_bad_create_bodies(anthropic_client: anthropic.Anthropic, emulator: Emulator) -> None:
    url = emulator.url + "/v1/messages/batches"
    for body in (b"{nope", b"[]", b'{"requests": []}', b'{"requests": [{"custom_id": "a"}]}'):
        response = httpx2.post(url, content=body, headers={"x-api-key": "k"})
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_control_plane_faults(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator(rate_limit_rate=1.0, retry_after_seconds=0.0)
    with pytest.raises(anthropic.RateLimitError) as info:
        client_for(emu).messages.batches.list()
    assert info.value.response.headers["retry-after"] == "0"
    emu.configure(rate_limit_rate=0.0, server_error_rate=1.0)
    with pytest.raises(anthropic.InternalServerError):
        client_for(emu).messages.batches.list()


def test_state_survives_restart(tmp_path: Path) -> None:
    config: dict[str, Any] = {**STILL, "state_dir": tmp_path}
    with Emulator(**config) as emu:
        client = client_for(emu)
        running = client.messages.batches.create(requests=[request("a", "one")]).id  # type: ignore[list-item]
        finished = client.messages.batches.create(requests=[request("b", "two")]).id  # type: ignore[list-item]
        emu.advance(101)
        assert results_by_id(client, finished)["b"].type == "succeeded"
        late = client.messages.batches.create(requests=[request("c", "three")]).id  # type: ignore[list-item]
    with Emulator(**config) as emu:
        client = client_for(emu)
        assert client.messages.batches.retrieve(late).processing_status == "in_progress"
        assert results_by_id(client, finished)["b"].type == "succeeded"
        emu.advance(101)
        assert results_by_id(client, late)["c"].type == "succeeded"
        assert client.messages.batches.retrieve(running).processing_status == "ended"
        billed = sorted(e["custom_id"] for e in emu.ledger() if e["batch_id"])
        assert billed == ["a", "b", "c"]
        lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
        assert len([json.loads(line) for line in lines if '"batch_id": null' not in line]) == 3
