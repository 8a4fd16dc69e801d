"""Test doubles for the state-machine unit tests: an in-memory provider, a tiny stager, a transport.

``FakeProvider`` is for unit tests of the orchestrator ONLY (the integration tests run against the
emulator through the real SDK). Like a provider's server, it keeps what it is sent: ``upload`` reads
the chunk's lines from the stream it is given and keeps them under the file id it returns, and
``create`` moves them into the batch's state. Its data plane (``iter_results``) answers each line
``"answer:<prompt>"`` from that state, so it works pickled to executors as well as on the driver.

Because the fake's "server" is its own memory, uploads must reach the driver's copy of it:
:class:`SplitTransport` uploads through the real driver transport and brings results back through
the real transport of the test's choice (executors by default: ``iter_results`` runs pickled in a
Spark task, as in a classic run).

:class:`TimedFakeProvider` ends its batches at set times of a :class:`FakeClock` instead, and logs
every poll; :func:`run_on_fake_clock` drives the orchestrator through hours of that clock in
seconds (the poll-rate test, and ``bench/control_plane_bench.py``).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

from pyspark.sql import DataFrame, SparkSession

from spark_llm_batch import _columns as C
from spark_llm_batch._transport import (
    CreateOutcome,
    DriverTransport,
    ExecutorTransport,
    ResultLines,
    UploadOutcome,
)
from spark_llm_batch.config import BatchConfig, PollPolicy, ProviderSettings
from spark_llm_batch.errors import ProviderError
from spark_llm_batch.providers.base import (
    AmbiguousBatch,
    BatchState,
    ChunkRef,
    Provider,
    ProviderBatch,
    ResultRecord,
)

if TYPE_CHECKING:
    from pathlib import Path

    from spark_llm_batch._pack import ChunkSink
    from spark_llm_batch._store import Store
    from spark_llm_batch._transport import Transport

CHUNK_DDL = "batch_key STRING, hash STRING, attempt INT, nbytes BIGINT, line STRING"
"""The rows packing hands ``Store.append_chunks``."""


class Crash(BaseException):
    """Simulates the driver dying (not an Exception: nothing in the orchestrator catches it)."""


def _prompt_order(line: str) -> tuple[int, str]:
    """Lines in prompt order (``p0, p1, ..., p10``), whatever order the store streams them in."""
    prompt = json.loads(line)["prompt"]
    return (len(prompt), prompt)


@dataclass
class FakeProvider(Provider):
    """Batches end after ``polls_to_end`` retrieves (plus ``later[i]`` for the i-th created) with the
    outcome scripted for their create index.

    Outcomes (over the batch's lines in prompt order): ``completed``; ``expired`` (the second half
    of the lines get ``expired``); ``missing`` (the last line has no result); ``auth`` (the first
    half of the lines are refused with class ``auth``); ``failed`` (validation); ``queue_full``
    (token_limit_exceeded).
    """

    name: ClassVar[str] = "fake"
    default_max_requests: ClassVar[int] = 1000
    default_max_bytes: ClassVar[int] = 10**7
    default_base_url: ClassVar[str] = "http://127.0.0.1:9/fake"
    outcomes: dict[int, str] = field(default_factory=dict)
    polls_to_end: int = 1
    later: dict[int, int] = field(default_factory=dict)  # create index -> extra polls to end
    crash_after_create: bool = False
    files: dict[str, list[str]] = field(default_factory=dict)  # input ref -> the lines uploaded
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploads: list[str] = field(default_factory=list)
    creates: list[str] = field(default_factory=list)
    max_active: int = 0

    @classmethod
    def build(cls, **kwargs: Any) -> FakeProvider:
        return cls(ProviderSettings(api_key="sk-fake-000000"), **kwargs)

    def endpoint(self, config: BatchConfig) -> str:
        return "/v1/chat/completions"

    def request_body(self, config: BatchConfig, prompt: str) -> dict[str, Any]:
        return {"prompt": prompt}

    def request_line(self, custom_id: str, body: dict[str, Any], config: BatchConfig) -> str:
        return json.dumps({"custom_id": custom_id, **body})

    def upload(self, chunk: ChunkRef, content: BinaryIO) -> str | None:
        data = content.read()
        assert len(data) == chunk.nbytes, (chunk, len(data))
        lines = data.decode("utf-8").split("\n")
        assert lines[-1] == "", (chunk, data[-80:])  # every line ends with a newline
        assert len(lines) == chunk.requests + 1, (chunk, len(lines))
        ref = f"file-{chunk.key}"
        self.files[ref] = lines[:-1]
        self.uploads.append(chunk.key)
        return ref

    def create(self, chunk: ChunkRef, input_ref: str | None, config: BatchConfig) -> ProviderBatch:
        if input_ref not in self.files:
            raise ProviderError(f"no uploaded file {input_ref}", status=400)
        index = len(self.creates)
        self.creates.append(chunk.key)
        batch_id = f"batch_{index}"
        self.batches[batch_id] = {
            "key": chunk.key, "lines": sorted(self.files[input_ref], key=_prompt_order),
            "n": chunk.requests, "polls": 0, "outcome": self.outcomes.get(index, "completed"),
            "created_at": time.time(), "to_end": self.polls_to_end + self.later.get(index, 0),
        }  # fmt: skip
        active = sum(1 for b in self.batches.values() if b["polls"] < b["to_end"])
        self.max_active = max(self.max_active, active)
        if self.crash_after_create:
            raise Crash(batch_id)
        return self._view(batch_id)

    def find(
        self, chunk: ChunkRef, not_before: float, owned: frozenset[str] = frozenset()
    ) -> ProviderBatch | None:
        for batch_id, batch in self.batches.items():
            if batch["key"] == chunk.key and batch["created_at"] >= not_before - 600:
                return self._view(batch_id)
        return None

    def retrieve(self, batch_id: str) -> ProviderBatch:
        if batch_id not in self.batches:
            raise ProviderError(f"no batch {batch_id}", status=404)
        self.batches[batch_id]["polls"] += 1
        return self._view(batch_id)

    def cancel(self, batch_id: str) -> ProviderBatch:
        raise NotImplementedError

    def _view(self, batch_id: str) -> ProviderBatch:
        batch = self.batches[batch_id]
        if batch["polls"] < batch["to_end"]:
            state = BatchState.VALIDATING if batch["polls"] == 0 else BatchState.IN_PROGRESS
            return ProviderBatch(batch_id, state, total=batch["n"], key=batch["key"])
        outcome = batch["outcome"]
        if outcome in ("failed", "queue_full"):
            code = "token_limit_exceeded" if outcome == "queue_full" else "invalid_json_line"
            return ProviderBatch(
                batch_id, BatchState.FAILED, errors=((code, f"{code} on line 1"),), key=batch["key"]
            )
        state = BatchState.EXPIRED if outcome == "expired" else BatchState.COMPLETED
        return ProviderBatch(
            batch_id,
            state,
            total=batch["n"],
            completed=batch["n"],
            result_refs=(outcome, batch_id),
            key=batch["key"],
        )

    def iter_results(self, batch: ProviderBatch) -> Iterator[ResultRecord]:
        outcome, batch_id = batch.result_refs
        lines = self.batches[batch_id]["lines"]
        for i, line in enumerate(lines):
            request = json.loads(line)
            if outcome == "missing" and i == len(lines) - 1:
                continue
            failure = {"expired": i >= len(lines) // 2, "auth": i < len(lines) // 2}
            if failure.get(outcome):
                message = "batch_expired" if outcome == "expired" else "insufficient_quota"
                yield ResultRecord(
                    request["custom_id"], "failed", error_class=outcome, error_message=message
                )
                continue
            yield ResultRecord(request["custom_id"], "succeeded", text=f"answer:{request['prompt']}", finish_reason="stop",
                               input_tokens=1, output_tokens=2, model="fake-model")  # fmt: skip


class FakeClock:
    """The orchestrator's ``clock`` (call it) and ``sleep``: time moves only when slept on.

    A loop that keeps sleeping 0 s without acting would spin forever on a fake clock: after
    ``spin_limit`` such sleeps in a row it fails instead.
    """

    def __init__(self, start: float = 1000.0, spin_limit: int = 10_000) -> None:
        self.now, self.spin_limit, self._spins = start, spin_limit, 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self._spins = self._spins + 1 if seconds <= 0 else 0
        assert self._spins < self.spin_limit, f"the loop spins at {self.now} without sleeping"
        self.now += max(seconds, 0.0)


@dataclass
class TimedFakeProvider(FakeProvider):
    """Batches end on a clock, not after a number of polls: the i-th created ends ``seconds[i]``
    (default 0) after its create. Every retrieve is logged in ``polled`` (batch id -> clock times);
    ``spans`` holds each batch's (created, ends) times."""

    clock: Callable[[], float] = time.monotonic
    seconds: dict[int, float] = field(default_factory=dict)
    polled: dict[str, list[float]] = field(default_factory=dict)
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)

    def create(self, chunk: ChunkRef, input_ref: str | None, config: BatchConfig) -> ProviderBatch:
        index = len(self.creates)
        view = super().create(chunk, input_ref, config)
        now = self.clock()
        self.spans[view.batch_id] = (now, now + self.seconds.get(index, 0.0))
        self.batches[view.batch_id]["to_end"] = float("inf")
        return view

    def retrieve(self, batch_id: str) -> ProviderBatch:
        now = self.clock()
        self.polled.setdefault(batch_id, []).append(now)
        batch = self.batches.get(batch_id)
        if batch is not None and now >= self.spans[batch_id][1]:
            batch["to_end"] = batch["polls"] + 1  # this retrieve sees it ended
        return super().retrieve(batch_id)


