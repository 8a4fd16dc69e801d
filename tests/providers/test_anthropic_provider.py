"""AnthropicProvider against the emulator, through the real ``anthropic`` SDK (no mocked call chains)."""

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
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import SecretStr

from spark_llm_batch import _columns as C
from spark_llm_batch._encode import encode_requests, request_hash
from spark_llm_batch._reconcile import tell_apart
from spark_llm_batch._retry import RetrySettings
from spark_llm_batch._transport import ChunkMissing, LineStream, _send_stream
from spark_llm_batch.config import BatchConfig, ProviderSettings
from spark_llm_batch.emulator import Emulator, marker
from spark_llm_batch.emulator._answers import REFUSAL_TEXT, expected_json, expected_text
from spark_llm_batch.errors import AuthenticationError, ConfigError, ProviderError
from spark_llm_batch.providers._anthropic_requests import forced_tool
from spark_llm_batch.providers._anthropic_results import parse_anthropic_row
from spark_llm_batch.providers.anthropic import (
    DEFAULT_MAX_TOKENS,
    AnthropicProvider,
    normalise_batch,
)
from spark_llm_batch.providers.base import (
    AmbiguousBatch,
    BatchState,
    ChunkRef,
    ProviderBatch,
    ResultRecord,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

KEY = "sk-ant-test-" + "Qx7" * 8
MODEL = "claude-haiku-4-5"
FAST_RETRY = RetrySettings(attempts=4, base_seconds=0.01, max_seconds=0.05, max_retry_after=0.05)
# Nothing moves unless a test advances the clock: request i of n ends at 100 * (i + 1) / n.
STILL = {"processing_seconds": 100.0, "clock_speed": 1.0}


@pytest.fixture
def still(fresh_emulator: Callable[..., Emulator]) -> Emulator:
    """An emulator of its own, whose batches end only when the test advances the clock."""
    return fresh_emulator(**STILL)


def _config(emulator: Emulator | None = None, **extra: Any) -> BatchConfig:
    base_url = emulator.anthropic_base_url if emulator is not None else "http://127.0.0.1:9"
    settings = ProviderSettings(
        api_key=SecretStr(KEY), base_url=base_url, max_retries=0, timeout_seconds=30
    )
    return BatchConfig(model=MODEL, store="/tmp/unused", provider_settings=settings, **extra)


def _provider(config: BatchConfig) -> AnthropicProvider:
    return AnthropicProvider(
        config.provider_settings, retry=FAST_RETRY, not_found_delays=(0.01, 0.01)
    )


_CONTENT: dict[str, bytes] = {}
"""Each test chunk's bytes, by key: what a transport would stream from the store."""


def _chunk(provider: AnthropicProvider, config: BatchConfig, prompts: dict[str, str]) -> ChunkRef:
    data = "".join(
        provider.request_line(custom_id, provider.request_body(config, prompt), config) + "\n"
        for custom_id, prompt in prompts.items()
    ).encode()
    chunk = ChunkRef(uuid.uuid4().hex, len(prompts), len(data), config.model_name)
    _CONTENT[chunk.key] = data
    return chunk


def _stream(chunk: ChunkRef, piece: int = 7) -> io.BufferedReader:
    """The chunk's bytes as transports hand them over: forward only, in pieces, of the size the
    chunk says."""
    data = _CONTENT[chunk.key]
    pieces = (data[i : i + piece] for i in range(0, len(data), piece))
    return io.BufferedReader(LineStream(chunk.key, pieces, chunk.nbytes))


def _submit(provider: AnthropicProvider, config: BatchConfig, prompts: dict[str, str]) -> Any:
    chunk = _chunk(provider, config, prompts)
    return provider.create_inline(chunk, _stream(chunk), config)


def _ended(provider: AnthropicProvider, batch: ProviderBatch, emu: Emulator) -> ProviderBatch:
    emu.advance(101)
    done = provider.retrieve(batch.batch_id)
    assert done.state.is_terminal, done.raw_status
    return done


def _ids(n: int, tag: str = "r") -> list[str]:
    return [f"{tag}{i:031x}" for i in range(n)]


# ---- request bodies and lines -------------------------------------------------------------------


def test_request_body_maps_common_params() -> None:
    params = {
        "temperature": 0,
        "top_p": 0.9,
        "top_k": 5,
        "stop": "END",
        "max_completion_tokens": 50,
    }
    config = _config(system="Be brief.", params=params)
    body = _provider(config).request_body(config, 'Grüße \u2028 "quoted"')
    assert body == {
        "model": MODEL,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": 'Grüße \u2028 "quoted"'}],
        "system": "Be brief.",
        "temperature": 0,
        "top_p": 0.9,
        "top_k": 5,
        "stop_sequences": ["END"],
    }
    config = _config(params={"stop": ["a", "b"], "metadata": {"user_id": "u1"}})
    body = _provider(config).request_body(config, "hi")
    assert body["max_tokens"] == DEFAULT_MAX_TOKENS
    assert (body["stop_sequences"], body["metadata"]) == (["a", "b"], {"user_id": "u1"})
    assert "system" not in body
    assert config.params == {"stop": ["a", "b"], "metadata": {"user_id": "u1"}}  # not mutated


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"model": "claude-opus-4"}, "model"),
        ({"messages": []}, "messages"),
        ({"system": "x"}, "system"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"seed": 1}, "seed"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"stream": True}, "stream"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens"),
        ({"stop": 5}, "stop"),
        ({"stop": "x", "stop_sequences": ["y"]}, "stop_sequences"),
    ],
)
def test_params_anthropic_cannot_take_are_config_errors(params: dict[str, Any], named: str) -> None:
    config = _config(params=params)
    with pytest.raises(ConfigError, match=named):
        _provider(config).request_body(config, "hi")


