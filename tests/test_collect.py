"""Collection: one row per member, outcomes from the same pass, and the slow path's equivalence.

A scripted provider stands in for the provider's data plane: ``result_refs`` name a script, and
``iter_results`` yields its records (the provider is pickled to executors, script included). Every
test checks the outcomes ``collect_batches`` returns against :func:`batch_outcomes`, which counts
from the stored results (the definition the fast path must match).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from spark_llm_batch import _collect
from spark_llm_batch._collect import batch_outcomes, collect_batches
from spark_llm_batch._store import Store
from spark_llm_batch._store_tables import BatchRecord, Phase
from spark_llm_batch.config import BatchConfig, ProviderSettings, RetryPolicy
from spark_llm_batch.providers.base import (
    BatchState,
    ChunkRef,
    Provider,
    ProviderBatch,
    ResultRecord,
)

RETRY = RetryPolicy()


@dataclass
class ScriptedProvider(Provider):
    """Data plane only: the batch whose ``result_refs`` is ``(name,)`` yields ``scripts[name]``."""

    name: ClassVar[str] = "scripted"
    default_max_requests: ClassVar[int] = 1000
    default_max_bytes: ClassVar[int] = 10**7
    scripts: dict[str, list[ResultRecord]] = field(default_factory=dict)

    def iter_results(self, batch: ProviderBatch) -> Iterator[ResultRecord]:
        for ref in batch.result_refs:
            if ref == "explode":
                raise AssertionError("results of a batch failed as a whole must not be read")
            yield from self.scripts[ref]

    def request_body(self, config: BatchConfig, prompt: str) -> dict[str, Any]:
        raise NotImplementedError

    def request_line(self, custom_id: str, body: dict[str, Any], config: BatchConfig) -> str:
        raise NotImplementedError

    def upload(self, chunk: ChunkRef) -> str | None:
        raise NotImplementedError

    def create(self, chunk: ChunkRef, input_ref: str | None, config: BatchConfig) -> ProviderBatch:
        raise NotImplementedError

    def find(self, chunk: ChunkRef, not_before: float) -> ProviderBatch | None:
        raise NotImplementedError

    def retrieve(self, batch_id: str) -> ProviderBatch:
        raise NotImplementedError

    def cancel(self, batch_id: str) -> ProviderBatch:
        raise NotImplementedError


def _ok(hash_: str, text: str = "answer") -> ResultRecord:
    return ResultRecord(hash_, "succeeded", text=text, finish_reason="stop", input_tokens=3,
                        output_tokens=5, model="m-2024")  # fmt: skip


def _bad(hash_: str, error_class: str = "server_error") -> ResultRecord:
    return ResultRecord(hash_, "failed", error_class=error_class, error_message="it broke")


def _ended(key: str, *, attempt: int = 1, refs: tuple[str, ...] = ()) -> BatchRecord:
    chunk = ChunkRef(key, f"/tmp/{key}.jsonl", 1, 10, "m", attempt)
    staged = BatchRecord.staged(chunk, provider="scripted", endpoint="/v1/chat/completions")
    return staged.to(
        Phase.ENDED,
        batch_id=f"batch_{key}",
        provider_state=BatchState.COMPLETED.value,
        result_refs=refs or (key,),
    )


@pytest.fixture
def store(spark: SparkSession, tmp_path: Path) -> Store:
    return Store.open(spark, str(tmp_path / "store"))


def _members(spark: SparkSession, store: Store, rows: list[tuple[str, str, int]]) -> None:
    frame = spark.createDataFrame(rows, "hash STRING, batch_key STRING, attempt INT")
    frame.write.format("delta").mode("append").save(f"{store.location}/members")


def _results(store: Store) -> dict[str, dict[str, Any]]:
    return {r["hash"]: r.asDict() for r in store.table("results").collect()}


def _collect_and_check(
    store: Store,
    provider: Provider,
    records: list[BatchRecord],
    failed_whole: dict[str, str] | None = None,
    *,
    general: bool = False,
) -> dict[str, tuple[int, int, int]]:
    """Collect; check the outcomes, one row per hash, and which path counted the outcomes."""
    counted_from_table: list[bool] = []

    def spy(store: Store, keys: Any) -> dict[str, tuple[int, int, int]]:
        counted_from_table.append(True)
        return batch_outcomes(store, keys)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_collect, "batch_outcomes", spy)
        outcomes = collect_batches(store, provider, records, retry=RETRY, failed_whole=failed_whole)
    assert bool(counted_from_table) is general
    assert not list(Path(store.staging_uri).glob("_collect-*"))  # the reports are cleaned up
    assert outcomes == batch_outcomes(store, [r.key for r in records])
    hashes = [r["hash"] for r in store.table("results").select("hash").collect()]
    assert len(hashes) == len(set(hashes)), "one results row per hash"
    return outcomes


def test_every_member_gets_one_row_missing_ones_included(spark: SparkSession, store: Store) -> None:
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 1), ("h3", "a", 1), ("h4", "b", 1)])
    provider = ScriptedProvider(
        ProviderSettings(api_key="sk-test-000000"),
        scripts={
            # h3 has no line; "stranger" is no member of a: dropped; b answers with a failure.
            "a": [_ok("h1"), _bad("h2", "invalid_request"), _ok("stranger")],
            "b": [_bad("h4", "rate_limited")],
        },
    )
    outcomes = _collect_and_check(store, provider, [_ended("a"), _ended("b")])
    assert outcomes == {"a": (1, 1, 1), "b": (0, 0, 1)}
    results = _results(store)
    assert set(results) == {"h1", "h2", "h3", "h4"}
    assert results["h1"]["status"] == "succeeded"
    assert results["h1"]["model"] == "m-2024"
    assert results["h1"]["final"] is True
    assert (results["h2"]["error_class"], results["h2"]["final"]) == ("invalid_request", True)
    missing = results["h3"]
    assert (missing["status"], missing["error_class"]) == ("failed", "missing")
    assert missing["error_message"] == "no result line for this request in batch batch_a"
    assert (missing["model"], missing["batch_id"], missing["attempt"]) == ("m", "batch_a", 1)
    assert missing["final"] is False  # missing is retried (3 attempts by default)
    assert (results["h4"]["error_class"], results["h4"]["final"]) == ("rate_limited", False)


def test_a_batch_failed_as_a_whole_is_not_read(spark: SparkSession, store: Store) -> None:
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 1)])
    provider = ScriptedProvider(ProviderSettings(api_key="sk-test-000000"))
    record = _ended("a", refs=("explode",))
    outcomes = _collect_and_check(store, provider, [record], {"a": "batch batch_a failed: bad"})
    assert outcomes == {"a": (0, 2, 0)}
    rows = _results(store).values()
    assert {(r["error_class"], r["error_message"], r["final"]) for r in rows} == {
        ("batch_failed", "batch batch_a failed: bad", True)
    }


def test_repeated_lines_for_one_hash_keep_one_row_a_success_winning(
    spark: SparkSession, store: Store
) -> None:
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 1)])
    provider = ScriptedProvider(
        ProviderSettings(api_key="sk-test-000000"),
        scripts={"a": [_bad("h1"), _ok("h2"), _ok("h1", "late"), _bad("h2")]},
    )
    outcomes = _collect_and_check(store, provider, [_ended("a")], general=True)
    assert outcomes == {"a": (2, 0, 0)}
    results = _results(store)
    assert (results["h1"]["status"], results["h1"]["text"]) == ("succeeded", "late")
    assert results["h2"]["status"] == "succeeded"


def test_a_hash_in_two_collected_batches_keeps_the_later_attempt(
    spark: SparkSession, store: Store
) -> None:
    # Batch a (attempt 1) ended without being collected, its retry b (attempt 2) ended too.
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 1), ("h1", "b", 2)])
    provider = ScriptedProvider(
        ProviderSettings(api_key="sk-test-000000"),
        scripts={"a": [_bad("h1"), _ok("h2")], "b": [_bad("h1", "expired")]},
    )
    records = [_ended("a"), _ended("b", attempt=2)]
    outcomes = _collect_and_check(store, provider, records, general=True)
    # h1's row is b's (attempt 2): it counts for b only, as its attempt-1 member of a has no row.
    assert outcomes == {"a": (1, 0, 0), "b": (0, 0, 1)}
    h1 = _results(store)["h1"]
    assert (h1["attempt"], h1["error_class"], h1["batch_id"]) == (2, "expired", "batch_b")


def _result_rows(store: Store) -> list[tuple[Any, ...]]:
    """Every results row but its ``updated_at``, sorted."""
    return sorted(map(tuple, store.table("results").drop("updated_at").collect()))


def _two_batches_collected(
    spark: SparkSession, store: Store
) -> tuple[ScriptedProvider, list[BatchRecord], dict[str, tuple[int, int, int]]]:
    """Batches a (h1 ok, h2 retryable) and b (h3 final failure), collected once."""
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 1), ("h3", "b", 1)])
    scripts = {"a": [_ok("h1"), _bad("h2")], "b": [_bad("h3", "invalid_request")]}
    provider = ScriptedProvider(ProviderSettings(api_key="sk-test-000000"), scripts=scripts)
    records = [_ended("a"), _ended("b")]
    return provider, records, _collect_and_check(store, provider, records)


def test_recollecting_changes_nothing_and_keeps_final_rows(
    spark: SparkSession, store: Store
) -> None:
    provider, records, first = _two_batches_collected(spark, store)
    before_rows = _result_rows(store)
    # A crash after the MERGE commit: the same batches are collected again.
    again = _collect_and_check(store, provider, records, general=True)
    assert again == first == {"a": (1, 0, 1), "b": (0, 1, 0)}
    assert _result_rows(store) == before_rows
    # A final row is never overwritten, even by a different answer of a newer attempt.
    _members(spark, store, [("h3", "c", 2)])
    provider.scripts["c"] = [_ok("h3")]
    records = [_ended("c", attempt=2)]
    assert _collect_and_check(store, provider, records, general=True) == {"c": (0, 0, 0)}
    h3 = _results(store)["h3"]
    assert (h3["status"], h3["attempt"]) == ("failed", 1)


def test_a_resumed_collection_runs_one_full_merge(spark: SparkSession, store: Store) -> None:
    provider, records, first = _two_batches_collected(spark, store)
    before_rows = _result_rows(store)
    merges: list[bool] = []
    real_merge = Store.merge_results

    def spy(self: Store, source: Any, *, insert_only: bool = False) -> int:
        merges.append(insert_only)
        return real_merge(self, source, insert_only=insert_only)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Store, "merge_results", spy)
        # Not resumed: the insert-only MERGE finds the rows there, then the full one runs.
        collect_batches(store, provider, records, retry=RETRY)
        assert merges == [True, False]
        merges.clear()
        # Resumed (the batches were ended when the run started): one full MERGE.
        again = collect_batches(store, provider, records, retry=RETRY, resumed=True)
        assert merges == [False]
    assert again == first
    assert _result_rows(store) == before_rows


def test_collecting_into_a_store_holding_other_results_merges(
    spark: SparkSession, store: Store
) -> None:
    # results is not empty: the full MERGE path; an open row of an earlier attempt is replaced.
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 1)])
    provider = ScriptedProvider(
        ProviderSettings(api_key="sk-test-000000"),
        scripts={"a": [_bad("h1"), _ok("h2")], "b": [_ok("h1", "second try")]},
    )
    assert _collect_and_check(store, provider, [_ended("a")]) == {"a": (1, 0, 1)}
    _members(spark, store, [("h1", "b", 2)])
    assert _collect_and_check(store, provider, [_ended("b", attempt=2)]) == {"b": (1, 0, 0)}
    h1 = _results(store)["h1"]
    assert (h1["status"], h1["text"], h1["attempt"], h1["final"]) == (
        "succeeded",
        "second try",
        2,
        True,
    )


def test_a_member_at_another_attempt_is_not_counted(spark: SparkSession, store: Store) -> None:
    # As before: a member counts only when its attempt is its result's (the batch's) attempt.
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 2)])
    provider = ScriptedProvider(
        ProviderSettings(api_key="sk-test-000000"), scripts={"a": [_ok("h1"), _ok("h2")]}
    )
    outcomes = _collect_and_check(store, provider, [_ended("a")], general=True)
    assert outcomes == {"a": (1, 0, 0)}
    assert {r["attempt"] for r in _results(store).values()} == {1}


def test_provider_errors_are_raised_and_nothing_is_committed(
    spark: SparkSession, store: Store
) -> None:
    _members(spark, store, [("h1", "a", 1)])
    provider = ScriptedProvider(ProviderSettings(api_key="sk-test-000000"))
    with pytest.raises(Exception, match="must not be read"):
        collect_batches(store, provider, [_ended("a", refs=("explode",))], retry=RETRY)
    assert store.table("results").count() == 0
    staging = Path(store.staging_uri)
    assert not list(staging.glob("_collect-*"))  # the reports' folder is gone


def test_batch_i_runs_in_partition_i(spark: SparkSession) -> None:
    values = [0, 1, 42, -1, 123_456, 2**31 - 1, -(2**31)]
    frame = spark.createDataFrame([(v,) for v in values], "v INT")
    assert [r[0] for r in frame.select(F.hash("v")).collect()] == [
        _collect._spark_int_hash(v) for v in values
    ]
    slots = _collect._slots(5)
    placed = spark.createDataFrame([(s,) for s in slots], "slot INT").repartition(5, "slot")
    where = placed.select("slot", F.spark_partition_id().alias("p")).collect()
    assert {r["slot"]: r["p"] for r in where} == {s: i for i, s in enumerate(slots)}


def test_merge_results_reports_rows_applied(spark: SparkSession, store: Store) -> None:
    schema = ", ".join(f"`{n}` {t}" for n, t in _collect_result_columns())
    row = ("h1", "failed", None, None, "server_error", "x", None, None, "m", "b", 1, False, None, 1)
    source = spark.createDataFrame([row], schema).withColumn(
        "updated_at", F.lit(time.time()).cast("timestamp")
    )
    assert store.merge_results(source, insert_only=True) == 1  # inserted
    assert store.merge_results(source) == 1  # open row, same attempt: updated
    newer = source.withColumn("attempt", F.lit(2)).withColumn("error_message", F.lit("y"))
    assert store.merge_results(newer, insert_only=True) == 0  # there already: left alone
    assert store.table("results").first()["error_message"] == "x"  # type: ignore[index]
    final = newer.withColumn("final", F.lit(True))
    assert store.merge_results(final) == 1
    assert store.merge_results(newer) == 0  # a final row stays
    older = source.withColumn("final", F.lit(True))
    assert store.merge_results(older) == 0
    assert store.table("results").count() == 1


def _collect_result_columns() -> list[tuple[str, str]]:
    from spark_llm_batch._store_tables import RESULT_COLUMNS

    return list(RESULT_COLUMNS)
