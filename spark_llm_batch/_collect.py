"""Collection: parse ended batches' results on executors and merge them into the store.

One pass over the results, no shuffle of result rows, one Spark statement: the MERGE
(:meth:`Store.merge_results`) whose source reads the provider's files as it writes.

The members of the collected batches (narrow rows: hash, batch key, attempt) are grouped by batch,
batch ``i`` in partition ``i`` (:func:`_slots`), and one Python task per batch (``applyInArrow``,
iterator form) takes its batch's members and streams the provider's result files
(``provider.iter_result_rows``, never a whole file in memory), yielding Arrow batches of at most
:data:`_ROWS_PER_BATCH` rows: one row per result line of a member (lines for other hashes are
dropped), then a failed row of class ``missing`` for every member without a line (``batch_failed``
with the provider's message for a batch failed as a whole, whose results are not read at all).
``final`` is decided there from the retry policy (:func:`~spark_llm_batch._results.should_retry`).

The fast path relies on one row per member, which the tasks check as they go (they stop the
MERGE before its commit otherwise, see :func:`_batch_rows`): no hash in two collected batches
(the tasks receive the number of repeated ``xxhash64`` digests among all the members: equal
hashes have equal digests, so none proves it), none twice in one batch, each member at its
batch's attempt, at most one result line per member. Then no grouping by hash is needed, first
attempts (which have no results row yet) go in with an insert-only MERGE (one pass, no copy of
the source), and each task reports its batch's counts (rows; succeeded, failed for good, to
retry) in a small file of the store's staging area, so the outcomes need no further job: when
the MERGE applied every row (it says how many it inserted and updated), those are the counts
:func:`batch_outcomes` would make.

Whenever a shortcut does not hold, collection takes the general path, the earlier behaviour:
rows are reduced to one per hash (a success wins, then the later attempt), and the outcomes are
counted from ``results`` joined with the members (:func:`batch_outcomes`), as they are too when
the MERGE did not apply every row (a row already final, or newer, in ``results``: re-collecting
after a crash). No result row reaches the driver.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spark_llm_batch._results import should_retry
from spark_llm_batch._store_tables import FORMAT_VERSION, RESULT_COLUMNS, BatchRecord
from spark_llm_batch.config import RetryPolicy
from spark_llm_batch.providers.base import BatchState, Provider, ProviderBatch

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

    from spark_llm_batch._store import Store

__all__ = ["ROWS_SCHEMA", "Outcomes", "batch_outcomes", "collect_batches"]

log = logging.getLogger("spark_llm_batch")

Outcomes = dict[str, tuple[int, int, int]]
"""Batch key -> (succeeded, failed for good, to retry) among its members' results."""

_ROWS_PER_BATCH = 4096

ROWS_SCHEMA = ", ".join(f"`{name}` {kind}" for name, kind in RESULT_COLUMNS[:12])
"""Rows yielded by the executor-side function: the results-table columns up to ``final``."""

_SLOW_PATH = "SPARK_LLM_BATCH_NOT_ONE_ROW_PER_MEMBER"
"""Marks the error that stops a fast-path MERGE before its commit (see :func:`_batch_rows`)."""


@dataclass(frozen=True)
class _Spec:
    """What a task needs to read one batch (small; pickled with the closure)."""

    key: str
    batch_id: str | None
    attempt: int
    model: str
    batch: ProviderBatch | None  # None: failed as a whole, nothing to read
    fill_class: str  # the class and message of a member without a result line
    fill_message: str


@dataclass(frozen=True)
class _Job:
    """What every task of one collection gets (pickled once, with the function)."""

    provider: Provider
    specs: dict[str, _Spec]
    retry: RetryPolicy
    reports: str | None  # fast path: where each batch reports its counts; None: general path


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


# ---- executors ------------------------------------------------------------------------------------


def _rows_function(job: _Job) -> Any:
    """The ``applyInArrow`` function: a batch's members in, its result rows out (streamed)."""
    import typing

    import pyarrow as pa

    def batch_rows(key: Any, members: Any) -> Any:
        return _batch_rows(job, job.specs[key[1].as_py()], members)  # key: (slot, batch_key)

    # Real (not string) annotations: PySpark picks the streaming iterator form from them.
    batch_rows.__annotations__ = {
        "key": tuple,
        "members": typing.Iterator[pa.RecordBatch],
        "return": typing.Iterator[pa.RecordBatch],
    }
    return batch_rows


