"""The driver state machine against an in-memory fake provider (unit tests of the state machine only).

The end-to-end and crash (SIGKILL) tests run against the emulator through the real SDK elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from spark_llm_batch import _columns as C
from spark_llm_batch._orchestrator import Orchestrator, RunSummary
from spark_llm_batch._store import Store
from spark_llm_batch._store_tables import Phase
from spark_llm_batch.config import BatchConfig, PollPolicy, RetryPolicy
from tests.orchestrator_fakes import (
    Crash,
    FakeProvider,
    TestStager,
    prompts,
    stage_rows,
)

# Python workers must run this interpreter (the venv with pyarrow), not whatever python3 is on PATH.


def _config(store: Path, **overrides: Any) -> BatchConfig:
    options: dict[str, Any] = {
        "model": "openai:fake-model",
        "store": str(store),
        "endpoint": "/v1/chat/completions",
        "poll": PollPolicy(initial_seconds=0.01, max_seconds=0.05, progress_seconds=0.2),
        **overrides,
    }
    return BatchConfig(**options)


def _setup(
    spark: SparkSession, tmp_path: Path, n: int, per_chunk: int
) -> tuple[Store, list[tuple[str, str, int]]]:
    store = Store.open(spark, str(tmp_path / "store"))
    rows = prompts(n)
    staged = stage_rows(
        spark, rows, tmp_path, per_chunk=per_chunk, record_members=store.append_members
    )
    store.record_staged(staged, provider="fake", endpoint="/v1/chat/completions")
    return store, rows


def _run(
    spark: SparkSession, store: Store, fake: FakeProvider, tmp_path: Path, **overrides: Any
) -> RunSummary:
    config = _config(tmp_path / "store", **overrides)
    return Orchestrator(
        spark, store, fake, config, restage=TestStager(spark, tmp_path, store.append_members)
    ).run()


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


def test_happy_path_several_batches_respect_the_cap(
    spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, rows = _setup(spark, tmp_path, n=9, per_chunk=3)
    fake = FakeProvider.build(polls_to_end=2)
    with caplog.at_level(logging.INFO, logger="spark_llm_batch"):
        summary = _run(spark, store, fake, tmp_path, max_in_flight=2)
    assert summary.created == 3
    assert summary.collected == 3
    assert 1 <= fake.max_active <= 2
    assert len(fake.creates) == len(set(fake.creates)) == 3
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
    # Nothing is left for a second run: no new batch, nothing created.
    again = _run(spark, store, fake, tmp_path)
    assert again.created == 0
    assert len(fake.creates) == 3


def test_batches_ending_over_several_polls_share_one_commit_before_collection(
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
    assert with_ends[0].count(Phase.ENDED) == 3
    assert merges_after == [appended.index(with_ends[0]) + 1]  # stored before the MERGE
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


def test_a_crash_after_the_merge_is_collected_again_with_one_full_merge(
    spark: SparkSession, tmp_path: Path
) -> None:
    from spark_llm_batch import _orchestrator_ended

    store, rows = _setup(spark, tmp_path, n=4, per_chunk=2)
    fake = FakeProvider.build()
    calls: list[bool] = []
    real = _orchestrator_ended.collect_batches

    def crashing(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["resumed"])
        outcomes = real(*args, **kwargs)
        if len(calls) == 1:
            raise Crash("after the MERGE commit, before collected")
        return outcomes

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_orchestrator_ended, "collect_batches", crashing)
        with pytest.raises(Crash):
            _run(spark, store, fake, tmp_path)
        assert {r.state for r in store.current_batches(provider="fake")} == {Phase.ENDED}
        summary = _run(spark, store, fake, tmp_path)
    assert calls == [False, True]  # the second run knows the batches were ended before it began
    assert (summary.created, summary.collected) == (0, 2)
    _assert_all_answered(store, rows)


@pytest.mark.slow
def test_crash_before_create_creates_once(spark: SparkSession, tmp_path: Path) -> None:
    store, rows = _setup(spark, tmp_path, n=2, per_chunk=2)
    (staged,) = store.current_batches(provider="fake")
    store.append_batches([staged.to(Phase.UPLOADED, input_ref="file-x").to(Phase.CREATING)])
    fake = FakeProvider.build()
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
