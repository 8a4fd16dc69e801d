"""OpenAIProvider against the emulator, through the real ``openai`` SDK (no mocked call chains)."""

from __future__ import annotations

import http.server
import io
import json
import logging
import pickle
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from spark_llm_batch._retry import RetrySettings, call_with_retry, parse_retry_after
from spark_llm_batch._transport import ChunkMissing, LineStream
from spark_llm_batch.config import BatchConfig, ProviderSettings
from spark_llm_batch.emulator import Emulator, marker
from spark_llm_batch.errors import AuthenticationError, ConfigError, ProviderError
from spark_llm_batch.providers import REGISTRY, get_provider, provider_class
from spark_llm_batch.providers.anthropic import AnthropicProvider
from spark_llm_batch.providers.base import BatchState, ChunkRef, ProviderBatch
from spark_llm_batch.providers.openai import OpenAIProvider, normalise_batch, response_format

KEY = "sk-test-" + "Zq9" * 8
FAST_RETRY = RetrySettings(attempts=6, base_seconds=0.01, max_seconds=0.05, max_retry_after=0.05)


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    """The session emulator (conftest): batches end within milliseconds of wall time."""
    return emulator


@pytest.fixture
def slow_emu(fresh_emulator: Callable[..., Emulator]) -> Emulator:
    """An emulator whose batches stay in progress (simulated clock at wall speed) until advanced."""
    return fresh_emulator(processing_seconds=200.0, completion_window_seconds=100.0)


def _config(emulator: Emulator, **extra: Any) -> BatchConfig:
    settings = ProviderSettings(
        api_key=SecretStr(KEY), base_url=emulator.openai_base_url, max_retries=0, timeout_seconds=30
    )
    return BatchConfig(
        model="gpt-4o-mini", store="/tmp/unused", provider_settings=settings, **extra
    )


def _provider(config: BatchConfig) -> OpenAIProvider:
    provider = get_provider(config)
    assert isinstance(provider, OpenAIProvider)
    provider.retry = FAST_RETRY
    return provider


def _chunk(
    tmp_path: Path,
    provider: OpenAIProvider,
    config: BatchConfig,
    prompts: dict[str, str],
    *,
    attempt: int = 1,
) -> ChunkRef:
    data = "".join(
        provider.request_line(custom_id, provider.request_body(config, prompt), config) + "\n"
        for custom_id, prompt in prompts.items()
    ).encode()
    chunk = ChunkRef(uuid.uuid4().hex, len(prompts), len(data), config.model_name, attempt)
    _CONTENT[chunk.key] = data
    return chunk


_CONTENT: dict[str, bytes] = {}
"""Each test chunk's bytes, by key: what a transport would stream from the store."""


def _stream(chunk: ChunkRef, piece: int = 7) -> io.BufferedReader:
    """The chunk's bytes as transports hand them to ``upload``: forward only, in pieces, of the
    size the chunk says."""
    data = _CONTENT[chunk.key]
    pieces = (data[i : i + piece] for i in range(0, len(data), piece))
    return io.BufferedReader(LineStream(chunk.key, pieces, chunk.nbytes))


def _wait(provider: OpenAIProvider, batch: ProviderBatch, timeout: float = 15.0) -> ProviderBatch:
    deadline = time.monotonic() + timeout
    while not batch.state.is_terminal:
        assert time.monotonic() < deadline, f"batch stuck in {batch.raw_status}"
        time.sleep(0.02)
        batch = provider.retrieve(batch.batch_id)
    return batch


def _submit(provider: OpenAIProvider, config: BatchConfig, chunk: ChunkRef) -> ProviderBatch:
    return provider.create(chunk, provider.upload(chunk, _stream(chunk)), config)


# ---- request lines ------------------------------------------------------------------------------


