"""The emulator core: control routes, the ledger, config, clock, persistence, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from spark_llm_batch.emulator import Emulator, EmulatorConfig
from spark_llm_batch.emulator._openai_batch import timeline
from tests.emulator._openai_helpers import client_for, lines, submit, wait

MakeJsonl = Callable[..., bytes]


def test_config_is_strict_and_frozen() -> None:
    config = EmulatorConfig()
    assert (config.openai_max_requests, config.anthropic_max_requests) == (50_000, 100_000)
    with pytest.raises(ValidationError):
        EmulatorConfig(no_such_field=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        config.seed = 3
    assert all(field.description for field in EmulatorConfig.model_fields.values())


def test_ledger_over_http_matches_python(
    fresh_emulator: Callable[..., Emulator], make_openai_jsonl: MakeJsonl
) -> None:
    emu = fresh_emulator(processing_seconds=0)
    client = client_for(emu)
    batch = wait(client, submit(client, make_openai_jsonl(["a", "b", "c"])).id)
    with urllib.request.urlopen(emu.url + "/_emulator/ledger") as resp:
        over_http = json.loads(resp.read())["data"]
    assert over_http == emu.ledger()
    assert sorted(e["custom_id"] for e in over_http) == ["r0", "r1", "r2"]
    out = lines(client, batch.output_file_id)
    for entry in over_http:
        usage = out[entry["custom_id"]]["response"]["body"]["usage"]
        assert (entry["input_tokens"], entry["output_tokens"]) == (
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
        assert entry["provider"] == "openai"
        assert entry["batch_id"] == batch.id
    emu.clear_ledger()
    assert emu.ledger() == []


def test_calls_are_counted_per_provider_and_kind_and_reset(
    fresh_emulator: Callable[..., Emulator], make_openai_jsonl: MakeJsonl
) -> None:
    import anthropic
    import openai

    emu = fresh_emulator(processing_seconds=0, api_keys=frozenset({"sk-test-emulator"}))
    client = client_for(emu)
    batch = wait(client, submit(client, make_openai_jsonl(["a", "b"])).id)  # >= 1 retrieve
    client.batches.list()
    lines(client, batch.output_file_id)
    client.files.delete(batch.input_file_id)
    with pytest.raises(openai.AuthenticationError):  # refused, yet it reached the provider
        openai.OpenAI(
            base_url=emu.openai_base_url, api_key="sk-wrong", max_retries=0
        ).batches.retrieve(batch.id)
    claude = anthropic.Anthropic(
        base_url=emu.anthropic_base_url, api_key="sk-test-emulator", max_retries=0
    )
    request: Any = {
        "custom_id": "r0",
        "params": {"model": "claude-3-5-haiku-latest", "max_tokens": 8,
                   "messages": [{"role": "user", "content": "hi"}]},
    }  # fmt: skip
    created = claude.messages.batches.create(requests=[request])
    while claude.messages.batches.retrieve(created.id).processing_status != "ended":
        pass
    assert [r.custom_id for r in claude.messages.batches.results(created.id)] == ["r0"]
    emu.ledger()  # control routes are not counted

    calls = emu.calls()
    retrieves = calls["openai"].pop("batch_retrieve")
    assert retrieves >= 2  # the wait's polls, and the refused one
    assert calls["openai"] == {
        "file_upload": 1,
        "batch_create": 1,
        "batches_list": 1,
        "file_content": 1,
        "file_delete": 1,
    }
    assert calls["anthropic"].pop("batch_retrieve") >= 1
    assert calls["anthropic"] == {"batch_create": 1, "batch_results": 1}
    with urllib.request.urlopen(emu.url + "/_emulator/calls") as resp:
        assert json.loads(resp.read())["openai"]["batch_retrieve"] == retrieves

    emu.clear_calls()
    assert emu.calls() == {"anthropic": {}, "openai": {}}
    client.files.list()
    assert emu.calls()["openai"] == {"files_list": 1}


def test_ledger_settles_batches_nobody_polled(
    fresh_emulator: Callable[..., Emulator], make_openai_jsonl: MakeJsonl
) -> None:
    emu = fresh_emulator(processing_seconds=100)
    client = client_for(emu)
    wait(client, submit(client, make_openai_jsonl(["a", "b"])).id, ("in_progress",))
    assert emu.ledger() == []
    emu.advance(101)
    assert len(emu.ledger()) == 2  # billed when done, though no one asked for the batch


def test_configure_at_runtime(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator()
    assert emu.configure(processing_seconds=5).processing_seconds == 5
    assert emu.config.processing_seconds == 5
    with pytest.raises(ValueError, match="invalid emulator config"):
        emu.configure(processing_seconds=-1)
    with pytest.raises(ValueError, match="invalid emulator config"):
        emu.configure(bogus=True)


def test_clock_advances(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator()
    before = emu.now()
    assert emu.advance(3600) >= before + 3600


def test_timeline_is_a_function_of_time() -> None:
    t = {"created": 0.0, "window": 100.0, "processing": 50.0, "validating": 10.0, "finalizing": 5.0,
         "cancelling": 1.0, "ready": 1.0}  # fmt: skip
    assert timeline(t, 10, False, 5, stuck=False).status == "validating"
    assert timeline(t, 10, False, 35, stuck=False).finished == 5
    assert timeline(t, 10, False, 62, stuck=False).status == "finalizing"
    assert timeline(t, 10, False, 65, stuck=False).status == "completed"
    assert timeline(t, 10, True, 65, stuck=False).status == "failed"
    assert timeline({**t, "window": 30.0}, 10, False, 31, stuck=False).finished == 4
    assert timeline({**t, "cancel": 20.0}, 10, False, 20.5, stuck=False).status == "cancelling"


def test_state_dir_survives_restart(tmp_path: Path, make_openai_jsonl: MakeJsonl) -> None:
    with Emulator(processing_seconds=100, state_dir=tmp_path) as emu:
        client = client_for(emu)
        done = wait(client, submit(client, make_openai_jsonl(["a", "b"])).id, ("in_progress",))
        emu.advance(101)
        assert client.batches.retrieve(done.id).status == "completed"
        running = wait(client, submit(client, make_openai_jsonl(["c"])).id, ("in_progress",))
        before = emu.ledger()
    with Emulator(processing_seconds=100, state_dir=tmp_path) as emu:
        client = client_for(emu)
        batch = client.batches.retrieve(done.id)
        assert batch.status == "completed"
        assert sorted(lines(client, batch.output_file_id)) == ["r0", "r1"]
        assert emu.ledger() == before
        emu.advance(101)
        assert client.batches.retrieve(running.id).status == "completed"
        assert [b.id for b in client.batches.list()] == [running.id, done.id]
        assert len(emu.ledger()) == 3


def test_cli_prints_base_urls_and_serves(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "spark_llm_batch.emulator", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        openai_url = proc.stdout.readline().strip().split("=", 1)
        anthropic_url = proc.stdout.readline().strip().split("=", 1)
        assert openai_url[0] == "OPENAI_BASE_URL"
        assert openai_url[1].endswith("/v1")
        assert anthropic_url == ["ANTHROPIC_BASE_URL", openai_url[1][: -len("/v1")]]
        with urllib.request.urlopen(anthropic_url[1] + "/_emulator/health") as resp:
            assert json.loads(resp.read()) == {"ok": True}
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_package_import_does_not_load_the_server_stack() -> None:
    code = "import sys, spark_llm_batch; print('aiohttp' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
