"""The driver state machine against an in-memory fake provider (unit tests of the state machine only).

Uploads reach the fake through the driver transport, results come back through the executor
transport (``iter_results`` pickled to a Spark task) unless a test says otherwise; see
``tests/orchestrator_fakes.py``. The end-to-end and crash (SIGKILL) tests run against the emulator
through the real SDK elsewhere.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pyspark.sql import SparkSession

from spark_llm_batch import _columns as C
from spark_llm_batch._leases import Leases
from spark_llm_batch._orchestrator import SOON_FRACTION, Orchestrator, RunSummary
from spark_llm_batch._store import Store
from spark_llm_batch._store_tables import Phase
from spark_llm_batch._transport import DriverTransport, ExecutorTransport, Transport
from spark_llm_batch.config import BatchConfig, PollPolicy, RetryPolicy
from spark_llm_batch.errors import AuthenticationError, StoreError
from tests.orchestrator_fakes import (
    Crash,
    FakeProvider,
    InlineFakeProvider,
    SplitTransport,
    TestStager,
    fake_transport,
    polls_per_hour,
    prompts,
    run_on_fake_clock,
    stage_rows,
)

ENDPOINT = "/v1/chat/completions"


def _config(store: Path, **overrides: Any) -> BatchConfig:
    options: dict[str, Any] = {
        "model": "openai:fake-model",
        "store": str(store),
        "poll": PollPolicy(initial_seconds=0.01, max_seconds=0.05, progress_seconds=0.2),
        **overrides,
    }
    return BatchConfig(**options)


def _setup(
    spark: SparkSession, tmp_path: Path, n: int, per_chunk: int
) -> tuple[Store, list[tuple[str, str, int]]]:
    store = Store.open(spark, str(tmp_path / "store"))
    rows = prompts(n)
    staged = stage_rows(spark, rows, per_chunk=per_chunk, sink=store)
    store.record_staged(staged, provider="fake", endpoint=ENDPOINT)
    return store, rows


def _run(
    spark: SparkSession,
    store: Store,
    fake: FakeProvider,
    tmp_path: Path,
    *,
    transport: Transport | None = None,
    stager: TestStager | None = None,
    **overrides: Any,
) -> RunSummary:
    config = _config(tmp_path / "store", **overrides)
    # As ``llm_batch`` runs it: the run's leases renewed by a heartbeat, released when it ends. A
    # ``Crash`` releases them too, so the next run takes the batches over at once (a killed
    # driver's leases expire instead: the subprocess crash tests cover that).
    leases = Leases(store, ttl=config.lease_seconds)
    with leases.heartbeat():
        return Orchestrator(
            spark,
            store,
            fake,
            config,
            transport=transport or fake_transport(store, fake),
            leases=leases,
            restage=stager or TestStager(spark, store),
        ).run()


def _chunk_keys(store: Store) -> set[str]:
    """The batch keys the ``chunks`` table holds rows of."""
    return {r[0] for r in store.table("chunks").select("batch_key").distinct().collect()}


def _results(store: Store) -> dict[str, dict[str, Any]]:
    return {row[C.HASH]: row.asDict() for row in store.results_df().collect()}


def _assert_all_answered(store: Store, rows: list[tuple[str, str, int]]) -> None:
    results = _results(store)
    assert len(results) == len(rows)
    for hash_, line, _ in rows:
        prompt = line.split('"prompt": "')[1].rstrip('"}')
        assert results[hash_]["status"] == "succeeded", results[hash_]
        assert results[hash_]["text"] == f"answer:{prompt}"
        assert results[hash_]["final"] is True


# Results through the driver transport as well (slow: tests/test_collect.py runs both already).
@pytest.mark.parametrize("results", ["executors", pytest.param("driver", marks=pytest.mark.slow)])
def test_happy_path_several_batches_respect_the_cap(
    spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture, results: str
) -> None:
    store, rows = _setup(spark, tmp_path, n=9, per_chunk=3)
    fake = FakeProvider.build(polls_to_end=2)
    transport = fake_transport(store, fake, results)
    with caplog.at_level(logging.INFO, logger="spark_llm_batch"):
        summary = _run(spark, store, fake, tmp_path, transport=transport, max_in_flight=2)
    assert summary.created == 3
    assert summary.collected == 3
    assert 1 <= fake.max_active <= 2
    assert len(fake.creates) == len(set(fake.creates)) == 3
    assert sorted(fake.uploads) == sorted(fake.creates)  # each chunk streamed once
    _assert_all_answered(store, rows)
    progress = store.progress(provider="fake")
    assert progress.batches["collected"] == 3
    assert progress.requests_done == progress.requests_total == 9
    assert progress.succeeded == 9
    assert summary.progress == progress
    messages = caplog.text
    assert "-> creating" in messages
    assert "-> submitted" in messages
    assert "-> collected" in messages
    assert "requests done" in messages
    # The run swept the lines of what it collected; the driver's downloads are dropped.
    assert _chunk_keys(store) == set()
    assert store.table("downloads").count() == 0
    # Nothing is left for a second run: no new batch, nothing created.
    again = _run(spark, store, fake, tmp_path, transport=transport)
    assert again.created == 0
    assert len(fake.creates) == 3


def test_batches_ending_over_several_polls_share_one_commit_with_their_collection(
    spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, rows = _setup(spark, tmp_path, n=9, per_chunk=3)
    fake = FakeProvider.build(later={1: 3, 2: 6})
    appended: list[list[Phase]] = []
    merges_after: list[int] = []
    real_append, real_merge = Store.append_batches, Store.merge_results

    def append(self: Store, records: Any) -> None:
        records = list(records)
        appended.append([r.state for r in records])
        real_append(self, records)

    def merge(self: Store, source: Any, **kwargs: Any) -> int:
        merges_after.append(len(appended))
        return real_merge(self, source, **kwargs)

    # Long enough that the first ended batch waits for the others (collected together).
    poll = PollPolicy(initial_seconds=0.01, max_seconds=30.0, progress_seconds=60.0)
    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.INFO, "spark_llm_batch"):
        patch.setattr(Store, "append_batches", append)
        patch.setattr(Store, "merge_results", merge)
        summary = _run(spark, store, fake, tmp_path, poll=poll)
    assert summary.collected == 3
    with_ends = [states for states in appended if Phase.ENDED in states]
    assert len(with_ends) == 1  # one commit, not one per poll round
    # ... and it is the collection's: the ends (and states seen with them), then each batch
    # collected, after the MERGE.
    assert with_ends[0].count(Phase.ENDED) == 3
    assert with_ends[0][-3:] == [Phase.COLLECTED] * 3
    assert merges_after == [appended.index(with_ends[0])]
    assert caplog.text.count("-> ended") == 3  # each end is logged when seen
    _assert_all_answered(store, rows)


def test_crash_after_create_is_adopted_not_created_again(
    spark: SparkSession, tmp_path: Path
) -> None:
    store, rows = _setup(spark, tmp_path, n=4, per_chunk=4)
    fake = FakeProvider.build(crash_after_create=True)
    with pytest.raises(Crash):
        _run(spark, store, fake, tmp_path)
    (record,) = store.current_batches(provider="fake")
    assert record.state is Phase.CREATING  # committed before the create that "crashed"
    assert len(fake.creates) == 1
    fake.crash_after_create = False
    summary = _run(spark, store, fake, tmp_path)
    assert summary.adopted == 1
    assert summary.created == 0
    assert len(fake.creates) == 1
    _assert_all_answered(store, rows)


def test_inline_creates_without_tags_go_one_at_a_time_each_committed_before_the_next(
    spark: SparkSession, tmp_path: Path
) -> None:
    store, rows = _setup(spark, tmp_path, n=9, per_chunk=3)
    fake = InlineFakeProvider.build(store=store)
    summary = _run(spark, store, fake, tmp_path)
    assert (summary.created, summary.collected) == (3, 3)
    assert fake.uploads == fake.creates  # each chunk's lines sent once, in its create call
    # Before the n-th create, the n-1 batches created before it were committed with their ids.
    assert fake.recorded_at_create == [0, 1, 2]
    _assert_all_answered(store, rows)


def test_inline_crash_after_create_is_found_by_count_and_time_not_created_again(
    spark: SparkSession, tmp_path: Path
) -> None:
    store, rows = _setup(spark, tmp_path, n=6, per_chunk=3)
    fake = InlineFakeProvider.build(crash_after_create=True)
    with pytest.raises(Crash):
        _run(spark, store, fake, tmp_path)
    states = sorted(r.state.value for r in store.current_batches(provider="fake"))
    assert states == ["creating", "staged"]  # one intent, then its create; the other waits
    assert len(fake.creates) == 1
    fake.crash_after_create = False
    summary = _run(spark, store, fake, tmp_path)
    assert (summary.adopted, summary.created) == (1, 1)
    assert len(fake.creates) == 2  # the adopted batch is the crashed create's own chunk's:
    assert {b["key"] for b in fake.batches.values()} == {r.key for r in store.current_batches(
        provider="fake", include_terminal=True)}  # fmt: skip
    _assert_all_answered(store, rows)


def test_inline_lookup_that_cannot_tell_batches_apart_neither_adopts_nor_creates(
    spark: SparkSession, tmp_path: Path
) -> None:
    store, _ = _setup(spark, tmp_path, n=3, per_chunk=3)
    (staged,) = store.current_batches(provider="fake")
    fake = InlineFakeProvider.build()
    # Two batches of the chunk's size that no store records (another job's, and maybe ours).
    for key in ("other-a", "other-b"):
        fake.batches[f"batch_{key}"] = {
            "key": key, "lines": [], "n": staged.requests, "polls": 0, "outcome": "completed",
            "created_at": time.time(), "to_end": 1,
        }  # fmt: skip
    store.append_batches([staged.to(Phase.CREATING)])  # a crash right after the intent
    poll = PollPolicy(initial_seconds=0.01, max_seconds=0.05, timeout_seconds=1.0)
    summary = _run(spark, store, fake, tmp_path, poll=poll)
    assert summary.timed_out
    assert (summary.adopted, summary.created) == (0, 0)
    assert fake.creates == []
    (record,) = store.current_batches(provider="fake")
    assert record.state is Phase.CREATING
    assert record.batch_id is None


# Unresolved candidates hold the chunk until the run times out: bound it, so that such a run fails.
_BOUNDED = PollPolicy(initial_seconds=0.01, max_seconds=0.05, timeout_seconds=30.0)


def _foreign_batch(fake: InlineFakeProvider, name: str, n: int, *, ended: bool) -> None:
    """A batch of ``n`` requests that no store records and whose requests are no chunk's of ours
    (another job's, created in the same minutes)."""
    lines = [
        json.dumps({"custom_id": f"{name}{i:028x}", "prompt": f"theirs {i}"}) for i in range(n)
    ]
    fake.batches[f"batch_{name}"] = {
        "key": name, "lines": lines, "n": n, "polls": 0, "outcome": "completed",
        "created_at": time.time(), "to_end": 0 if ended else 1,
    }  # fmt: skip


@pytest.mark.parametrize("ended", ["theirs", "ours", "both"])
def test_inline_candidates_are_told_apart_by_their_results_ids(
    spark: SparkSession, tmp_path: Path, ended: str
) -> None:
    store, rows = _setup(spark, tmp_path, n=3, per_chunk=3)
    fake = InlineFakeProvider.build(crash_after_create=True)
    with pytest.raises(Crash):
        _run(spark, store, fake, tmp_path)
    (ours,) = fake.batches
    fake.batches[ours]["to_end"] = 0 if ended in ("ours", "both") else 1
    _foreign_batch(fake, "theirs", 3, ended=ended in ("theirs", "both"))
    fake.crash_after_create = False
    summary = _run(spark, store, fake, tmp_path, poll=_BOUNDED)
    # The ended one's first result says whose it is: ours is adopted, never created again.
    assert (summary.adopted, summary.created) == (1, 0)
    assert len(fake.creates) == 1
    (record,) = store.current_batches(provider="fake", include_terminal=True)
    assert record.batch_id == ours
    _assert_all_answered(store, rows)


@pytest.mark.parametrize("names", [("thea",), ("thea", "theb")])
def test_inline_candidates_that_all_hold_other_requests_mean_the_create_never_arrived(
    spark: SparkSession, tmp_path: Path, names: tuple[str, ...]
) -> None:
    # One match on count and time is checked too: ended, its results show it is another's.
    store, rows = _setup(spark, tmp_path, n=3, per_chunk=3)
    (staged,) = store.current_batches(provider="fake")
    fake = InlineFakeProvider.build()
    for name in names:
        _foreign_batch(fake, name, 3, ended=True)
    store.append_batches([staged.to(Phase.CREATING)])  # a crash before the create arrived
    summary = _run(spark, store, fake, tmp_path, poll=_BOUNDED)
    assert (summary.adopted, summary.created) == (0, 1)
    (record,) = store.current_batches(provider="fake", include_terminal=True)
    assert record.batch_id not in ("batch_thea", "batch_theb")
    _assert_all_answered(store, rows)


def test_a_crash_after_the_merge_is_collected_again_and_the_merge_adds_nothing(
    spark: SparkSession, tmp_path: Path
) -> None:
    from spark_llm_batch import _orchestrator_ended

    store, rows = _setup(spark, tmp_path, n=4, per_chunk=2)
    fake = FakeProvider.build()
    calls: list[int] = []
    merges: list[tuple[bool, int]] = []
    real_collect, real_merge = _orchestrator_ended.collect_batches, Store.merge_results

    def crashing(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[2]))
        outcomes = real_collect(*args, **kwargs)
        if len(calls) == 1:
            raise Crash("after the MERGE commit, before collected")
        return outcomes

    def merge(self: Store, source: Any, *, insert_only: bool = False) -> int:
        merges.append((insert_only, real_merge(self, source, insert_only=insert_only)))
        return merges[-1][1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_orchestrator_ended, "collect_batches", crashing)
        patch.setattr(Store, "merge_results", merge)
        quiet = PollPolicy(initial_seconds=0.01, max_seconds=0.05, progress_seconds=60.0)
        with pytest.raises(Crash):  # no progress commit stores the ends before the collection
            _run(spark, store, fake, tmp_path, poll=quiet)
        # The ends were not stored: the next run polls the batches again and finds them ended.
        assert {r.state for r in store.current_batches(provider="fake")} == {Phase.SUBMITTED}
        first = _results(store)
        summary = _run(spark, store, fake, tmp_path)
    assert calls == [2, 2]  # both batches collected by the crashed run, then again
    # First attempts: insert-only both times; the second MERGE finds every row there already.
    assert merges == [(True, 4), (True, 0)]
    assert (summary.created, summary.collected) == (0, 2)
    assert _results(store) == first
    _assert_all_answered(store, rows)