def _batch_rows(
    job: _Job, spec: _Spec, members: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Rows of one batch: a row per member's result line (in file order), then the missing ones.

    On the fast path (``job.reports`` set) the rows go straight into the MERGE, so where one row
    per member might not hold this raises, failing the MERGE before its commit: a hash in another
    collected batch, twice among the members or in the result lines, a member at another attempt.
    Its last act is the batch's report (:func:`_report`).
    """
    strict = job.reports is not None
    hashes: set[str | None] = set()
    count = 0
    for part in members:
        column = part.column("hash").to_pylist()
        hashes.update(column)
        count += len(column)
        if not strict or not part.num_rows:
            continue
        if set(part.column("attempt").to_pylist()) != {spec.attempt}:
            raise ValueError(f"{_SLOW_PATH}: a member of batch {spec.key} at another attempt")
        if part.column("repeated")[0].as_py():  # the same on every row
            raise ValueError(f"{_SLOW_PATH}: a hash in two of the batches collected")
    if strict and count != len(hashes):
        raise ValueError(f"{_SLOW_PATH}: a member twice in batch {spec.key}")
    pending = set(hashes)
    rows = _Rows(job, spec)
    if spec.batch is not None:
        with _gc_paused():
            for row in job.provider.iter_result_rows(spec.batch):
                if row[0] in pending:
                    pending.remove(row[0])
                elif row[0] not in hashes:
                    continue  # not a member of this batch
                elif strict:
                    raise ValueError(f"{_SLOW_PATH}: two result lines for {row[0]} in {spec.key}")
                if rows.add(row):
                    yield rows.flush()
    fill = ("failed", None, None, spec.fill_class, spec.fill_message, None, None, None)
    for hash_ in pending:
        if rows.add((hash_, *fill)):
            yield rows.flush()
    if rows.pending:
        yield rows.flush()
    if job.reports is not None:
        _report(job.reports, spec.key, rows.counts)


class _Rows:
    """Rows of one batch on their way out: ``final`` added, counted, flushed as Arrow batches."""

    def __init__(self, job: _Job, spec: _Spec) -> None:
        self.retry, self.spec = job.retry, spec
        self.pending: list[tuple[Any, ...]] = []
        self.counts = [0, 0, 0, 0]  # rows, succeeded, failed for good, to retry

    def add(self, row: tuple[Any, ...]) -> bool:
        """Add a :data:`~spark_llm_batch.providers.base.ResultRow`; True when a flush is due."""
        counts = self.counts
        counts[0] += 1
        if row[1] == "succeeded":
            counts[1] += 1
            self.pending.append((*row, True))
        else:
            final = not should_retry(row[4], self.spec.attempt, self.retry)
            counts[2 if final else 3] += 1
            self.pending.append((*row, final))
        return len(self.pending) >= _ROWS_PER_BATCH

    def flush(self) -> pa.RecordBatch:
        """The pending rows as one Arrow batch of :data:`ROWS_SCHEMA` (a row without a model
        gets the batch's)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        rows, self.pending = self.pending, []
        n, spec = len(rows), self.spec
        cols = list(zip(*rows, strict=True))
        text, tokens = pa.string(), pa.int64()
        arrays = [pa.array(cols[i], text) for i in range(6)]
        arrays += [pa.array(cols[6], tokens), pa.array(cols[7], tokens)]
        arrays.append(pc.fill_null(pa.array(cols[8], text), spec.model))
        arrays.append(pa.array([spec.batch_id] * n, text))
        arrays.append(pa.array([spec.attempt] * n, pa.int32()))
        arrays.append(pa.array(cols[9], pa.bool_()))
        return pa.RecordBatch.from_arrays(arrays, schema=_arrow_schema())


def _arrow_schema() -> pa.Schema:
    import pyarrow as pa

    text, tokens = pa.string(), pa.int64()
    types = [text] * 6 + [tokens, tokens, text, text, pa.int32(), pa.bool_()]
    return pa.schema([pa.field(n, t) for (n, _), t in zip(RESULT_COLUMNS, types, strict=False)])


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while parsing: a line's JSON objects die young and hold no cycles, yet the
    collector's passes over them cost about a third of the parse time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _report(uri: str, key: str, counts: list[int]) -> None:
    """Write batch ``key``'s counts to ``<uri>/<key>.json`` (a retried task rewrites the same)."""
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(uri)
    fs.create_dir(base, recursive=True)
    final = f"{base}/{key}.json"
    # Local files are written aside and renamed, so a reader never sees half a file; object
    # stores publish an object only when its upload completes.
    local = isinstance(fs, pafs.LocalFileSystem)
    temp = f"{final}.{uuid.uuid4().hex}.tmp" if local else final
    with fs.open_output_stream(temp) as out:
        out.write(json.dumps(counts).encode())
    if local:
        fs.move(temp, final)


# ---- driver ---------------------------------------------------------------------------------------


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
