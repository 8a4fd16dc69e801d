"""The Delta store: migrations, event-log semantics, write-ahead order, progress, fail-closed reads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession

from spark_llm_batch import _columns as C
from spark_llm_batch._store import Store
from spark_llm_batch._store_tables import BATCH_COLUMNS, MIGRATIONS, BatchRecord, Phase
from spark_llm_batch.errors import ConfigError, StoreError
from spark_llm_batch.providers.base import ChunkRef
from tests.orchestrator_fakes import Staged, prompts, stage_rows

ENDPOINT = "/v1/chat/completions"


@pytest.fixture
def store(spark: SparkSession, tmp_path: Path) -> Store:
    return Store.open(spark, str(tmp_path / "store"))


def _record(key: str, requests: int = 3) -> BatchRecord:
    chunk = ChunkRef(key, requests, 10 * requests, "m")
    return BatchRecord.staged(chunk, provider="fake", endpoint=ENDPOINT)


def _record_migration(spark: SparkSession, store: Store, name: str, ordinal: int) -> None:
    """Add a row to ``_migrations`` as another version of the library would have."""
    rows = spark.createDataFrame(
        [(name, ordinal, None)], "name STRING, ordinal INT, applied_at TIMESTAMP"
    )
    rows.write.format("delta").mode("append").save(f"{store.location}/_migrations")


def test_migrations_are_recorded_once_and_reopening_is_idempotent(
    spark: SparkSession, store: Store
) -> None:
    names = [m.name for m in MIGRATIONS]
    assert store.applied_migrations() == names
    again = Store.open(spark, store.location)
    assert again.applied_migrations() == names
    assert store.table("_migrations").count() == len(names)


def test_a_migration_unknown_to_this_version_fails_closed(
    spark: SparkSession, store: Store
) -> None:
    _record_migration(spark, store, "9999_from_the_future", 99)
    with pytest.raises(StoreError, match=r"_migrations\.name"):
        Store.open(spark, store.location)


def test_an_unwritable_location_is_a_config_error(spark: SparkSession, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="store"):
        Store.open(spark, str(blocker / "store"))


def test_current_state_is_the_highest_seq_and_one_append_holds_many_batches(store: Store) -> None:
    a, b = _record("a"), _record("b")
    store.append_batches([a, b])
    versions_before = store.spark.sql(f"DESCRIBE HISTORY {store.table_ref('batches')}").count()
    uploaded = a.to(Phase.UPLOADED, input_ref="file-a")
    store.append_batches([uploaded, uploaded.to(Phase.CREATING), b.to(Phase.ABANDONED, error="x")])
    versions_after = store.spark.sql(f"DESCRIBE HISTORY {store.table_ref('batches')}").count()
    assert versions_after == versions_before + 1  # three transitions, one Delta commit
    (current,) = store.current_batches(provider="fake")
    assert (current.key, current.state, current.seq, current.input_ref) == (
        "a",
        Phase.CREATING,
        2,
        "file-a",
    )
    everything = {r.key: r.state for r in store.current_batches(include_terminal=True)}
    assert everything == {"a": Phase.CREATING, "b": Phase.ABANDONED}
    assert store.table("batches").count() == 5  # append-only: history kept


def _chunk_keys(store: Store) -> set[str]:
    return {r[0] for r in store.table("chunks").select("batch_key").distinct().collect()}


def test_a_batch_record_names_its_lines_by_its_key(store: Store) -> None:
    record = _record("a")
    assert record.uri == "a"
    assert record.chunk == ChunkRef("a", 3, 30, "m", 1)
    # A live batch staged as a chunk file by an earlier development version: refuse to guess.
    row = dict(zip([name for name, _ in BATCH_COLUMNS], record.to_row(), strict=True))
    with pytest.raises(StoreError, match=r"batches\.uri"):
        BatchRecord.from_row({**row, "uri": "/staging/a.jsonl", "updated_at": 0.0})
    ended = BatchRecord.from_row(
        {**row, "state": "collected", "uri": "/x/a.jsonl", "updated_at": 0}
    )
    assert ended.state is Phase.COLLECTED


def test_chunks_hold_members_and_lines_and_copy_under_a_new_key(
    spark: SparkSession, store: Store
) -> None:
    rows = prompts(5)
    staged = stage_rows(spark, rows, per_chunk=3, sink=store)
    first, second = staged.chunks
    sizes = store.chunk_sizes([first.key, second.key, "absent"])
    assert sizes == {first.key: (3, first.nbytes), second.key: (2, second.nbytes)}
    lines = {r["hash"]: r.asDict() for r in store.chunk_lines([first.key]).collect()}
    assert set(lines) == {h for h, _, _ in rows[:3]}
    for hash_, line, _ in rows[:3]:
        assert lines[hash_]["line"] == line
        assert lines[hash_]["nbytes"] == len(line.encode()) + 1
        assert lines[hash_]["attempt"] == 1
        assert lines[hash_]["staged_at"] is not None
    members = {tuple(r) for r in store.members_of([second.key]).collect()}
    assert members == {(h, second.key, 1) for h, _, _ in rows[3:]}
    store.copy_chunk(second.key, "copy")
    assert store.chunk_sizes(["copy"]) == {"copy": (2, second.nbytes)}
    copied = {r["hash"]: r["line"] for r in store.chunk_lines(["copy"]).collect()}
    assert copied == {h: line for h, line, _ in rows[3:]}


def test_sweep_drops_the_lines_of_ended_batches_and_of_day_old_orphans(
    spark: SparkSession, store: Store
) -> None:
    staged = stage_rows(spark, prompts(4), per_chunk=1, sink=store)
    live, collected, abandoned, orphan = (c.key for c in staged.chunks)
    records = store.record_staged(Staged(staged.chunks[:3]), provider="fake", endpoint=ENDPOINT)
    by_key = {r.key: r for r in records}
    store.append_batches(
        [
            by_key[collected].to(Phase.COLLECTED),
            by_key[abandoned].to(Phase.ABANDONED, error="re-queued"),
        ]
    )
    # ``orphan``: rows no batch names (a crash between packing's write and the batch commit).
    assert store.sweep_chunks() == 2
    assert _chunk_keys(store) == {live, orphan}  # the orphan may belong to a run staging now
    assert store.sweep_chunks(older_than=0) == 1
    assert _chunk_keys(store) == {live}
    assert store.sweep_chunks(older_than=0) == 0


def test_sweep_drops_the_keys_it_is_told_are_done_and_still_finds_the_others(
    spark: SparkSession, store: Store
) -> None:
    staged = stage_rows(spark, prompts(3), per_chunk=1, sink=store)
    live, collected, abandoned = (c.key for c in staged.chunks)
    records = store.record_staged(Staged(staged.chunks), provider="fake", endpoint=ENDPOINT)
    by_key = {r.key: r for r in records}
    store.append_batches(
        [by_key[collected].to(Phase.COLLECTED), by_key[abandoned].to(Phase.ABANDONED, error="x")]
    )
    # ``collected`` is named (dropped unread); ``abandoned`` is found in the partitions read.
    assert store.sweep_chunks([collected]) == 2
    assert _chunk_keys(store) == {live}


def test_two_rows_sharing_the_highest_seq_fail_closed(store: Store) -> None:
    a = _record("a")
    store.append_batches([a, a.to(Phase.UPLOADED), a.to(Phase.CREATING)])  # both seq 1
    with pytest.raises(StoreError, match=r"batches\.seq"):
        store.current_batches()


def test_an_unknown_state_or_newer_format_fails_closed(store: Store) -> None:
    row = list(_record("z").to_row())
    row[2] = "exploded"
    frame = store.spark.createDataFrame([tuple(row)], store.table("batches").schema)
    frame.write.format("delta").mode("append").save(f"{store.location}/batches")
    with pytest.raises(StoreError, match=r"batches\.state"):
        store.current_batches()
    with pytest.raises(StoreError, match=r"batches\.format_version"):
        BatchRecord.from_row({"key": "k", "state": "staged", "format_version": 99})


def test_record_staged_writes_chunks_before_batches_and_feeds_the_anti_join(
    spark: SparkSession, store: Store
) -> None:
    rows = prompts(5)
    staged = stage_rows(spark, rows, per_chunk=2, sink=store)
    records = store.record_staged(staged, provider="fake", endpoint=ENDPOINT)
    assert len(records) == 3
    # Write-ahead: the chunks' commit (members and lines) precedes the batch rows that put them
    # in flight.
    members_time = (
        spark.sql(f"DESCRIBE HISTORY {store.table_ref('chunks')}").agg({"timestamp": "max"}).first()
    )
    batches_time = (
        spark.sql(f"DESCRIBE HISTORY {store.table_ref('batches')}")
        .agg({"timestamp": "max"})
        .first()
    )
    assert members_time is not None
    assert batches_time is not None
    assert members_time[0] <= batches_time[0]
    inflight = {r[C.HASH] for r in store.inflight_hashes().collect()}
    assert inflight == {h for h, _, _ in rows}
    # Collected batches no longer hold their members in flight.
    store.append_batches([r.to(Phase.COLLECTED) for r in records])
    assert store.inflight_hashes().count() == 0
    progress = store.progress(provider="fake")
    assert progress.batches["collected"] == 3
    assert (progress.requests_done, progress.requests_total) == (5, 5)


def _results(store: Store, rows: list[tuple[str, str, str | None, int, bool]]) -> None:
    """Append ``(hash, status, error_class, attempt, final)`` rows to ``results``."""
    from pyspark.sql import functions as F

    frame = store.spark.createDataFrame(
        rows, "hash STRING, status STRING, error_class STRING, attempt INT, final BOOLEAN"
    )
    columns = [F.col(n) if n in frame.columns else F.lit(None).cast(kind).alias(n)
               for n, kind in store.table("results").dtypes]  # fmt: skip
    frame.select(*columns).write.format("delta").mode("append").save(f"{store.location}/results")


def test_unsent_requests_are_neither_final_nor_in_flight_and_carry_their_next_attempt(
    spark: SparkSession, store: Store
) -> None:
    flying = prompts(2)
    records = store.record_staged(
        stage_rows(spark, flying, per_chunk=2, sink=store), provider="fake", endpoint=ENDPOINT
    )
    _results(store, [("ok", "succeeded", None, 1, True), ("bad", "failed", "invalid_request", 2, True),
                     ("open", "failed", "server_error", 3, False)])  # fmt: skip
    asked = [("ok",), ("bad",), ("open",), ("new",), *[(h,) for h, _, _ in flying]]
    requests = spark.createDataFrame(asked, f"`{C.HASH}` STRING")

    def unsent(again: frozenset[str] = frozenset()) -> dict[str, int]:
        return {r[C.HASH]: r[C.ATTEMPT] for r in store.unsent(requests, again).collect()}

    assert unsent() == {"open": 4, "new": 1}
    assert "batch_key#" in _optimized(store.unsent(requests))  # the chunks table
    # A final failure the user asks to send again goes at its next attempt.
    assert unsent(frozenset({"invalid_request"})) == {"bad": 3, "open": 4, "new": 1}
    # Once their batch is collected, the in-flight requests are sent again (no result: attempt 1).
    store.append_batches([r.to(Phase.COLLECTED) for r in records])
    assert unsent() == {"open": 4, "new": 1, **{h: 1 for h, _, _ in flying}}
    # Nothing in flight: the join with the in-flight members is planned away, no chunk is read.
    assert "batch_key#" not in _optimized(store.unsent(requests))


def _optimized(frame: DataFrame) -> str:
    plan: str = frame._jdf.queryExecution().optimizedPlan().toString()
    return plan


def test_chunks_without_a_batch_row_are_not_in_flight(spark: SparkSession, store: Store) -> None:
    # A crash between the chunks commit and the batches commit leaves orphans: ignored.
    stage_rows(spark, prompts(2), per_chunk=2, sink=store)
    store.copy_chunk("nothing", "nothing-either")
    assert store.inflight_hashes().count() == 0
    assert store.progress().requests_total == 0


def test_a_store_that_applied_a_retired_migration_still_opens(
    spark: SparkSession, store: Store
) -> None:
    _record_migration(spark, store, "0002_create_members", 1)
    _record_migration(spark, store, "0003_create_requests", 2)
    again = Store.open(spark, store.location)
    assert {"0002_create_members", "0003_create_requests"} <= set(again.applied_migrations())
    for retired in ("members", "requests"):  # new stores create neither
        assert not (Path(store.location) / retired).exists()


def test_a_store_from_before_jobs_and_tokens_gains_the_columns_and_keeps_its_rows(
    spark: SparkSession, tmp_path: Path
) -> None:
    from spark_llm_batch._store_tables import BATCH_ADDED_0008

    location = str(tmp_path / "old")
    fresh = Store.open(spark, location)
    old = [m.name for m in MIGRATIONS if m.name != "0008_batch_job_and_tokens"]
    # The store as the previous version left it: batches without the columns, 0008 not applied.
    assert fresh.applied_migrations()[-1] == "0008_batch_job_and_tokens"
    shutil.rmtree(f"{location}/batches")
    shutil.rmtree(f"{location}/_migrations")
    v1 = [c for c in BATCH_COLUMNS if c not in BATCH_ADDED_0008]
    row = dict(zip([n for n, _ in BATCH_COLUMNS], _record("k").to_row(), strict=True))
    spark.createDataFrame(
        [tuple(row[n] for n, _ in v1)], ", ".join(f"`{n}` {t}" for n, t in v1)
    ).write.format("delta").save(f"{location}/batches")
    spark.createDataFrame(
        [(name, i, None) for i, name in enumerate(old)],
        "name STRING, ordinal INT, applied_at TIMESTAMP",
    ).write.format("delta").save(f"{location}/_migrations")
    assert "job" not in spark.read.format("delta").load(f"{location}/batches").columns

    store = Store.open(spark, location)
    assert store.applied_migrations()[-1] == "0008_batch_job_and_tokens"
    assert [n for n, _ in BATCH_ADDED_0008] == store.table("batches").columns[-3:]
    (kept,) = store.current_batches(provider="fake")
    assert (kept.key, kept.job, kept.input_tokens) == ("k", None, 0)  # old rows read as unknown
    again = Store.open(spark, location)  # columns present: nothing added twice
    assert again.table("batches").columns == store.table("batches").columns


def test_a_run_that_loses_the_race_to_add_columns_finds_them_added(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spark_llm_batch._store_tables import BATCH_ADDED_0008

    real = store.table
    reads: list[str] = []

    def stale_first(name: str):  # type: ignore[no-untyped-def]
        reads.append(name)
        frame = real(name)
        # The first read is from before the other run's commit: the columns look missing.
        return frame.drop(*[n for n, _ in BATCH_ADDED_0008]) if len(reads) == 1 else frame

    monkeypatch.setattr(store, "table", stale_first)
    ref = store.table_ref("batches")
    store._add_columns(ref, "batches", BATCH_ADDED_0008)  # ALTER fails: already there; fine
    assert len(reads) >= 2  # it looked again after the refusal
    assert real("batches").columns[-3:] == [n for n, _ in BATCH_ADDED_0008]
    monkeypatch.setattr(store, "table", lambda name: real(name).drop("job"))
    with pytest.raises(Exception, match=r"FIELD_ALREADY_EXISTS"):
        store._add_columns(ref, "batches", BATCH_ADDED_0008)  # still missing after: raised


def test_a_fresh_store_is_created_in_the_shape_its_migrations_give(
    spark: SparkSession, store: Store, tmp_path: Path
) -> None:
    """A fresh store's tables are made at once in their final shape; a store whose
    ``_migrations`` exists but is empty (a crash before the first record) runs every migration
    instead. Both must agree, column by column and in their partitioning."""
    from spark_llm_batch._store_tables import MIGRATION_COLUMNS, TABLES, ddl

    location = str(tmp_path / "migrated")
    spark.createDataFrame([], ddl(MIGRATION_COLUMNS)).write.format("delta").save(
        f"{location}/_migrations"
    )
    migrated = Store.open(spark, location)
    assert (
        migrated.applied_migrations() == store.applied_migrations() == [m.name for m in MIGRATIONS]
    )

    def shape(opened: Store, name: str) -> tuple[list[tuple[str, str]], list[str]]:
        detail = spark.sql(f"DESCRIBE DETAIL {opened.table_ref(name)}").collect()[0]
        fields = [(f.name, f.dataType.simpleString()) for f in opened.table(name).schema]
        return fields, list(detail["partitionColumns"])

    for name in TABLES:
        assert shape(store, name) == shape(migrated, name), name