@dataclass
class InlineFakeProvider(FakeProvider):
    """Like Anthropic: the lines travel in the create call, and a batch carries no key, so
    ``find`` matches on request count and time only (and gives up when that is ambiguous).

    ``recorded_at_create`` holds, per create, how many batches the store recorded ``submitted``
    (or later) just before it: what "commit after each create" means, checked by the tests.
    """

    name: ClassVar[str] = "fake"
    requests_inline: ClassVar[bool] = True
    tags_batches: ClassVar[bool] = False
    store: Any = None
    recorded_at_create: list[int] = field(default_factory=list)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "store": None}  # a Spark session stays where it is

    def upload(self, chunk: ChunkRef, content: BinaryIO) -> str:
        raise AssertionError("an inline provider is never asked to upload")

    def create(self, chunk: ChunkRef, input_ref: str | None, config: BatchConfig) -> ProviderBatch:
        raise AssertionError("an inline provider is never asked to create from a file")

    def create_inline(
        self, chunk: ChunkRef, content: BinaryIO, config: BatchConfig
    ) -> ProviderBatch:
        if self.store is not None:
            batches = self.store.current_batches(provider=self.name, include_terminal=True)
            recorded = [r for r in batches if r.batch_id]
            self.recorded_at_create.append(len(recorded))
        ref = FakeProvider.upload(self, chunk, content)
        return FakeProvider.create(self, chunk, ref, config)

    def find(
        self, chunk: ChunkRef, not_before: float, owned: frozenset[str] = frozenset()
    ) -> ProviderBatch | None:
        matches = [
            batch_id
            for batch_id, batch in self.batches.items()
            if batch["n"] == chunk.requests
            and batch["created_at"] >= not_before - 600
            and batch_id not in owned
        ]
        if len(matches) > 1:
            raise AmbiguousBatch(
                f"batches {matches} each hold {chunk.requests} requests",
                candidates=[self._view(m) for m in matches],
            )
        return self._view(matches[0]) if matches else None