def test_request_body_and_line_are_deterministic(emu: Emulator) -> None:
    config = _config(emu, system="Be brief.", params={"temperature": 0, "max_tokens": 5})
    provider = _provider(config)
    body = provider.request_body(config, 'Grüße \u2028 "quoted"')
    assert body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": 'Grüße \u2028 "quoted"'},
        ],
        "temperature": 0,
        "max_tokens": 5,
    }
    line = provider.request_line("h" * 32, body, config)
    assert line.startswith(
        '{"custom_id":"' + "h" * 32 + '","method":"POST","url":"/v1/chat/completions","body":{'
    )
    assert "Grüße" in line
    assert json.loads(line)["body"] == body
    assert line == provider.request_line(
        "h" * 32, provider.request_body(config, 'Grüße \u2028 "quoted"'), config
    )


def test_params_cannot_override_model_or_messages(emu: Emulator) -> None:
    config = _config(emu, params={"model": "gpt-4o", "temperature": 1})
    with pytest.raises(ConfigError, match="model"):
        _provider(config).request_body(config, "hi")


def test_response_format_wraps_bare_schema(emu: Emulator) -> None:
    schema = {"title": "City answer", "type": "object", "properties": {"city": {"type": "string"}}}
    config = _config(emu, response_format=schema)
    body = _provider(config).request_body(config, "Capital of France?")
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "City_answer", "schema": schema, "strict": True},
    }
    native = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    assert response_format(native) is native


# ---- registry -----------------------------------------------------------------------------------


def test_registry_and_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert REGISTRY == {
        "anthropic": "spark_llm_batch.providers.anthropic:AnthropicProvider",
        "openai": "spark_llm_batch.providers.openai:OpenAIProvider",
    }
    assert provider_class("openai") is OpenAIProvider
    assert provider_class("anthropic") is AnthropicProvider
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-" + "Zq9" * 8)
    claude = get_provider(BatchConfig(model="claude-3-5-haiku-latest", store="/tmp/s"))
    assert isinstance(claude, AnthropicProvider)
    with pytest.raises(ConfigError, match=r"'mistral' is not supported.*: anthropic, openai$"):
        provider_class("mistral")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        get_provider(BatchConfig(model="gpt-4o-mini", store="/tmp/s"))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    provider = get_provider(BatchConfig(model="gpt-4o-mini", store="/tmp/s"))
    assert provider.settings.api_key is not None
    assert provider.settings.api_key.get_secret_value() == KEY