@pytest.mark.slow
def test_crash_before_create_creates_once(spark: SparkSession, tmp_path: Path) -> None:
    store, rows = _setup(spark, tmp_path, n=2, per_chunk=2)
    (staged,) = store.current_batches(provider="fake")
    fake = FakeProvider.build()
    # The crashed run uploaded the chunk (the fake keeps the file) and committed ``creating``.
    (input_ref,) = DriverTransport(store, fake).upload([staged.chunk])
    fake.uploads.clear()
    store.append_batches([staged.to(Phase.UPLOADED, input_ref=input_ref).to(Phase.CREATING)])
    summary = _run(spark, store, fake, tmp_path)
    assert (summary.adopted, summary.created) == (0, 1)
    assert fake.uploads == []  # resumed from ``creating``: the recorded file is used
    _assert_all_answered(store, rows)


def test_expired_batch_retries_open_requests_in_a_new_batch(
    spark: SparkSession, tmp_path: Path
) -> None:
    store, rows = _setup(spark, tmp_path, n=6, per_chunk=6)
    fake = FakeProvider.build(outcomes={0: "expired"})
    summary = _run(spark, store, fake, tmp_path)
    assert summary.restaged == 1
    assert len(fake.creates) == 2
    _assert_all_answered(store, rows)
    attempts = sorted(r["attempt"] for r in _results(store).values())
    assert attempts == [1, 1, 1, 2, 2, 2]
    retry = store.current_batches(provider="fake", include_terminal=True)
    assert sorted(r.attempt for r in retry) == [1, 2]
    assert _chunk_keys(store) == set()  # both batches collected: their lines swept