class SplitTransport:
    """Uploads through one transport, results through another (both the library's own).

    The fake keeps what it is sent in the memory of the object that receives the upload, so
    uploads go through :class:`DriverTransport` (the test's copy of the fake receives them).
    """

    def __init__(self, up: Transport, down: Transport) -> None:
        self.up, self.down = up, down
        self.name = f"{up.name}+{down.name}"

    def upload(self, chunks: Sequence[ChunkRef]) -> list[UploadOutcome]:
        return self.up.upload(chunks)

    def create_inline(self, chunks: Sequence[ChunkRef], config: BatchConfig) -> list[CreateOutcome]:
        return self.up.create_inline(chunks, config)

    def result_lines(
        self, batches: Sequence[ProviderBatch]
    ) -> contextlib.AbstractContextManager[ResultLines]:
        return self.down.result_lines(batches)


def fake_transport(store: Store, fake: FakeProvider, results: str = "executors") -> SplitTransport:
    """Uploads on the driver, results through ``results`` (``"executors"`` or ``"driver"``)."""
    down = ExecutorTransport if results == "executors" else DriverTransport
    return SplitTransport(DriverTransport(store, fake), down(store, fake))


@dataclass
class Staged:
    """A StagedChunks look-alike."""

    chunks: list[ChunkRef]


