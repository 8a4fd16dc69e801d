"""Collection: one row per member, whichever transport brings the result lines into Spark.

A scripted provider stands in for the provider's data plane: ``result_refs`` name a script, and
``iter_results`` yields its records (the provider is pickled to executors, script included). Every
test runs with both transports and checks the outcomes ``collect_batches`` returns against
:func:`batch_outcomes` (counted from the stored results) and one results row per hash.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from spark_llm_batch._collect import Outcome, batch_outcomes, collect_batches
from spark_llm_batch._store import Store
from spark_llm_batch._store_tables import BatchRecord, Phase
from spark_llm_batch._transport import DriverTransport, ExecutorTransport, Transport
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

    def upload(self, chunk: ChunkRef, content: BinaryIO) -> str | None:
        raise NotImplementedError

    def create(self, chunk: ChunkRef, input_ref: str | None, config: BatchConfig) -> ProviderBatch:
        raise NotImplementedError

    def endpoint(self, config: Any) -> str:
        return "/v1/chat/completions"

    def find(
        self, chunk: ChunkRef, not_before: float, owned: frozenset[str] = frozenset()
    ) -> ProviderBatch | None:
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
    chunk = ChunkRef(key, 1, 10, "m", attempt)
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


@pytest.fixture(params=["executors", "driver"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _transport(kind: str, store: Store, provider: Provider) -> Transport:
    cls = ExecutorTransport if kind == "executors" else DriverTransport
    return cls(store, provider)


def _members(spark: SparkSession, store: Store, rows: list[tuple[str, str, int]]) -> None:
    frame = spark.createDataFrame(rows, "hash STRING, batch_key STRING, attempt INT")
    frame = frame.select(
        "batch_key", "hash", "attempt", F.lit(10).cast("long").alias("nbytes"),
        F.concat(F.lit('{"custom_id":"'), F.col("hash"), F.lit('"}')).alias("line"),
    )  # fmt: skip
    store.append_chunks(frame)


def _results(store: Store) -> dict[str, dict[str, Any]]:
    return {r["hash"]: r.asDict() for r in store.table("results").collect()}


def _collect_and_check(
    store: Store,
    provider: Provider,
    records: list[BatchRecord],
    failed_whole: dict[str, str] | None = None,
    *,
    kind: str,
) -> dict[str, tuple[int, ...]]:
    """Collect; check the outcomes and one row per hash; nothing left in ``downloads``."""
    transport = _transport(kind, store, provider)
    outcomes = collect_batches(store, transport, records, retry=RETRY, failed_whole=failed_whole)
    assert outcomes == batch_outcomes(store, records)
    hashes = [r["hash"] for r in store.table("results").select("hash").collect()]
    assert len(hashes) == len(set(hashes)), "one results row per hash"
    assert store.table("downloads").count() == 0  # the driver's downloads are dropped
    return {key: tuple(o)[:4] for key, o in outcomes.items()}  # the counts (tokens: below)


def test_every_member_gets_one_row_missing_ones_included(
    spark: SparkSession, store: Store, transport_kind: str
) -> None:
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 1), ("h3", "a", 1), ("h4", "b", 1)])
    provider = ScriptedProvider(
        ProviderSettings(api_key="sk-test-000000"),
        scripts={
            # h3 has no line; "stranger" is no member of a: dropped; b answers with a failure.
            "a": [_ok("h1"), _bad("h2", "invalid_request"), _ok("stranger")],
            "b": [_bad("h4", "rate_limited")],
        },
    )
    records = [_ended("a"), _ended("b")]
    outcomes = _collect_and_check(store, provider, records, kind=transport_kind)
    assert outcomes == {"a": (1, 1, 1, 0), "b": (0, 0, 1, 0)}
    # The billed tokens: the usage of each batch's answers (only h1's; the stranger is dropped).
    tokens = batch_outcomes(store, records)
    assert (tokens["a"].input_tokens, tokens["a"].output_tokens) == (3, 5)
    assert (tokens["b"].input_tokens, tokens["b"].output_tokens) == (0, 0)
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


def test_a_batch_failed_as_a_whole_is_not_read(
    spark: SparkSession, store: Store, transport_kind: str
) -> None:
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 1)])
    provider = ScriptedProvider(ProviderSettings(api_key="sk-test-000000"))
    record = _ended("a", refs=("explode",))
    outcomes = _collect_and_check(
        store, provider, [record], {"a": "batch batch_a failed: bad"}, kind=transport_kind
    )
    assert outcomes == {"a": (0, 2, 0, 0)}
    rows = _results(store).values()
    assert {(r["error_class"], r["error_message"], r["final"]) for r in rows} == {
        ("batch_failed", "batch batch_a failed: bad", True)
    }


def test_repeated_lines_for_one_hash_keep_one_row_a_success_winning(
    spark: SparkSession, store: Store, transport_kind: str
) -> None:
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 1)])
    provider = ScriptedProvider(
        ProviderSettings(api_key="sk-test-000000"),
        scripts={"a": [_bad("h1"), _ok("h2"), _ok("h1", "late"), _bad("h2")]},
    )
    outcomes = _collect_and_check(store, provider, [_ended("a")], kind=transport_kind)
    assert outcomes == {"a": (2, 0, 0, 0)}
    results = _results(store)
    assert (results["h1"]["status"], results["h1"]["text"]) == ("succeeded", "late")
    assert results["h2"]["status"] == "succeeded"


def test_a_hash_in_two_collected_batches_keeps_the_later_attempt(
    spark: SparkSession, store: Store, transport_kind: str
) -> None:
    # Batch a (attempt 1) ended without being collected, its retry b (attempt 2) ended too.
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 1), ("h1", "b", 2)])
    provider = ScriptedProvider(
        ProviderSettings(api_key="sk-test-000000"),
        scripts={"a": [_bad("h1"), _ok("h2")], "b": [_bad("h1", "expired")]},
    )
    records = [_ended("a"), _ended("b", attempt=2)]
    outcomes = _collect_and_check(store, provider, records, kind=transport_kind)
    # h1's row is b's (attempt 2): it counts for b only, as its attempt-1 member of a has no row.
    assert outcomes == {"a": (1, 0, 0, 0), "b": (0, 0, 1, 0)}
    h1 = _results(store)["h1"]
    assert (h1["attempt"], h1["error_class"], h1["batch_id"]) == (2, "expired", "batch_b")


def _result_rows(store: Store) -> list[tuple[Any, ...]]:
    """Every results row but its ``updated_at``, sorted."""
    return sorted(map(tuple, store.table("results").drop("updated_at").collect()))


def _two_batches_collected(
    spark: SparkSession, store: Store, kind: str
) -> tuple[ScriptedProvider, list[BatchRecord], dict[str, tuple[int, ...]]]:
    """Batches a (h1 ok, h2 retryable) and b (h3 final failure), collected once."""
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 1), ("h3", "b", 1)])
    scripts = {"a": [_ok("h1"), _bad("h2")], "b": [_bad("h3", "invalid_request")]}
    provider = ScriptedProvider(ProviderSettings(api_key="sk-test-000000"), scripts=scripts)
    records = [_ended("a"), _ended("b")]
    return provider, records, _collect_and_check(store, provider, records, kind=kind)


def test_recollecting_changes_nothing_and_keeps_final_rows(
    spark: SparkSession, store: Store, transport_kind: str
) -> None:
    provider, records, first = _two_batches_collected(spark, store, transport_kind)
    before_rows = _result_rows(store)
    # A crash after the MERGE commit: the same batches are collected again.
    again = _collect_and_check(store, provider, records, kind=transport_kind)
    assert again == first == {"a": (1, 0, 1, 0), "b": (0, 1, 0, 0)}
    assert _result_rows(store) == before_rows
    # A success is never overwritten, even by a different answer of a newer attempt ...
    _members(spark, store, [("h1", "c", 2), ("h3", "c", 2)])
    provider.scripts["c"] = [_bad("h1", "invalid_request"), _ok("h3", "asked again")]
    records = [_ended("c", attempt=2)]
    assert _collect_and_check(store, provider, records, kind=transport_kind) == {"c": (1, 0, 0, 0)}
    h1, h3 = _results(store)["h1"], _results(store)["h3"]
    assert (h1["status"], h1["attempt"]) == ("succeeded", 1)
    # ... while a final failure gives way to a later attempt (one retry_failed sent again).
    assert (h3["status"], h3["text"], h3["attempt"]) == ("succeeded", "asked again", 2)


def test_first_attempts_merge_insert_only_and_retries_merge_in_full(
    spark: SparkSession, store: Store, transport_kind: str
) -> None:
    merges: list[bool] = []
    real_merge = Store.merge_results

    def spy(self: Store, source: Any, *, insert_only: bool = False) -> int:
        merges.append(insert_only)
        return real_merge(self, source, insert_only=insert_only)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Store, "merge_results", spy)
        provider, records, first = _two_batches_collected(spark, store, transport_kind)
        before_rows = _result_rows(store)
        # Collected again after a crash: the insert-only MERGE leaves the rows it finds alone.
        again = _collect_and_check(store, provider, records, kind=transport_kind)
        _members(spark, store, [("h2", "c", 2)])
        provider.scripts["c"] = [_ok("h2")]
        retried = _collect_and_check(store, provider, [_ended("c", attempt=2)], kind=transport_kind)
    assert merges == [True, True, False]
    assert again == first
    assert retried == {"c": (1, 0, 0, 0)}
    assert [r for r in _result_rows(store) if r[0] != "h2"] == [
        r for r in before_rows if r[0] != "h2"
    ]


def test_collecting_into_a_store_holding_other_results_merges(
    spark: SparkSession, store: Store, transport_kind: str
) -> None:
    # results is not empty: the full MERGE path; an open row of an earlier attempt is replaced.
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 1)])
    provider = ScriptedProvider(
        ProviderSettings(api_key="sk-test-000000"),
        scripts={"a": [_bad("h1"), _ok("h2")], "b": [_ok("h1", "second try")]},
    )
    assert _collect_and_check(store, provider, [_ended("a")], kind=transport_kind) == {
        "a": (1, 0, 1, 0)
    }
    _members(spark, store, [("h1", "b", 2)])
    assert _collect_and_check(store, provider, [_ended("b", attempt=2)], kind=transport_kind) == {
        "b": (1, 0, 0, 0)
    }
    h1 = _results(store)["h1"]
    assert (h1["status"], h1["text"], h1["attempt"], h1["final"]) == (
        "succeeded",
        "second try",
        2,
        True,
    )


def test_a_batch_never_created_is_counted_through_its_members(
    spark: SparkSession, store: Store, transport_kind: str
) -> None:
    # Batch a failed before the provider gave it an id: its rows carry none.
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 1), ("h3", "b", 1)])
    provider = ScriptedProvider(
        ProviderSettings(api_key="sk-test-000000"), scripts={"b": [_ok("h3")]}
    )
    never = replace(_ended("a", refs=("explode",)), batch_id=None)
    outcomes = _collect_and_check(
        store, provider, [never, _ended("b")], {"a": "batch (not created) failed: no"},
        kind=transport_kind,
    )  # fmt: skip
    assert outcomes == {"a": (0, 2, 0, 0), "b": (1, 0, 0, 0)}
    results = _results(store)
    assert {results[h]["batch_id"] for h in ("h1", "h2")} == {None}
    assert results["h3"]["batch_id"] == "batch_b"


def test_a_hash_in_two_batches_of_one_attempt_keeps_one_row(
    spark: SparkSession, store: Store, transport_kind: str
) -> None:
    # Staging never puts a hash in two batches of one attempt; if it happened, the results would
    # still hold one row per hash (the batches are merged one at a time).
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 1), ("h1", "b", 1)])
    provider = ScriptedProvider(
        ProviderSettings(api_key="sk-test-000000"),
        scripts={"a": [_ok("h1"), _ok("h2")], "b": [_ok("h1", "other")]},
    )
    outcomes = _collect_and_check(store, provider, [_ended("a"), _ended("b")], kind=transport_kind)
    assert outcomes == {"a": (2, 0, 0, 0), "b": (0, 0, 0, 0)}
    assert _results(store)["h1"]["batch_id"] == "batch_a"


def test_provider_errors_are_raised_and_nothing_is_committed(
    spark: SparkSession, store: Store, transport_kind: str
) -> None:
    _members(spark, store, [("h1", "a", 1)])
    provider = ScriptedProvider(ProviderSettings(api_key="sk-test-000000"))
    with pytest.raises(Exception, match="must not be read"):
        collect_batches(
            store,
            _transport(transport_kind, store, provider),
            [_ended("a", refs=("explode",))],
            retry=RETRY,
        )
    assert store.table("results").count() == 0
    assert store.table("downloads").count() == 0


def test_auth_failures_stay_open_and_count_apart(
    spark: SparkSession, store: Store, transport_kind: str
) -> None:
    _members(spark, store, [("h1", "a", 1), ("h2", "a", 1), ("h3", "a", 1)])
    provider = ScriptedProvider(
        ProviderSettings(api_key="sk-test-000000"),
        scripts={"a": [_ok("h1"), _bad("h2", "auth"), _bad("h3")]},
    )
    outcomes = _collect_and_check(store, provider, [_ended("a")], kind=transport_kind)
    assert outcomes == {"a": (1, 0, 1, 1)}
    assert Outcome(*outcomes["a"]).auth == 1  # the fourth count
    h2 = _results(store)["h2"]
    assert (h2["error_class"], h2["final"]) == ("auth", False)  # not an answer: sent again later


def test_merge_results_reports_rows_applied(
    spark: SparkSession, store: Store, transport_kind: str
) -> None:
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