def test_response_format_is_a_forced_tool() -> None:
    schema = {"title": "City answer", "type": "object", "properties": {"city": {"type": "string"}}}
    config = _config(response_format=schema)
    body = _provider(config).request_body(config, "Capital of France?")
    assert body["tools"] == [
        {
            "name": "City_answer",
            "description": body["tools"][0]["description"],
            "input_schema": schema,
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "City_answer"}
    native = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert forced_tool(native)["tools"][0]["input_schema"] == schema
    assert forced_tool({"type": "json_object"})["tools"][0]["input_schema"] == {"type": "object"}
    with pytest.raises(ConfigError, match="object schema"):
        forced_tool({"type": "boolean"})
    clash = _config(response_format=schema, params={"tools": []})
    with pytest.raises(ConfigError, match="tools"):
        _provider(clash).request_body(clash, "hi")


def test_request_line_is_compact_with_id_and_prompt_once() -> None:
    config = _config(system="sys", params={"temperature": 0.5})
    provider = _provider(config)
    prompt, custom_id = "PROMPT-ü-\u2028", "h" * 32
    line = provider.request_line(custom_id, provider.request_body(config, prompt), config)
    assert line.startswith('{"custom_id":"' + custom_id + '","params":{"model":"' + MODEL + '",')
    assert (line.count(custom_id), line.count(prompt)) == (1, 1)  # raw, not \u-escaped
    assert "\n" not in line
    assert ", " not in line
    assert ": " not in line
    assert json.loads(line) == {
        "custom_id": custom_id,
        "params": provider.request_body(config, prompt),
    }


TRICKY = ['he said "hi"', "back\\slash", "one\ntwo\r\n\t", "é 中文 😀 \u2028 \u0000", "{0} {{x}}"]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"system": 'Be "brief"', "params": {"temperature": 0.2, "stop": "END", "max_tokens": 9}},
        {"response_format": {"type": "object", "properties": {"a": {"type": "string"}}}},
    ],
)
def test_encoder_splices_anthropic_lines(spark: SparkSession, options: dict[str, Any]) -> None:
    config = BatchConfig(model=f"anthropic:{MODEL}", store="/tmp/unused", **options)
    provider = AnthropicProvider(ProviderSettings(api_key=SecretStr(KEY)))
    df = spark.createDataFrame(list(enumerate(TRICKY)), "id int, prompt string")
    rows = encode_requests(df, "prompt", config, provider).collect()
    assert len(rows) == len(TRICKY)
    for row in rows:
        custom_id = request_hash(provider, config, row["prompt"])
        body = provider.request_body(config, row["prompt"])
        assert row[C.HASH] == custom_id
        assert json.loads(row[C.LINE]) == json.loads(provider.request_line(custom_id, body, config))
        assert row[C.NBYTES] == len(row[C.LINE].encode()) + 1


