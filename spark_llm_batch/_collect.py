"""Collection: parse ended batches' results on executors and merge them into the store.

This module is the driver's side; what the task of one batch does on an executor is in
``_collect_rows``.

One pass over the results, no shuffle of result rows, one Spark statement: the MERGE
(:meth:`Store.merge_results`) whose source reads the provider's files as it writes.

The members of the collected batches (narrow rows: hash, batch key, attempt) are grouped by batch,
batch ``i`` in partition ``i`` (:func:`_slots`), and one Python task per batch streams the
provider's result files into results rows, ``final`` included: a row per result line of a member,
then a failed row for every member without a line (``_collect_rows``).

The fast path relies on one row per member, which the tasks check as they go (they stop the
MERGE before its commit otherwise): no hash in two collected batches (the tasks receive the number
of repeated ``xxhash64`` digests among all the members, see :func:`_members`), none twice in one
batch, each member at its batch's attempt, at most one result line per member. Then no grouping by
hash is needed, first attempts (which have no results row yet) go in with an insert-only MERGE
(one pass, no copy of the source), and each task reports its batch's counts (rows; succeeded,
failed for good, to retry) in a small file of the store's staging area, so the outcomes need no
further job: when the MERGE applied every row (it says how many it inserted and updated), those
are the counts :func:`batch_outcomes` would make.

Whenever a shortcut does not hold, collection takes the general path, the earlier behaviour:
rows are reduced to one per hash (a success wins, then the later attempt), and the outcomes are
counted from ``results`` joined with the members (:func:`batch_outcomes`), as they are too when
the MERGE did not apply every row (a row already final, or newer, in ``results``: re-collecting
after a crash). No result row reaches the driver.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from spark_llm_batch._collect_rows import _SLOW_PATH, ROWS_SCHEMA, _Job, _rows_function, _Spec
from spark_llm_batch._store_tables import FORMAT_VERSION, BatchRecord
from spark_llm_batch.config import RetryPolicy
from spark_llm_batch.providers.base import BatchState, Provider, ProviderBatch

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from spark_llm_batch._store import Store

__all__ = ["Outcomes", "batch_outcomes", "collect_batches"]

log = logging.getLogger("spark_llm_batch")

Outcomes = dict[str, tuple[int, int, int]]
"""Batch key -> (succeeded, failed for good, to retry) among its members' results."""


def provider_batch(record: BatchRecord) -> ProviderBatch:
    """The provider's view of an ended batch, rebuilt from its stored record."""
    return ProviderBatch(
        batch_id=record.batch_id or "",
        state=BatchState(record.provider_state or BatchState.COMPLETED.value),
        total=record.total,
        completed=record.completed,
        failed=record.failed,
        result_refs=record.result_refs,
        key=record.key,
    )


def _spec(record: BatchRecord, failed_whole: dict[str, str]) -> _Spec:
    failed = record.key in failed_whole
    return _Spec(
        key=record.key,
        batch_id=record.batch_id,
        attempt=record.attempt,
        model=record.model,
        batch=None if failed else provider_batch(record),
        fill_class="batch_failed" if failed else "missing",
        fill_message=failed_whole.get(
            record.key, f"no result line for this request in batch {record.batch_id}"
        ),
    )