def test_importing_providers_does_not_import_the_sdk() -> None:
    code = (
        "import sys, spark_llm_batch.providers; "
        "print('openai' in sys.modules, 'anthropic' in sys.modules, 'httpx2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


# ---- the full path ------------------------------------------------------------------------------


def test_upload_create_poll_collect(emu: Emulator, tmp_path: Path) -> None:
    config = _config(emu, system="Answer in one word.", params={"temperature": 0})
    provider = _provider(config)
    prompts = {uuid.uuid4().hex: f"prompt number {i}" for i in range(7)}
    chunk = _chunk(tmp_path, provider, config, prompts, attempt=2)
    batch = _submit(provider, config, chunk)
    assert batch.key == chunk.key
    assert batch.state in (BatchState.VALIDATING, BatchState.IN_PROGRESS, BatchState.COMPLETED)
    done = _wait(provider, batch)
    assert (done.state, done.total, done.completed, done.failed) == (BatchState.COMPLETED, 7, 7, 0)
    assert len(done.result_refs) == 1  # no error file: none failed
    records = {r.custom_id: r for r in provider.iter_results(done)}
    assert set(records) == set(prompts)
    for custom_id, record in records.items():
        assert record.status == "succeeded"
        assert record.text is not None
        assert prompts[custom_id] in record.text  # each answer belongs to its own prompt
        assert record.model == "gpt-4o-mini"
        assert record.input_tokens
        assert record.output_tokens
    billed = [e["custom_id"] for e in emu.ledger() if e["batch_id"] == done.batch_id]
    assert sorted(billed) == sorted(prompts)
    input_ref = provider.upload(chunk, _stream(chunk))
    provider.cleanup(input_ref)
    with pytest.raises(Exception, match=r"404|not found|No such"):
        provider._sdk().files.retrieve(input_ref)
    provider.cleanup("file-does-not-exist")  # best effort: no raise


def test_a_stream_that_ends_short_fails_the_upload_and_creates_nothing(
    emu: Emulator, tmp_path: Path
) -> None:
    config = _config(emu)
    provider = _provider(config)
    chunk = _chunk(tmp_path, provider, config, {"a" * 32: "hello", "b" * 32: "there"})
    short = ChunkRef(chunk.key, 2, chunk.nbytes + 10, chunk.model)  # staged size says 10 more
    files_before = len(provider._sdk().files.list().data)
    with pytest.raises(ChunkMissing, match=rf"holds {chunk.nbytes} bytes in the store, "):
        provider.upload(short, _stream(short))
    assert len(provider._sdk().files.list().data) == files_before
    # The full stream uploads.
    done = _wait(provider, _submit(provider, config, chunk))
    assert sorted(r.custom_id for r in provider.iter_results(done)) == ["a" * 32, "b" * 32]


def test_find_reconciles_a_forgotten_create(emu: Emulator, tmp_path: Path) -> None:
    config = _config(emu)
    provider = _provider(config)
    not_before = time.time() - 60
    chunk = _chunk(tmp_path, provider, config, {"f" * 32: "find me"})
    created = _submit(
        provider, config, chunk
    )  # ...and the process "crashes" before committing the id
    other = _chunk(tmp_path, provider, config, {"g" * 32: "someone else"})
    _submit(provider, config, other)  # a newer batch on top
    found = provider.find(chunk, not_before)
    assert found is not None
    assert (found.batch_id, found.key) == (created.batch_id, chunk.key)
    never = _chunk(tmp_path, provider, config, {"n" * 32: "never created"})
    assert provider.find(never, not_before) is None
    assert provider.find(chunk, time.time() + 10 * 86400) is None  # stops at older batches


def test_failures_land_in_the_error_file(emu: Emulator, tmp_path: Path) -> None:
    config = _config(emu)
    provider = _provider(config)
    faults = ["rate_limited", "server_error", "invalid_request", "timeout", "refused"]
    prompts = {f"{i:032x}": f"q {i} {marker(f)}" for i, f in enumerate(faults)}
    prompts["ok".ljust(32, "0")] = "a fine question"
    done = _wait(provider, _submit(provider, config, _chunk(tmp_path, provider, config, prompts)))
    assert done.state is BatchState.COMPLETED
    assert len(done.result_refs) == 2  # output and error files
    records = {r.custom_id: r for r in provider.iter_results(done)}
    classes = {
        prompts[k].split()[2] if "[[" in prompts[k] else "ok": r.error_class
        for k, r in records.items()
    }
    assert classes == {
        marker("rate_limited"): "rate_limited",
        marker("server_error"): "server_error",
        marker("invalid_request"): "invalid_request",
        marker("timeout"): "server_error",
        marker("refused"): "refused",
        "ok": None,
    }
    assert all(r.error_message for r in records.values() if r.status == "failed")
    # The billing rule says what the provider bills: the answer and the refusal, not the errors.
    billed = {e["custom_id"] for e in emu.ledger() if e["batch_id"] == done.batch_id}
    assert billed == {k for k, r in records.items() if provider.is_billed(r.status, r.error_class)}
    assert billed == {"ok".ljust(32, "0"), f"{4:032x}"}
    assert OpenAIProvider.is_billed("failed", "truncated")
    assert not OpenAIProvider.is_billed("failed", "expired")


def test_batch_level_validation_failure(emu: Emulator, tmp_path: Path) -> None:
    config = _config(emu)
    provider = _provider(config)
    data = b"this is not json\n"
    chunk = ChunkRef(uuid.uuid4().hex, 1, len(data), "gpt-4o-mini")
    _CONTENT[chunk.key] = data
    done = _wait(provider, _submit(provider, config, chunk))
    assert done.state is BatchState.FAILED
    assert done.errors
    assert done.errors[0][0]
    assert list(provider.iter_results(done)) == []


def test_cancel(slow_emu: Emulator, tmp_path: Path) -> None:
    config = _config(slow_emu)
    provider = _provider(config)
    prompts = {f"{i:032x}": f"cancel me {i}" for i in range(3)}
    batch = _submit(provider, config, _chunk(tmp_path, provider, config, prompts))
    _wait_until(provider, batch, lambda b: b.state is BatchState.IN_PROGRESS)
    cancelling = provider.cancel(batch.batch_id)
    assert cancelling.state in (BatchState.CANCELLING, BatchState.CANCELLED)
    done = _wait(provider, cancelling)
    assert done.state is BatchState.CANCELLED
    records = list(provider.iter_results(done))
    assert {r.custom_id for r in records} == set(prompts)
    assert {r.error_class for r in records if r.status == "failed"} <= {"cancelled"}


def test_expired_batch_keeps_partial_results(slow_emu: Emulator, tmp_path: Path) -> None:
    config = _config(slow_emu)
    provider = _provider(config)
    prompts = {f"{i:032x}": f"expire me {i}" for i in range(4)}
    batch = _submit(provider, config, _chunk(tmp_path, provider, config, prompts))
    # In progress for 200 simulated seconds, expiring at 100: about half finish first.
    _wait_until(provider, batch, lambda b: b.state is not BatchState.VALIDATING)
    slow_emu.advance(150.0)
    done = _wait(provider, batch)
    assert done.state is BatchState.EXPIRED
    records = {r.custom_id: r for r in provider.iter_results(done)}
    assert set(records) == set(prompts)
    succeeded = {k for k, r in records.items() if r.status == "succeeded"}
    expired = {k for k, r in records.items() if r.error_class == "expired"}
    assert succeeded
    assert expired
    assert succeeded | expired == set(prompts)
    billed = {e["custom_id"] for e in slow_emu.ledger() if e["batch_id"] == done.batch_id}
    assert billed == succeeded


def _wait_until(
    provider: OpenAIProvider, batch: ProviderBatch, ok: Any, timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while not ok(provider.retrieve(batch.batch_id)):
        assert time.monotonic() < deadline
        time.sleep(0.02)


# ---- errors and retries -------------------------------------------------------------------------


def test_control_plane_429_is_retried(
    fresh_emulator: Callable[..., Emulator], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emulator = fresh_emulator(
        processing_seconds=0, rate_limit_rate=0.5, retry_after_seconds=0.01, seed=3
    )
    config = _config(emulator)
    provider = _provider(config)
    provider.retry = RetrySettings(attempts=12, base_seconds=0.01, max_seconds=0.02)
    chunk = _chunk(tmp_path, provider, config, {"r" * 32: "hi"})
    # An upload is one try (its stream cannot be rewound): the orchestrator retries it with a
    # fresh stream, as here; the other calls retry inside the provider.
    refused = []
    for _ in range(20):
        try:
            input_ref = provider.upload(chunk, _stream(chunk))
            break
        except ProviderError as exc:
            refused.append(exc.status)
    assert set(refused) <= {429}
    with caplog.at_level(logging.WARNING, logger="spark_llm_batch._retry"):
        done = _wait(provider, provider.create(chunk, input_ref, config))
        assert [r.status for r in provider.iter_results(done)] == ["succeeded"]
    assert any("status 429" in m for m in caplog.messages)
    emulator.configure(rate_limit_rate=1.0)
    with pytest.raises(ProviderError) as info:
        provider.retrieve(done.batch_id)
    assert info.value.status == 429
    assert info.value.retry_after == pytest.approx(0.01)
    assert not isinstance(info.value, AuthenticationError)


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Answers every call with the status and OpenAI error body named by the server's ``answer``."""

    def do_GET(self) -> None:
        status, body = self.server.answer  # type: ignore[attr-defined]
        data = json.dumps({"error": body}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


_REFUSALS = {
    401: {
        "message": f"Incorrect API key provided: {KEY}.",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
    },
    403: {"message": "Project does not have access.", "type": "permission_error", "code": None},
    429: {
        "message": "You exceeded your current quota.",
        "type": "insufficient_quota",
        "code": "insufficient_quota",
    },
}


@pytest.mark.parametrize("status", sorted(_REFUSALS))
def test_refused_credentials_raise_authentication_error(status: int) -> None:
    # The emulator accepts any non-empty key, so a minimal server plays the refusing provider.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    server.answer = (status, _REFUSALS[status])  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = ProviderSettings(
            api_key=SecretStr(KEY),
            base_url=f"http://127.0.0.1:{server.server_port}/v1",
            max_retries=0,
        )
        provider = OpenAIProvider(settings, retry=FAST_RETRY)
        with pytest.raises(AuthenticationError) as info:
            provider.retrieve("batch_x")
    finally:
        server.shutdown()
        server.server_close()
    assert info.value.status == status
    assert KEY not in str(info.value)
    assert KEY not in json.dumps(info.value.body)
    clone = pickle.loads(pickle.dumps(info.value))
    assert (type(clone), clone.status) == (AuthenticationError, status)


def test_missing_key_is_a_config_error() -> None:
    provider = OpenAIProvider(
        ProviderSettings(api_key=SecretStr(""), base_url="http://127.0.0.1:9/v1")
    )
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        provider.retrieve("batch_x")


def test_pickled_provider_works_and_hides_the_key(emu: Emulator, tmp_path: Path) -> None:
    config = _config(emu)
    provider = _provider(config)
    done = _wait(
        provider,
        _submit(provider, config, _chunk(tmp_path, provider, config, {"p" * 32: "pickle"})),
    )
    assert provider._client is not None
    data = pickle.dumps(provider)
    assert KEY.encode() not in data
    assert KEY not in repr(provider)
    assert KEY not in str(pickle.loads(data))
    clone = pickle.loads(data)
    assert clone._client is None
    assert clone.settings.api_key is not None
    assert clone.settings.api_key.get_secret_value() == KEY
    assert clone.retry == FAST_RETRY
    assert [r.custom_id for r in clone.iter_results(done)] == ["p" * 32]


def test_normalise_handles_empty_file_ids_and_unknown_status() -> None:
    from openai.types import Batch

    raw: dict[str, Any] = {
        "id": "batch_1",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-in",
        "completion_window": "24h",
        "status": "some_new_status",
        "created_at": 1_700_000_000,
        "output_file_id": "",
        "error_file_id": "file-err",
        "request_counts": None,
        "metadata": None,
        "errors": {
            "object": "list",
            "data": [{"code": "token_limit_exceeded", "message": "Enqueued token limit"}],
        },
    }
    batch = normalise_batch(Batch.model_construct(**raw))
    assert batch.result_refs == ("file-err",)
    assert batch.state is BatchState.IN_PROGRESS
    assert (batch.total, batch.key, batch.created_at) == (0, None, 1_700_000_000.0)
    assert batch.errors == (("token_limit_exceeded", "Enqueued token limit"),)


def test_retry_loop_honours_retry_after_and_reconciles() -> None:
    waits: list[float] = []
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        raise ProviderError("busy", status=503, retry_after=0.5)

    settings = RetrySettings(attempts=3, max_retry_after=0.3)
    found = call_with_retry(
        flaky, settings=settings, what="t", before_retry=lambda: "found", sleep=waits.append
    )
    assert (found, len(calls), waits) == ("found", 1, [0.3])
    with pytest.raises(ProviderError):
        call_with_retry(flaky, settings=settings, what="t", sleep=waits.append)
    assert len(calls) == 4
    with pytest.raises(AuthenticationError):
        call_with_retry(
            lambda: (_ for _ in ()).throw(AuthenticationError("no", status=401)),
            settings=settings,
            what="t",
            sleep=waits.append,
        )
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