# ---- the full path ------------------------------------------------------------------------------


def test_create_poll_collect(still: Emulator) -> None:
    config = _config(still, system="Answer in one word.", params={"temperature": 0})
    provider = _provider(config)
    prompts = {custom_id: f"prompt number {i}" for i, custom_id in enumerate(_ids(7))}
    batch = _submit(provider, config, prompts)
    assert (batch.state, batch.total, batch.result_refs, batch.key) == (
        BatchState.IN_PROGRESS, 7, (), None,
    )  # fmt: skip
    assert batch.created_at == pytest.approx(still.now(), abs=5)
    done = _ended(provider, batch, still)
    assert (done.state, done.total, done.completed, done.failed) == (BatchState.COMPLETED, 7, 7, 0)
    assert done.result_refs == (batch.batch_id,)
    rows = list(provider.iter_result_rows(done))
    assert sorted(row[0] for row in rows) == sorted(prompts)
    for custom_id, status, text, finish, err, msg, inp, out, model in rows:
        assert (status, finish, err, msg, model) == ("succeeded", "stop", None, None, MODEL)
        assert text == expected_text(prompts[custom_id], model=MODEL, system="Answer in one word.")
        assert inp
        assert out
    assert list(provider.iter_results(done)) == [ResultRecord(*row) for row in rows]
    billed = [e["custom_id"] for e in still.ledger() if e["batch_id"] == done.batch_id]
    assert sorted(billed) == sorted(prompts)
    provider.cleanup(None)  # nothing was uploaded: a no-op


def test_session_emulator_batch_ends_on_its_own(emulator: Emulator) -> None:
    config = _config(emulator)
    provider = _provider(config)
    batch = _submit(provider, config, {"s" * 32: "quick one"})
    deadline = time.monotonic() + 15
    while not batch.state.is_terminal:
        assert time.monotonic() < deadline, batch.raw_status
        time.sleep(0.02)
        batch = provider.retrieve(batch.batch_id)
    [row] = provider.iter_result_rows(batch)
    assert row[:2] == ("s" * 32, "succeeded")


def test_structured_answers_are_the_tool_input_as_json(still: Emulator) -> None:
    schema = {
        "title": "Review",
        "type": "object",
        "properties": {"stars": {"type": "integer"}, "tag": {"type": "string"}},
        "required": ["stars", "tag"],
    }
    config = _config(still, response_format=schema)
    provider = _provider(config)
    prompts = {custom_id: f"rate review {i}" for i, custom_id in enumerate(_ids(3))}
    done = _ended(provider, _submit(provider, config, prompts), still)
    for custom_id, status, text, finish, *_ in provider.iter_result_rows(done):
        assert (status, finish) == ("succeeded", "tool_use")
        assert text is not None
        assert ", " not in text  # compact
        assert json.loads(text) == expected_json(schema, prompts[custom_id], model=MODEL)


def test_failures_map_to_our_classes(still: Emulator) -> None:
    config = _config(still)
    provider = _provider(config)
    faults = ["rate_limited", "server_error", "invalid_request", "timeout", "refused"]
    prompts = {custom_id: f"q {marker(f)}" for custom_id, f in zip(_ids(5), faults, strict=True)}
    prompts["ok".ljust(32, "0")] = "a fine question"
    done = _ended(provider, _submit(provider, config, prompts), still)
    assert (done.state, done.completed, done.failed) == (BatchState.COMPLETED, 2, 4)
    records = {r.custom_id: r for r in provider.iter_results(done)}
    classes = {prompts[k]: r.error_class for k, r in records.items()}
    assert classes == {
        f"q {marker('rate_limited')}": "rate_limited",
        f"q {marker('server_error')}": "server_error",
        f"q {marker('invalid_request')}": "invalid_request",
        f"q {marker('timeout')}": "server_error",
        f"q {marker('refused')}": "refused",
        "a fine question": None,
    }
    refused = records[_ids(5)[4]]
    assert (refused.status, refused.finish_reason) == ("failed", "refusal")
    assert refused.text == refused.error_message == REFUSAL_TEXT
    assert refused.input_tokens  # a refusal is an answer: billed, with usage
    # The billing rule says what the provider bills: the answer and the refusal, not the errors.
    billed = {e["custom_id"] for e in still.ledger() if e["batch_id"] == done.batch_id}
    assert billed == {k for k, r in records.items() if provider.is_billed(r.status, r.error_class)}
    assert billed == {"ok".ljust(32, "0"), _ids(5)[4]}
    assert AnthropicProvider.is_billed("failed", "truncated")  # a succeeded result, cut short
    assert not AnthropicProvider.is_billed("failed", "cancelled")
    assert all(r.error_message for r in records.values() if r.status == "failed")