def stage_rows(
    spark: SparkSession, rows: list[tuple[str, str, int]], *, per_chunk: int, sink: ChunkSink
) -> Staged:
    """Stage (hash, line, attempt) rows as chunks of ``per_chunk`` lines, one attempt each, in order.

    The chunks' rows (members and lines) go to ``sink.append_chunks`` (a store's) in one append, as
    packing's write job does; unlike packing, which request lands in which chunk is predictable.
    """
    chunks: list[ChunkRef] = []
    staged: list[tuple[str, str, int, int, str]] = []
    by_attempt: dict[int, list[tuple[str, str]]] = {}
    for hash_, line, attempt in rows:
        by_attempt.setdefault(attempt, []).append((hash_, line))
    for attempt, items in sorted(by_attempt.items()):
        for start in range(0, len(items), per_chunk):
            part = items[start : start + per_chunk]
            key = uuid.uuid4().hex
            sizes = [len(line.encode()) + 1 for _, line in part]
            chunks.append(ChunkRef(key, len(part), sum(sizes), "fake-model", attempt))
            staged += [(key, h, attempt, n, line) for (h, line), n in zip(part, sizes, strict=True)]
    if staged:
        sink.append_chunks(spark.createDataFrame(staged, CHUNK_DDL))
    return Staged(chunks)


def prompts(n: int, prefix: str = "p") -> list[tuple[str, str, int]]:
    """``n`` requests: (hash, line, attempt 1)."""
    out = []
    for i in range(n):
        hash_ = uuid.uuid5(uuid.NAMESPACE_URL, f"{prefix}{i}").hex
        out.append((hash_, json.dumps({"custom_id": hash_, "prompt": f"{prefix}{i}"}), 1))
    return out


class TestStager:
    """A ``restage`` callable: collects the (small) retry frame and stages one chunk per attempt."""

    __test__ = False  # not a pytest class

    def __init__(self, spark: SparkSession, sink: ChunkSink) -> None:
        self.spark, self.sink, self.calls = spark, sink, 0

    def __call__(self, frame: DataFrame) -> Staged:
        self.calls += 1
        rows = [(r[C.HASH], r[C.LINE], int(r[C.ATTEMPT])) for r in frame.collect()]
        return stage_rows(self.spark, rows, per_chunk=1000, sink=self.sink)


def run_on_fake_clock(
    spark: SparkSession, root: Path, seconds: Sequence[float], *, poll: PollPolicy | None = None
) -> TimedFakeProvider:
    """Drive the orchestrator on a :class:`FakeClock` over one single-request batch per entry
    of ``seconds`` (how long the i-th created runs), all staged at once, with ``poll`` (default:
    the default policy, no bar); the fake, with its poll log, once every batch is collected."""
    from spark_llm_batch._leases import Leases
    from spark_llm_batch._orchestrator import Orchestrator
    from spark_llm_batch._store import Store

    store = Store.open(spark, str(root / "store"))
    staged = stage_rows(spark, prompts(len(seconds)), per_chunk=1, sink=store)
    store.record_staged(staged, provider="fake", endpoint="/v1/chat/completions")
    clock = FakeClock()
    fake = TimedFakeProvider.build(clock=clock, seconds=dict(enumerate(seconds)))
    config = BatchConfig(
        model="openai:fake-model",
        store=str(root / "store"),
        poll=poll or PollPolicy(progress_bar=False),
    )
    leases = Leases(store, ttl=config.lease_seconds)
    with leases.heartbeat():
        summary = Orchestrator(
            spark, store, fake, config, transport=fake_transport(store, fake), leases=leases,
            restage=TestStager(spark, store), sleep=clock.sleep, clock=clock,
        ).run()  # fmt: skip
    assert summary.collected == len(seconds), summary
    return fake


def polls_per_hour(fake: TimedFakeProvider) -> tuple[float, int]:
    """Polls per batch-hour of the fake's batches that ran an hour or more, and the most polls
    any batch got in one hour (a sliding window)."""
    long = [b for b, (start, end) in fake.spans.items() if end - start >= 3600]
    polls = sum(len(fake.polled[b]) for b in long)
    hours = sum(fake.spans[b][1] - fake.spans[b][0] for b in long) / 3600
    busiest = 0
    for times in fake.polled.values():
        for i, first in enumerate(times):
            busiest = max(busiest, sum(1 for t in times[i:] if t < first + 3600))
    return (polls / hours if hours else 0.0), busiest