def collect_batches(
    store: Store,
    provider: Provider,
    records: Sequence[BatchRecord],
    *,
    retry: RetryPolicy,
    failed_whole: dict[str, str] | None = None,
    resumed: bool = False,
) -> Outcomes:
    """Read the results of ended batches on executors and MERGE them into ``results``.

    One commit. First attempts go in with an insert-only MERGE unless ``resumed``; should one
    meet its own row in ``results`` anyway, the full MERGE follows (a second commit; running
    both again changes nothing).

    Args:
        store: the store.
        provider: the provider (pickled to executors).
        records: the ended batches' current records.
        retry: decides which failed rows stay open (``final`` false) for another attempt.
        failed_whole: batch key -> the provider's message, for batches that failed as a whole:
            their members are recorded ``batch_failed`` without reading any result.
        resumed: some of ``records`` were already ended when the run started, so a collection
            that crashed before its ``collected`` commit may have stored their rows: the full
            MERGE is used from the start (one pass instead of two).

    Returns:
        The outcome of every batch of ``records``, as :func:`batch_outcomes` counts it once the
        MERGE is committed.
    """
    keys = [r.key for r in records]
    if not keys:
        return {}
    specs = {r.key: _spec(r, failed_whole or {}) for r in records}
    now = dt.datetime.now(dt.timezone.utc)
    reports = f"{store.staging_uri.rstrip('/')}/_collect-{uuid.uuid4().hex}"
    try:
        job = _Job(provider, specs, retry, reports)
        outcomes = _fast_path(store, records, job, now, insert_only=not resumed)
    finally:
        _remove(reports)
    if outcomes is not None:
        return outcomes
    # The general path: one row per hash by grouping (nothing was committed yet).
    rows = _rows(_members(store, records, check=False), _Job(provider, specs, retry, None), now)
    store.merge_results(_one_per_hash(rows))
    return batch_outcomes(store, keys)


def _fast_path(
    store: Store, records: Sequence[BatchRecord], job: _Job, now: dt.datetime, *, insert_only: bool
) -> Outcomes | None:
    """MERGE one row per member, as read (insert-only for first attempts when ``insert_only``);
    ``None`` when one row per member did not hold (the tasks stopped the MERGE before its
    commit)."""
    keys = [r.key for r in records]
    source = _rows(_members(store, records, check=True), job, now)
    first = insert_only and all(r.attempt == 1 for r in records)
    try:
        applied = store.merge_results(source, insert_only=first)
    except Exception as exc:  # its type depends on Spark's flavour (classic, Connect)
        if _SLOW_PATH not in str(exc):
            raise
        log.info("collection of %d batch(es) takes the general path: %s", len(keys), _SLOW_PATH)
        return None
    counts = _read_reports(job.reports or "", keys)
    total = None if counts is None else sum(c[0] for c in counts.values())
    if first and applied != total:
        # Some hash is in results already (an earlier collection of these batches crashed):
        # the full MERGE updates what the insert-only one left, then count from the table.
        store.merge_results(source)
        return batch_outcomes(store, keys)
    if counts is None or applied != total:
        return batch_outcomes(store, keys)  # some row was not applied (final, or newer, there)
    # Every row applied: results holds exactly these rows for their hashes.
    return {key: (c[1], c[2], c[3]) for key, c in counts.items()}


def _members(store: Store, records: Sequence[BatchRecord], *, check: bool) -> DataFrame:
    """The members of ``records`` (``slot``, ``batch_key``, ``hash``, ``attempt``; with ``check``
    also ``repeated``: how many ``xxhash64`` digests of their hashes repeat, the same on every
    row), batch ``i`` in partition ``i`` (see :func:`_slots`)."""
    from pyspark.sql import functions as F

    keys = [r.key for r in records]
    slots = store.spark.createDataFrame(
        list(zip(keys, _slots(len(keys)), strict=True)), "batch_key STRING, slot INT"
    )
    members = store.members_of(keys).select("batch_key", "hash", "attempt")
    members = members.join(F.broadcast(slots), "batch_key").select(
        "slot", "batch_key", "hash", "attempt"
    )
    members = members.repartition(len(keys), "slot")
    if not check:
        return members
    digests = store.members_of(keys).groupBy(F.xxhash64("hash").alias("digest")).count()
    repeated = digests.where(F.col("count") > 1).agg(F.count(F.lit(1)).alias("repeated"))
    # Joined after the shuffle, so that the members' shuffle and the count run side by side.
    return members.crossJoin(F.broadcast(repeated))


def _rows(members: DataFrame, job: _Job, now: dt.datetime) -> DataFrame:
    """The result rows of every member (results-table columns), read on executors."""
    from pyspark.sql import functions as F

    rows = members.groupBy("slot", "batch_key").applyInArrow(_rows_function(job), ROWS_SCHEMA)
    # A literal, not current_timestamp(): one value for the whole collection.
    return rows.select(
        *rows.columns,
        F.lit(now).alias("updated_at"),
        F.lit(FORMAT_VERSION).alias("format_version"),
    )


