"""Fault injection: per-request markers (batch and real time) and seeded control-plane failures."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from spark_llm_batch.emulator import Emulator, Fault, marker
from tests.emulator._openai_helpers import client_for, lines, submit, wait

MakeJsonl = Callable[..., bytes]


def test_each_marker_in_a_batch(
    openai_client: openai.OpenAI, make_openai_jsonl: MakeJsonl, emulator: Emulator
) -> None:
    prompts = ["fine", *(f"row {marker(f)}" for f in Fault)]
    batch = wait(openai_client, submit(openai_client, make_openai_jsonl(prompts)).id)
    assert batch.status == "completed"
    out, err = lines(openai_client, batch.output_file_id), lines(openai_client, batch.error_file_id)
    by_fault = {f: f"r{i + 1}" for i, f in enumerate(Fault)}
    # A malformed answer breaks a schema: without one, it is a plain answer.
    answered = ["r0", by_fault[Fault.REFUSED], by_fault[Fault.MALFORMED]]
    assert sorted(out) == sorted(answered)
    refused = out[by_fault[Fault.REFUSED]]["response"]["body"]["choices"][0]
    assert refused["finish_reason"] == "content_filter"
    assert refused["message"]["refusal"]
    assert refused["message"]["content"] is None
    statuses = {
        cid: line["response"]["status_code"] for cid, line in err.items() if line["response"]
    }
    assert statuses == {
        by_fault[Fault.RATE_LIMITED]: 429,
        by_fault[Fault.SERVER_ERROR]: 500,
        by_fault[Fault.INVALID_REQUEST]: 400,
    }
    rate_limited = err[by_fault[Fault.RATE_LIMITED]]["response"]["body"]["error"]
    assert rate_limited["code"] == "rate_limit_exceeded"
    timeout = err[by_fault[Fault.TIMEOUT]]
    assert timeout["response"] is None
    assert timeout["error"]["code"] == "request_timeout"
    billed = {e["custom_id"] for e in emulator.ledger() if e["batch_id"] == batch.id}
    assert billed == set(answered)  # refusals are answers: billed


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        (Fault.RATE_LIMITED, openai.RateLimitError, 429),
        (Fault.SERVER_ERROR, openai.InternalServerError, 500),
        (Fault.INVALID_REQUEST, openai.BadRequestError, 400),
        (Fault.TIMEOUT, openai.APIStatusError, 408),
    ],
)
def test_each_marker_in_real_time(
    openai_client: openai.OpenAI, fault: Fault, error: type[openai.APIStatusError], status: int
) -> None:
    with pytest.raises(error) as info:
        openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {marker(fault)}"}]
        )
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict)
    assert set(info.value.body) == {"message", "type", "param", "code"}
    if fault is Fault.RATE_LIMITED:
        assert info.value.response.headers["retry-after"]


def test_refusal_in_real_time(openai_client: openai.OpenAI) -> None:
    reply = openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": marker(Fault.REFUSED)}]
    )
    assert reply.choices[0].finish_reason == "content_filter"
    assert reply.choices[0].message.refusal


def _outcomes(emu: Emulator, calls: int) -> list[int]:
    client = client_for(emu)
    seen = []
    for _ in range(calls):
        try:
            client.batches.list()
            seen.append(200)
        except openai.APIStatusError as exc:
            seen.append(exc.status_code)
    return seen


def test_control_plane_faults_are_seeded(fresh_emulator: Callable[..., Emulator]) -> None:
    config = {"rate_limit_rate": 0.3, "server_error_rate": 0.2, "retry_after_seconds": 0, "seed": 7}
    first = _outcomes(fresh_emulator(**config), 40)
    again = _outcomes(fresh_emulator(**config), 40)
    assert first == again
    assert {200, 429, 500} <= set(first)
    other = _outcomes(fresh_emulator(**{**config, "seed": 8}), 40)
    assert other != first


def test_control_plane_429_carries_retry_after(fresh_emulator: Callable[..., Emulator]) -> None:
    client = client_for(fresh_emulator(rate_limit_rate=1.0, retry_after_seconds=0.01))
    with pytest.raises(openai.RateLimitError) as info:
        client.files.list()
    assert info.value.response.headers["retry-after"] == "0.01"


def test_sdk_retries_through_injected_faults(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator(rate_limit_rate=0.3, retry_after_seconds=0, seed=1)
    client = client_for(emu, max_retries=5)
    for _ in range(10):
        client.batches.list()
    emu.configure(rate_limit_rate=0.0)
    assert client_for(emu).batches.list().data == []