class _SlowCreate(FakeProvider):
    """Each create takes ``seconds`` (real time), then calls ``hook`` (a class attribute, so
    that the provider still pickles) with the chunk's key."""

    seconds: ClassVar[float] = 2.5
    hook: ClassVar[Callable[[str], None] | None] = None

    def create(self, chunk: Any, input_ref: str | None, config: BatchConfig) -> Any:
        time.sleep(self.seconds)
        hook = type(self).hook  # the plain function, not bound to the instance
        if hook is not None:
            hook(chunk.key)
        return super().create(chunk, input_ref, config)


@pytest.fixture
def stalled_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """A heartbeat that never renews: one held up for the whole run behind long Spark jobs."""

    @contextmanager
    def heartbeat(self: Leases) -> Iterator[None]:
        self._renewed = time.monotonic()
        try:
            yield
        finally:
            self.release(sorted(self.held))

    monkeypatch.setattr(Leases, "heartbeat", heartbeat)


@pytest.mark.usefixtures("stalled_heartbeat")
def test_a_run_whose_heartbeat_is_held_up_past_the_lease_renews_before_each_step_and_finishes(
    spark: SparkSession, tmp_path: Path
) -> None:
    store, rows = _setup(spark, tmp_path, n=4, per_chunk=4)
    fake = _SlowCreate.build()  # the create alone outlasts the 2 s lease
    summary = _run(spark, store, fake, tmp_path, lease_seconds=2.0)
    assert (summary.created, summary.collected) == (1, 1)
    assert len(fake.creates) == 1
    _assert_all_answered(store, rows)