def _read_reports(uri: str, keys: Sequence[str]) -> dict[str, tuple[int, ...]] | None:
    """Every batch's report, or ``None`` when one is missing or unreadable."""
    import pyarrow.fs as pafs

    try:
        fs, base = pafs.FileSystem.from_uri(uri)
        counts = {}
        for key in keys:
            with fs.open_input_stream(f"{base}/{key}.json") as stream:
                counts[key] = tuple(int(n) for n in json.loads(stream.read()))
    except (OSError, ValueError, TypeError) as exc:
        log.info("collection reports unreadable, counting from the table: %s", exc)
        return None
    return counts


def _remove(uri: str) -> None:
    """Best effort: delete the reports' folder."""
    import pyarrow.fs as pafs

    try:
        fs, base = pafs.FileSystem.from_uri(uri)
        fs.delete_dir(base)
    except (OSError, ValueError) as exc:
        log.debug("collection reports %s not removed: %s", uri, exc)


def _slots(n: int) -> list[int]:
    """``n`` ints, the i-th of which Spark's ``repartition(n, col)`` sends to partition ``i``.

    Hash partitioning puts row ``v`` in ``pmod(murmur3(v, seed 42), n)``; partitioning by batch
    key would put two batches in one task about as often as not (a task then runs twice as long
    while others sit idle). The same hash decides bucketed tables, so it does not change between
    Spark versions; were it ever to, batches would merely share tasks again.
    """
    first: dict[int, int] = {}
    value = 0
    while len(first) < n:
        first.setdefault(_spark_int_hash(value) % n, value)
        value += 1
    return [first[i] for i in range(n)]


def _spark_int_hash(value: int) -> int:
    """Spark's ``hash(value)`` for an INT (Murmur3 x86 32-bit, seed 42), as a signed int."""

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF

    k = rotl((value & 0xFFFFFFFF) * 0xCC9E2D51 & 0xFFFFFFFF, 15) * 0x1B873593 & 0xFFFFFFFF
    h = (rotl(42 ^ k, 13) * 5 + 0xE6546B64) & 0xFFFFFFFF
    h ^= 4
    h = (h ^ (h >> 16)) * 0x85EBCA6B & 0xFFFFFFFF
    h = (h ^ (h >> 13)) * 0xC2B2AE35 & 0xFFFFFFFF
    h ^= h >> 16
    return h - (1 << 32) if h >= 1 << 31 else h


def _one_per_hash(rows: DataFrame) -> DataFrame:
    """One row per hash (MERGE needs it): a success wins over a failure, a later attempt over an earlier."""
    from pyspark.sql import functions as F

    rank = F.when(F.col("status") == "succeeded", 1).otherwise(0) * 1_000_000 + F.col("attempt")
    payload = [c for c in rows.columns if c != "hash"]
    best = rows.groupBy("hash").agg(F.max_by(F.struct(*payload), rank).alias("r"))
    return best.select("hash", *[F.col(f"r.{c}").alias(c) for c in payload])


def batch_outcomes(store: Store, keys: Sequence[str]) -> Outcomes:
    """Per batch: (succeeded, failed for good, to retry) among its members' stored results."""
    from pyspark.sql import functions as F

    results = store.table("results").select(
        "hash", "status", "final", F.col("attempt").alias("r_attempt")
    )
    joined = store.members_of(keys).join(results, "hash")
    joined = joined.where(F.col("r_attempt") == F.col("attempt"))
    counts = joined.groupBy("batch_key").agg(
        F.sum(F.when(F.col("status") == "succeeded", 1).otherwise(0)).alias("ok"),
        F.sum(F.when((F.col("status") != "succeeded") & F.col("final"), 1).otherwise(0)).alias(
            "bad"
        ),
        F.sum(F.when(~F.col("final"), 1).otherwise(0)).alias("retry"),
    )
    out = {key: (0, 0, 0) for key in keys}
    for row in counts.collect():
        out[row["batch_key"]] = (int(row["ok"]), int(row["bad"]), int(row["retry"]))
    return out