def test_an_answer_cut_at_max_tokens_is_recorded(still: Emulator) -> None:
    config = _config(still, params={"max_tokens": 1})
    provider = _provider(config)
    done = _ended(provider, _submit(provider, config, {"m" * 32: "tell me a long story"}), still)
    [record] = provider.iter_results(done)
    assert (record.status, record.finish_reason, record.error_class) == (
        "succeeded",
        "length",
        None,
    )
    assert record.text
    assert record.output_tokens == 1


def test_cancel(still: Emulator) -> None:
    config = _config(still)
    provider = _provider(config)
    prompts = {custom_id: f"cancel me {i}" for i, custom_id in enumerate(_ids(3))}
    batch = _submit(provider, config, prompts)
    cancelling = provider.cancel(batch.batch_id)
    assert (cancelling.state, cancelling.raw_status) == (BatchState.CANCELLING, "canceling")
    done = provider.retrieve(batch.batch_id)  # cancelling_seconds=0: ended already
    assert (done.state, done.failed, done.completed) == (BatchState.CANCELLED, 3, 0)
    records = list(provider.iter_results(done))
    assert {r.custom_id for r in records} == set(prompts)
    assert {(r.status, r.error_class) for r in records} == {("failed", "cancelled")}
    with pytest.raises(ProviderError) as info:
        provider.cancel(batch.batch_id)  # ended: 400, not retried
    assert info.value.status == 400