@pytest.mark.usefixtures("stalled_heartbeat")
def test_a_run_that_lost_a_lapsed_lease_to_another_run_stops_before_its_next_step(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = _setup(spark, tmp_path, n=4, per_chunk=4)
    heir = Leases(store, ttl=600.0, owner="another-host/1/heir")
    taken: list[str] = []
    monkeypatch.setattr(_SlowCreate, "seconds", 3.0)  # well past the 2 s lease
    monkeypatch.setattr(_SlowCreate, "hook", lambda key: taken.extend(heir.claim([key])))
    fake = _SlowCreate.build()
    with pytest.raises(StoreError, match=r"lost its lease\(s\)"):
        _run(spark, store, fake, tmp_path, lease_seconds=2.0)
    assert len(taken) == 1  # the other run took the batch over while the create ran
    assert len(fake.creates) == 1  # and this one stopped: nothing created twice
    [batch] = store.current_batches(provider="fake")
    # The create is recorded (the run polled it once, too), and the heir collects it.
    assert (batch.batch_id, batch.state) in {("batch_0", Phase.SUBMITTED), ("batch_0", Phase.ENDED)}
    assert heir.holders(taken) == dict.fromkeys(taken, heir.owner)


class _WaitedStager(TestStager):
    """A ``restage`` that records who held the ``stage`` lease when it was called."""

    def __init__(self, spark: SparkSession, store: Store, leases: Leases) -> None:
        super().__init__(spark, store)
        self.leases, self.holders = leases, []

    def __call__(self, frame: Any) -> Any:
        self.holders.append(self.leases.holders(["stage"])["stage"])
        return super().__call__(frame)


@contextmanager
def _another_run_staging(store: Store) -> Iterator[tuple[Leases, list[str]]]:
    """Another run (far away, alive) holds the ``stage`` lease, and ends its staging once this run
    logs that it waits for it; yields that run's leases and the waiting messages seen."""
    other = Leases(store, ttl=600.0, owner="another-host/1/run")
    assert other.claim(["stage"]) == {"stage"}
    waited: list[str] = []

    class Release(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "lease 'stage' is held by run another-host/1/run" in record.getMessage():
                waited.append(record.getMessage())
                other.release(["stage"])

    handler, logger = Release(level=logging.INFO), logging.getLogger("spark_llm_batch")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield other, waited
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_retries_are_staged_under_the_stage_lease_waiting_for_another_run_that_holds_it(
    spark: SparkSession, tmp_path: Path
) -> None:
    store, rows = _setup(spark, tmp_path, n=4, per_chunk=4)
    with _another_run_staging(store) as (other, waited):
        stager = _WaitedStager(spark, store, other)
        summary = _run(spark, store, FakeProvider.build(outcomes={0: "expired"}), tmp_path,
                       stager=stager)  # fmt: skip
    assert len(waited) == 1  # it waited for the other run's stage lease before re-staging
    [holder] = stager.holders  # and re-staged holding it itself
    assert holder is not None
    assert holder != other.owner
    assert summary.restaged == 1
    _assert_all_answered(store, rows)
    assert other.holders(["stage"]) == {"stage": None}  # released after


def test_a_queue_full_batch_is_requeued_under_the_stage_lease_after_another_run_staged(
    spark: SparkSession, tmp_path: Path
) -> None:
    store, rows = _setup(spark, tmp_path, n=4, per_chunk=4)
    copied_by: list[str | None] = []
    real_copy = Store.copy_chunk
    with _another_run_staging(store) as (other, waited), pytest.MonkeyPatch.context() as patch:

        def copy(self: Store, old_key: str, new_key: str) -> None:
            copied_by.append(other.holders(["stage"])["stage"])
            real_copy(self, old_key, new_key)

        patch.setattr(Store, "copy_chunk", copy)
        summary = _run(spark, store, FakeProvider.build(outcomes={0: "queue_full"}), tmp_path)
    assert summary.requeued == 1
    assert len(waited) == 1  # it waited for the other run's stage lease before copying
    [holder] = copied_by  # and copied the members holding it itself
    assert holder is not None
    assert holder != other.owner
    _assert_all_answered(store, rows)
    assert other.holders(["stage"]) == {"stage": None}  # released after


@pytest.mark.slow
def test_missing_results_are_retried_until_the_policy_says_stop(
    spark: SparkSession, tmp_path: Path
) -> None:
    store, rows = _setup(spark, tmp_path, n=3, per_chunk=3)
    fake = FakeProvider.build(outcomes={0: "missing", 1: "missing"})
    _run(spark, store, fake, tmp_path, retry=RetryPolicy(missing=2))
    results = _results(store)
    last = rows[-1][0]
    assert results[last]["error_class"] == "missing"
    assert results[last]["attempt"] == 2
    assert results[last]["final"] is True
    assert sum(r["status"] == "succeeded" for r in results.values()) == 2


def test_failed_batch_records_every_member_as_batch_failed(
    spark: SparkSession, tmp_path: Path
) -> None:
    store, _ = _setup(spark, tmp_path, n=3, per_chunk=3)
    fake = FakeProvider.build(outcomes={0: "failed"})
    summary = _run(spark, store, fake, tmp_path)
    assert summary.failed == 1
    results = _results(store)
    assert {r["error_class"] for r in results.values()} == {"batch_failed"}
    assert all(r["final"] and "invalid_json_line" in r["error_message"] for r in results.values())
    assert len(fake.creates) == 1


@pytest.mark.slow
def test_queue_full_batch_is_requeued_with_less_in_flight(
    spark: SparkSession, tmp_path: Path
) -> None:
    store, rows = _setup(spark, tmp_path, n=4, per_chunk=2)
    fake = FakeProvider.build(outcomes={0: "queue_full"})
    summary = _run(spark, store, fake, tmp_path, max_in_flight=2)
    assert summary.requeued == 1
    assert len(fake.creates) == 3
    assert len(fake.uploads) == 2  # the re-queued batch reuses its uploaded file
    _assert_all_answered(store, rows)
    states = sorted(
        r.state.value for r in store.current_batches(provider="fake", include_terminal=True)
    )
    assert states == ["abandoned", "collected", "collected"]
    assert _chunk_keys(store) == set()  # the copied lines are swept with the rest


@pytest.mark.parametrize("uploads", ["driver", "executors"])
def test_a_chunk_whose_rows_vanished_is_abandoned_and_its_requests_are_pending_again(
    spark: SparkSession, tmp_path: Path, uploads: str
) -> None:
    store, rows = _setup(spark, tmp_path, n=2, per_chunk=2)
    (record,) = store.current_batches(provider="fake")
    spark.sql(f"DELETE FROM {store.table_ref('chunks')} WHERE batch_key = '{record.key}'").collect()
    fake = FakeProvider.build()
    up = DriverTransport if uploads == "driver" else ExecutorTransport
    transport = SplitTransport(up(store, fake), ExecutorTransport(store, fake))
    summary = _run(spark, store, fake, tmp_path, transport=transport)
    (abandoned,) = store.current_batches(provider="fake", include_terminal=True)
    assert abandoned.state is Phase.ABANDONED
    assert abandoned.error is not None
    assert "chunk missing" in abandoned.error
    assert record.key in abandoned.error
    assert (fake.uploads, fake.creates) == ([], [])  # nothing to send, nothing sent
    assert (summary.created, summary.collected) == (0, 0)
    # Its requests are neither answered nor in flight: the next staging sends them again.
    assert store.results_df().count() == 0
    assert store.inflight_hashes().count() == 0
    pending = spark.createDataFrame([(h,) for h, _, _ in rows], f"`{C.HASH}` STRING")
    assert store.unsent(pending).count() == len(rows)


def _stage_pending(spark: SparkSession, store: Store, rows: list[tuple[str, str, int]]) -> int:
    """What ``llm_batch`` does before a run: stage every request neither answered for good nor in
    flight, at the attempt after its last one; the number staged."""
    frame = spark.createDataFrame(
        [(h, line) for h, line, _ in rows], f"`{C.HASH}` STRING, line STRING"
    )
    pending = store.unsent(frame)
    again = [(r[C.HASH], r["line"], int(r[C.ATTEMPT])) for r in pending.collect()]
    staged = stage_rows(spark, again, per_chunk=1000, sink=store)
    store.record_staged(staged, provider="fake", endpoint=ENDPOINT)
    return len(again)


def test_auth_refusals_stop_the_run_stay_open_and_are_sent_by_the_next_run(
    spark: SparkSession, tmp_path: Path
) -> None:
    store, rows = _setup(spark, tmp_path, n=4, per_chunk=4)
    fake = FakeProvider.build(outcomes={0: "auth"})
    stager = TestStager(spark, store)
    with pytest.raises(AuthenticationError, match="refused 2 request"):
        _run(spark, store, fake, tmp_path, stager=stager)
    (record,) = store.current_batches(provider="fake", include_terminal=True)
    assert record.state is Phase.COLLECTED
    assert (record.completed, record.failed) == (2, 2)
    results = _results(store)
    refused = {h for h, r in results.items() if r["error_class"] == "auth"}
    assert len(refused) == 2
    assert all(not results[h]["final"] and results[h]["attempt"] == 1 for h in refused)
    assert all(r["final"] for h, r in results.items() if h not in refused)
    assert stager.calls == 0  # nothing re-staged
    assert len(fake.creates) == 1

    # The key is fixed: the next run sends the refused requests again, and only those.
    assert _stage_pending(spark, store, rows) == 2
    summary = _run(spark, store, fake, tmp_path, stager=stager)
    assert (summary.created, summary.collected, summary.restaged) == (1, 1, 0)
    assert len(fake.creates) == 2
    sent = fake.batches["batch_1"]["lines"]
    assert {json.loads(line)["custom_id"] for line in sent} == refused
    _assert_all_answered(store, rows)
    assert {h for h, r in _results(store).items() if r["attempt"] == 2} == refused
    assert _chunk_keys(store) == set()  # the second run swept both batches' lines


HOUR = 3600.0


def test_polls_stay_under_60_per_batch_hour_also_when_batches_end_one_at_a_time(
    spark: SparkSession, tmp_path: Path
) -> None:
    # The default policy on a fake clock: two batches run 3 h and end together; six others end
    # one at a time in the first 10 minutes, and each end brings the others' next poll forward.
    policy = PollPolicy(progress_bar=False)
    seconds = [3 * HOUR, 3 * HOUR, *(100.0 * i for i in range(1, 7))]
    fake = run_on_fake_clock(spark, tmp_path, seconds, poll=policy)
    rate, busiest = polls_per_hour(fake)
    assert busiest <= 60, {b: len(times) for b, times in fake.polled.items()}
    assert rate <= 60, rate
    # Still "soon": after the poll that saw another batch end, the long ones still running are
    # polled again within SOON_FRACTION of max_seconds (plus the first interval), not after their
    # grown backoff.
    soon = policy.max_seconds * SOON_FRACTION + policy.initial_seconds
    long_ids = [b for b, (start, end) in fake.spans.items() if end - start >= HOUR]
    for batch_id, times in fake.polled.items():
        seen = times[-1]
        for long_id in [b for b in long_ids if fake.polled[b][-1] > seen]:
            polls = fake.polled[long_id]
            assert any(seen < t <= seen + soon for t in polls), (batch_id, seen, long_id)
