"""Emulator-wide per-request fault rates (seeded, per batch) and a restricted set of API keys."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import anthropic
import openai
import pytest
from pydantic import ValidationError

from spark_llm_batch.emulator import Emulator, EmulatorConfig, Fault
from tests.emulator._openai_helpers import client_for, lines, submit, wait

Jsonl = Callable[..., bytes]


def _error_codes(client: openai.OpenAI, file_id: str | None) -> Counter[int]:
    if not file_id:
        return Counter()
    return Counter(line["response"]["status_code"] for line in lines(client, file_id).values())


def test_fault_rates_fail_a_seeded_fraction_and_retries_draw_again(
    fresh_emulator: Callable[..., Emulator], make_openai_jsonl: Jsonl
) -> None:
    rates = {Fault.RATE_LIMITED: 0.2, Fault.SERVER_ERROR: 0.1}
    emu = fresh_emulator(processing_seconds=0, request_fault_rates=rates, seed=7)
    client = client_for(emu)
    data = make_openai_jsonl([f"prompt {i}" for i in range(400)])
    first = wait(client, submit(client, data).id)
    second = wait(client, submit(client, data).id)

    codes = _error_codes(client, first.error_file_id)
    assert 50 <= codes[429] <= 110  # 20 % of 400, within a generous band
    assert 20 <= codes[500] <= 65
    assert first.request_counts is not None
    assert first.request_counts.failed == codes[429] + codes[500]

    failed_first = set(lines(client, first.error_file_id or ""))
    failed_second = set(lines(client, second.error_file_id or ""))
    # The same requests in a new batch draw again: a retry can succeed.
    assert failed_first != failed_second
    # Billing follows the answers: only the successes are billed.
    billed = Counter(e["batch_id"] for e in emu.ledger())
    assert billed[first.id] == 400 - len(failed_first)


def test_fault_rates_repeat_with_the_seed(
    fresh_emulator: Callable[..., Emulator], make_openai_jsonl: Jsonl
) -> None:
    failed = []
    for _ in range(2):
        emu = fresh_emulator(processing_seconds=0, request_fault_rates={Fault.TIMEOUT: 0.3})
        client = client_for(emu)
        batch = wait(client, submit(client, make_openai_jsonl([f"p{i}" for i in range(50)])).id)
        failed.append(sorted(lines(client, batch.error_file_id or "")))
    assert failed[0] == failed[1]
    assert 5 <= len(failed[0]) <= 25


def test_anthropic_batches_use_the_rates(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator(processing_seconds=0, request_fault_rates={Fault.SERVER_ERROR: 1.0})
    client = anthropic.Anthropic(base_url=emu.anthropic_base_url, api_key="sk-ant-x", max_retries=0)
    batch = client.messages.batches.create(
        requests=[
            {
                "custom_id": f"r{i}",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"hi {i}"}],
                },
            }
            for i in range(5)
        ]
    )
    results = list(client.messages.batches.results(batch.id))
    assert [r.result.type for r in results] == ["errored"] * 5
    assert emu.ledger() == []


def test_rates_must_be_fractions() -> None:
    with pytest.raises(ValidationError, match="at most 1"):
        EmulatorConfig(request_fault_rates={Fault.RATE_LIMITED: 0.7, Fault.TIMEOUT: 0.5})


def test_only_accepted_keys_pass(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator(api_keys=frozenset({"sk-good-key"}))
    good = openai.OpenAI(base_url=emu.openai_base_url, api_key="sk-good-key", max_retries=0)
    assert list(good.batches.list()) == []
    bad = openai.OpenAI(base_url=emu.openai_base_url, api_key="sk-wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.batches.list()
    assert "sk-wrong-key" not in str(caught.value)
    bad_ant = anthropic.Anthropic(
        base_url=emu.anthropic_base_url, api_key="sk-wrong", max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError):
        bad_ant.messages.batches.list()