def test_expiry_keeps_finished_answers(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator(**STILL, completion_window_seconds=60.0)
    config = _config(emu)
    provider = _provider(config)
    prompts = {custom_id: f"expire me {i}" for i, custom_id in enumerate(_ids(4))}
    half = _submit(provider, config, prompts)  # requests end at 25, 50, 75, 100; expiry at 60
    emu.configure(completion_window_seconds=10.0)
    whole = _submit(provider, config, {"w" * 32: "too slow"})  # ends at 100; expiry at 10
    emu.advance(61)
    done = provider.retrieve(half.batch_id)
    assert (done.state, done.completed, done.failed) == (BatchState.COMPLETED, 2, 2)
    records = {r.custom_id: r for r in provider.iter_results(done)}
    assert [records[k].error_class for k in _ids(4)] == [None, None, "expired", "expired"]
    billed = {e["custom_id"] for e in emu.ledger() if e["batch_id"] == done.batch_id}
    assert billed == set(_ids(4)[:2])
    expired = provider.retrieve(whole.batch_id)
    assert expired.state is BatchState.EXPIRED
    assert [r.error_class for r in provider.iter_results(expired)] == ["expired"]


# ---- streaming the create body ------------------------------------------------------------------


class _Recording:
    """A forward-only stream that remembers how much each read asked for."""

    def __init__(self, inner: io.BufferedReader) -> None:
        self.inner, self.asked, self.total = inner, [], 0

    def read(self, size: int = -1) -> bytes:
        assert size > 0, "the whole stream was asked for at once"
        self.asked.append(size)
        data = self.inner.read(size)
        self.total += len(data)
        return data


def test_create_streams_the_chunk_in_bounded_pieces(still: Emulator) -> None:
    config = _config(still)
    provider = _provider(config)
    prompts = {custom_id: f"{i} " + "long prompt " * 400 for i, custom_id in enumerate(_ids(800))}
    chunk = _chunk(provider, config, prompts)
    assert chunk.nbytes > 3 * 1024 * 1024
    recording = _Recording(_stream(chunk, piece=65536))
    batch = provider.create_inline(chunk, recording, config)  # type: ignore[arg-type]
    assert recording.total == chunk.nbytes
    assert max(recording.asked) <= 1024 * 1024
    assert len(recording.asked) > 3
    assert batch.total == 800
    done = _ended(provider, batch, still)
    assert sorted(r[0] for r in provider.iter_result_rows(done)) == sorted(prompts)


def test_a_short_or_miscounted_stream_creates_nothing(still: Emulator) -> None:
    config = _config(still)
    provider = _provider(config)
    chunk = _chunk(provider, config, {"a" * 32: "hello", "b" * 32: "there"})
    short = ChunkRef(chunk.key, 2, chunk.nbytes + 10, chunk.model)  # staged size says 10 more
    with pytest.raises(ChunkMissing, match=rf"holds {chunk.nbytes} bytes in the store, "):
        provider.create_inline(short, _stream(short), config)
    miscounted = ChunkRef(chunk.key, 3, chunk.nbytes, chunk.model)
    with pytest.raises(ChunkMissing, match="streamed 2 lines, 3 were staged"):
        provider.create_inline(miscounted, _stream(chunk), config)
    assert list(provider._sdk().messages.batches.list()) == []
    provider.create_inline(chunk, _stream(chunk), config)  # the full stream goes through
    assert len(list(provider._sdk().messages.batches.list())) == 1


def test_a_chunk_the_store_holds_otherwise_than_staged_is_a_missing_chunk_not_a_crash(
    still: Emulator,
) -> None:
    # The transport gives the outcome back as a value: the orchestrator abandons the batch and
    # its requests fall back to pending, where any other exception would fail the run.
    config = _config(still)
    provider = _provider(config)
    chunk = _chunk(provider, config, {"a" * 32: "hello", "b" * 32: "there"})
    miscounted = ChunkRef(chunk.key, 3, chunk.nbytes, chunk.model)
    outcome = _send_stream(provider, miscounted, iter([_CONTENT[chunk.key]]), config)
    assert isinstance(outcome, ChunkMissing)
    assert "streamed 2 lines, 3 were staged" in str(outcome)
    unterminated = ChunkRef(chunk.key, 2, chunk.nbytes - 1, chunk.model)
    outcome = _send_stream(provider, unterminated, iter([_CONTENT[chunk.key][:-1]]), config)
    assert isinstance(outcome, ChunkMissing)
    assert list(provider._sdk().messages.batches.list()) == []


def test_too_many_requests_is_413(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator(**STILL, anthropic_max_requests=2)
    config = _config(emu)
    with pytest.raises(ProviderError) as info:
        _submit(_provider(config), config, {custom_id: "x" for custom_id in _ids(3)})
    assert info.value.status == 413
    assert not isinstance(info.value, AuthenticationError)
    assert "at most 2 requests" in info.value.message


def test_too_many_bytes_is_413_even_before_the_body_is_read(
    fresh_emulator: Callable[..., Emulator],
) -> None:
    emu = fresh_emulator(**STILL, anthropic_max_bytes=64 * 1024)
    config = _config(emu)
    provider = _provider(config)
    prompts = {custom_id: "y" * 1000 for custom_id in _ids(2000)}  # ~2 MB, refused by its length
    with pytest.raises(ProviderError) as info:
        _submit(provider, config, prompts)
    assert info.value.status == 413
    assert list(provider._sdk().messages.batches.list()) == []


# ---- find -----------------------------------------------------------------------------------------


def test_find_adopts_the_one_matching_batch(still: Emulator) -> None:
    config = _config(still)
    provider = _provider(config)
    not_before = time.time()
    mine_chunk = _chunk(provider, config, dict.fromkeys(_ids(3, "m"), "mine"))
    mine = provider.create_inline(mine_chunk, _stream(mine_chunk), config)  # ...then a crash
    _submit(provider, config, dict.fromkeys(_ids(2, "o"), "other size"))
    found = provider.find(mine_chunk, not_before)
    assert found is not None
    assert (found.batch_id, found.total) == (mine.batch_id, 3)
    assert provider.find(mine_chunk, not_before, owned=frozenset({mine.batch_id})) is None
    never = ChunkRef(uuid.uuid4().hex, 5, 100, MODEL)
    assert provider.find(never, not_before) is None
    # Another batch of the same size: no way to tell which is the chunk's, so neither is taken.
    twin = _submit(provider, config, dict.fromkeys(_ids(3, "t"), "twin"))
    with pytest.raises(AmbiguousBatch, match="cannot tell which") as info:
        provider.find(mine_chunk, not_before)
    for named in (mine.batch_id, twin.batch_id, "each 3 requests", mine_chunk.key):
        assert named in str(info.value)
    assert {b.batch_id for b in info.value.candidates} == {mine.batch_id, twin.batch_id}
    found = provider.find(mine_chunk, not_before, owned=frozenset({twin.batch_id}))
    assert found is not None
    assert found.batch_id == mine.batch_id
    assert provider.find(mine_chunk, time.time() + 10 * 86400) is None  # stops at older batches


def test_ambiguous_candidates_are_told_apart_by_their_results_once_ended(still: Emulator) -> None:
    config = _config(still)
    provider = _provider(config)
    not_before = time.time()
    mine_ids, twin_ids = _ids(3, "m"), _ids(3, "t")
    mine_chunk = _chunk(provider, config, dict.fromkeys(mine_ids, "mine"))
    mine = provider.create_inline(mine_chunk, _stream(mine_chunk), config)  # ...then a crash
    twin = _submit(provider, config, dict.fromkeys(twin_ids, "twin"))  # another job's, same size
    with pytest.raises(AmbiguousBatch) as info:
        provider.find(mine_chunk, not_before)
    # In progress, neither has results: still nothing to tell them apart by.
    with pytest.raises(AmbiguousBatch, match="no results yet"):
        tell_apart(provider, info.value.candidates, mine_ids)
    _ended(provider, mine, still)
    with pytest.raises(AmbiguousBatch) as info:
        provider.find(mine_chunk, not_before)
    found = tell_apart(provider, info.value.candidates, mine_ids)
    assert found is not None
    assert found.batch_id == mine.batch_id
    found = tell_apart(provider, info.value.candidates, twin_ids)
    assert found is not None
    assert found.batch_id == twin.batch_id
    assert tell_apart(provider, info.value.candidates, _ids(3, "x")) is None  # never arrived


def test_find_pages_through_the_list(still: Emulator) -> None:
    config = _config(still)
    provider = _provider(config)
    not_before = time.time()
    chunk = _chunk(provider, config, dict.fromkeys(_ids(2, "p"), "paged"))
    oldest = provider.create_inline(chunk, _stream(chunk), config)
    for i in range(105):  # more than one page of 100 on top
        _submit(provider, config, {f"n{i:031x}": "newer"})
        still.advance(0.001)
    found = provider.find(chunk, not_before)
    assert found is not None
    assert found.batch_id == oldest.batch_id


# ---- errors ---------------------------------------------------------------------------------------


def test_rejected_key_raises_authentication_error(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator(**STILL, api_keys=frozenset({"sk-ant-the-right-one-123"}))
    config = _config(emu)
    provider = _provider(config)
    with pytest.raises(AuthenticationError) as info:
        provider.retrieve("msgbatch_x")
    assert info.value.status == 401
    assert "ANTHROPIC_API_KEY" in info.value.message
    assert KEY not in str(info.value)
    with pytest.raises(AuthenticationError):
        provider.find(ChunkRef(uuid.uuid4().hex, 1, 10, MODEL), time.time())
    clone = pickle.loads(pickle.dumps(info.value))
    assert (type(clone), clone.status) == (AuthenticationError, 401)


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Answers every call with the status and Anthropic error type named by the server's ``answer``."""

    def do_GET(self) -> None:
        status, kind = self.server.answer  # type: ignore[attr-defined]
        error = {"type": kind, "message": f"refused ({kind}) for key {KEY}"}
        data = json.dumps({"type": "error", "error": error}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 529:
            self.send_header("retry-after", "7")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def refusing() -> Iterator[Callable[[int, str], AnthropicProvider]]:
    """``refusing(status, error_type)``: a provider on a server that answers every call so."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def make(status: int, kind: str) -> AnthropicProvider:
        server.answer = (status, kind)  # type: ignore[attr-defined]
        settings = ProviderSettings(
            api_key=SecretStr(KEY), base_url=f"http://127.0.0.1:{server.server_port}", max_retries=0
        )
        return AnthropicProvider(settings, retry=RetrySettings(attempts=1))

    yield make
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "kind"),
    [(403, "permission_error"), (402, "billing_error"), (400, "billing_error")],
)
def test_permission_and_billing_raise_authentication_error(
    refusing: Callable[[int, str], AnthropicProvider], status: int, kind: str
) -> None:
    with pytest.raises(AuthenticationError) as info:
        refusing(status, kind).retrieve("msgbatch_x")
    assert info.value.status == status
    assert KEY not in str(info.value)
    assert KEY not in json.dumps(info.value.body)


def test_other_statuses_keep_status_body_and_retry_after(
    refusing: Callable[[int, str], AnthropicProvider],
) -> None:
    with pytest.raises(ProviderError) as info:
        refusing(529, "overloaded_error").retrieve("msgbatch_x")
    assert not isinstance(info.value, AuthenticationError)
    assert (info.value.status, info.value.retry_after) == (529, 7.0)
    assert info.value.body["error"]["type"] == "overloaded_error"


def test_unknown_batch_404_is_retried_briefly(
    still: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    provider = _provider(_config(still))
    with (
        caplog.at_level(logging.INFO, logger="spark_llm_batch.providers.anthropic"),
        pytest.raises(ProviderError) as info,
    ):
        provider.retrieve("msgbatch_does_not_exist")
    assert info.value.status == 404
    assert sum("not found yet" in m for m in caplog.messages) == 2  # 3 tries in all


def test_missing_key_is_a_config_error() -> None:
    provider = AnthropicProvider(ProviderSettings(base_url="http://127.0.0.1:9"))
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        provider.retrieve("msgbatch_x")


# ---- results parsing ----------------------------------------------------------------------------


def test_unreadable_result_lines_are_skipped(
    still: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(still)
    provider = _provider(config)
    done = _ended(provider, _submit(provider, config, {"u" * 32: "one"}), still)
    results = still.state.blob_path(f"anthropic-{done.batch_id}-results.jsonl")
    with results.open("ab") as fh:  # the file the emulator serves
        fh.write(b"not json at all\n[1, 2]\n")
    with caplog.at_level(logging.WARNING, logger="spark_llm_batch.providers.base"):
        rows = list(provider.iter_result_rows(done))
    assert [row[:2] for row in rows] == [("u" * 32, "succeeded")]
    assert sum("skipping unreadable" in m for m in caplog.messages) == 2


def _line(result: dict[str, Any]) -> bytes:
    return json.dumps({"custom_id": "c1", "result": result}).encode()


def test_parse_rows() -> None:
    message = {
        "model": MODEL,
        "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
        "stop_reason": "stop_sequence",
        "usage": {"input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": 10},
    }
    succeeded = _line({"type": "succeeded", "message": message})
    assert parse_anthropic_row(succeeded) == (
        "c1", "succeeded", "Hello", "stop", None, None, 13, 2, MODEL,
    )  # fmt: skip
    empty_cut = {**message, "content": [], "stop_reason": "max_tokens"}
    assert parse_anthropic_row(_line({"type": "succeeded", "message": empty_cut}))[1:5] == (
        "failed", None, "length", "truncated",
    )  # fmt: skip
    novel = {**message, "stop_reason": "pause_turn"}
    assert parse_anthropic_row(_line({"type": "succeeded", "message": novel}))[3] == "pause_turn"
    for kind, expected in [
        ("overloaded_error", "rate_limited"),
        ("api_error", "server_error"),
        ("billing_error", "auth"),
        ("authentication_error", "auth"),
        ("permission_error", "auth"),
        ("invalid_request_error", "invalid_request"),
        ("timeout_error", "server_error"),
        ("not_found_error", "invalid_request"),
        ("request_too_large", "invalid_request"),
        ("rate_limit_error", "rate_limited"),
        ("something_new", "server_error"),
    ]:
        error = {"type": "error", "error": {"type": kind, "message": f"key {KEY} was {kind}"}}
        row = parse_anthropic_row(_line({"type": "errored", "error": error}))
        assert row[1] == "failed"
        assert row[4] == expected
        assert row[5] is not None
        assert KEY not in row[5]
    long_error = {"type": "error", "error": {"type": "api_error", "message": "x" * 5000}}
    row = parse_anthropic_row(_line({"type": "errored", "error": long_error}))
    assert row[5] is not None
    assert len(row[5]) == 2000
    assert parse_anthropic_row(_line({"type": "canceled"}))[4] == "cancelled"
    assert parse_anthropic_row(_line({"type": "expired"}))[4] == "expired"
    assert parse_anthropic_row(_line({"type": "mystery"}))[4] == "server_error"
    for bad in (b"nope", b"[1]", b'{"result": {}}'):
        with pytest.raises(ValueError, match=r"JSON|custom_id"):
            parse_anthropic_row(bad)


def test_normalise_batch_states() -> None:
    from anthropic.types.messages import MessageBatch

    def batch(status: str, **counts: int) -> ProviderBatch:
        raw = {
            "id": "msgbatch_1",
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {
                "processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0,
                **counts,
            },
            "created_at": "2025-01-01T00:00:00.500000Z",
            "expires_at": "2025-01-02T00:00:00Z",
            "results_url": "https://x/results" if status == "ended" else None,
        }  # fmt: skip
        return normalise_batch(MessageBatch.model_validate(raw))

    running = batch("in_progress", processing=4)
    assert (running.state, running.total, running.result_refs) == (BatchState.IN_PROGRESS, 4, ())
    assert running.created_at == 1_735_689_600.5
    assert batch("canceling", processing=4).state is BatchState.CANCELLING
    mixed = batch("ended", succeeded=1, errored=1, canceled=1, expired=1)
    assert (mixed.state, mixed.total, mixed.completed, mixed.failed) == (
        BatchState.COMPLETED, 4, 1, 3,
    )  # fmt: skip
    assert mixed.result_refs == ("msgbatch_1",)
    assert batch("ended", canceled=3).state is BatchState.CANCELLED
    assert batch("ended", expired=3).state is BatchState.EXPIRED
    assert batch("ended", succeeded=1, canceled=2).state is BatchState.COMPLETED
    unknown = normalise_batch(
        MessageBatch.model_construct(
            id="msgbatch_2",
            processing_status="paused",
            request_counts=None,
            created_at="2025-01-01T00:00:00Z",
            results_url=None,
        )
    )
    assert (unknown.state, unknown.total, unknown.created_at) == (
        BatchState.IN_PROGRESS, 0, 1_735_689_600.0,
    )  # fmt: skip


# ---- pickling and imports -----------------------------------------------------------------------


def test_pickled_provider_works_and_hides_the_key(still: Emulator) -> None:
    config = _config(still)
    provider = _provider(config)
    done = _ended(provider, _submit(provider, config, {"p" * 32: "pickle"}), still)
    assert provider._client is not None
    data = pickle.dumps(provider)
    assert KEY.encode() not in data
    assert KEY not in repr(provider)
    clone = pickle.loads(data)
    assert clone._client is None
    assert clone.settings.api_key is not None
    assert clone.settings.api_key.get_secret_value() == KEY
    assert (clone.retry, clone.not_found_delays) == (FAST_RETRY, (0.01, 0.01))
    assert [r.custom_id for r in clone.iter_results(done)] == ["p" * 32]


def test_retry_loop_defaults_to_the_settings_retries() -> None:
    provider = AnthropicProvider(ProviderSettings(api_key=SecretStr(KEY), max_retries=2))
    assert provider.retry == RetrySettings(attempts=3)
    assert provider.base_url == "https://api.anthropic.com"
    assert (provider.requests_inline, provider.tags_batches) == (True, False)


def test_importing_the_module_does_not_import_the_sdk() -> None:
    code = (
        "import sys, spark_llm_batch.providers.anthropic; "
        "print('anthropic' in sys.modules, 'httpx2' in sys.modules, 'openai' in sys.modules, "
        "'spark_llm_batch.providers.openai' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False", "False"]
