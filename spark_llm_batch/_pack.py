"""Packing: assign pending requests to provider-sized chunks and stage their lines in the store.

The algorithm runs on executors in two Spark jobs; only per-part statistics reach the driver:

1. Measure (narrow columns only). Each request gets a fine part, ``pmod(xxhash64(hash), 1024)``.
   Requests are de-duplicated on ``(hash, attempt)`` and counted per fine part and attempt: rows,
   bytes (the line's UTF-8 size plus its newline, given by the caller as ``__llm_bytes`` so that
   no line is built here, or measured) and the largest line.
2. Plan (driver, ``_pack_plan``). Per attempt group, ``K`` chunks and ``P`` parts (the fine parts
   folded as ``fine % P``), chosen so that both limits are sure to hold when each part's rows,
   ranked by ``(size desc, hash)`` after the rows of the parts before it, are dealt in snake order
   (rank ``r`` to chunk ``0..K-1``, then ``K-1..0``, ...).
3. Write (one job, the full lines, all in the JVM: no Python worker sees a row). Rows are
   shuffled by part; a window over each part and attempt group, ordered by ``(size desc, hash)``,
   drops duplicates (adjacent in that order) and numbers the rest, and each row's chunk follows
   from its rank and the plan (literal maps per attempt). The dealt rows (``batch_key``, ``hash``,
   ``attempt``, ``nbytes``, ``line``) are shuffled once more, by chunk, and appended to the store's
   ``chunks`` table by the sink in the same job: Spark writes them, wherever the store is, one file
   per chunk. Parts are sized by bytes (``_pack_plan.PART_BYTES``) and each writer task holds about
   one chunk, so no task's memory grows with the input or its partitioning. No row passes through the driver. Every
   line's size is checked against its measured size as it is dealt (a mismatch fails the job), and
   each chunk's count and bytes (read back from the table's narrow columns) against the plan and
   the limits.

Guarantee (the bound and its proof: ``_pack_plan``): both limits always hold, and a group uses at
most one chunk more than its limits require unless its largest line is too large a share of the
byte limit, for any input partitioning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from spark_llm_batch._columns import ATTEMPT, HASH, LINE, NBYTES
from spark_llm_batch._pack_plan import FINE_PARTS, _dealt, _Group, _Plan, _plan
from spark_llm_batch.errors import ConfigError, SparkLLMBatchError
from spark_llm_batch.providers.base import ChunkRef

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = ["StagedChunks", "stage_chunks"]

_SIZE = "__llm_pack_size"
_GROUP = "__llm_pack_attempt"
_FINE = "__llm_pack_fine"
_PART = "__llm_pack_part"
_TWIN = "__llm_pack_twin"


@dataclass
class StagedChunks:
    """The chunks written by :func:`stage_chunks`; their members are already committed.

    Attributes:
        chunks: one :class:`ChunkRef` per chunk, its ``requests`` and ``nbytes`` as written.
    """

    chunks: Sequence[ChunkRef] = field(default_factory=list)


def _rows(pending: DataFrame, attempt_col: str) -> DataFrame:
    """The columns packing needs, each line's size taken from ``NBYTES`` when given (measuring
    then needs no line: the write job builds them once), else measured."""
    from pyspark.sql import functions as F

    attempt = F.lit(1)
    if attempt_col in pending.columns:
        attempt = F.coalesce(F.col(attempt_col).cast("int"), F.lit(1))
    size = (F.octet_length(LINE) + 1).cast("long")
    present = F.col(LINE).isNotNull()
    if NBYTES in pending.columns:
        size, present = F.col(NBYTES).cast("long"), F.col(NBYTES).isNotNull()
    return pending.where(present).select(
        F.col(HASH),
        F.col(LINE),
        size.alias(_SIZE),
        attempt.alias(_GROUP),
        F.pmod(F.xxhash64(HASH), F.lit(FINE_PARTS)).cast("int").alias(_FINE),
    )


def _measure(rows: DataFrame) -> list[_Group]:
    """The attempt groups, from one aggregate over the narrow columns (duplicates counted once)."""
    from pyspark.sql import functions as F

    distinct = rows.groupBy(HASH, _GROUP).agg(F.max(_SIZE).alias(_SIZE), F.max(_FINE).alias(_FINE))
    stats = (
        distinct.groupBy(_GROUP, _FINE)
        .agg(F.count("*").alias("n"), F.sum(_SIZE).alias("t"), F.max(_SIZE).alias("m"))
        .collect()
    )
    groups: dict[int, _Group] = {}
    for row in stats:
        attempt = int(row[_GROUP])
        group = groups.setdefault(attempt, _Group(attempt, 0, 0, 0, {}))
        group.n += int(row["n"])
        group.total += int(row["t"])
        group.largest = max(group.largest, int(row["m"]))
        group.fine[int(row[_FINE])] = int(row["n"])
    return [groups[a] for a in sorted(groups)]


def _dealt_rows(rows: DataFrame, plan: _Plan) -> DataFrame:
    """The write job's rows (``batch_key``, ``hash``, ``attempt``, ``nbytes``, ``line``): every
    distinct request dealt to its chunk, all in the JVM (see the module docstring).

    Within each part and attempt group, rows are ordered by ``(size desc, hash)``; a duplicate
    (same hash and attempt, hence same part and size) sorts right after its twin and is dropped;
    the others are numbered (``row_number``), and rank ``offset[part] + number`` goes to chunk
    ``snake(rank)``. A line that is null, or whose size is not the one measured, fails the job.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    order = Window.partitionBy(_PART, _GROUP).orderBy(F.col(_SIZE).desc(), F.col(HASH))
    parted = (
        rows.withColumn(_PART, F.pmod(F.col(_FINE), F.lit(plan.parts)).cast("int"))
        .select(HASH, LINE, _SIZE, _GROUP, _PART)
        .repartition(plan.parts, _PART)
    )
    twin = F.coalesce(F.lag(HASH).over(order) == F.col(HASH), F.lit(False))
    distinct = parted.withColumn(_TWIN, twin).where(~F.col(_TWIN)).drop(_TWIN)
    offsets = _per_attempt({a: F.array(*map(F.lit, o)) for a, o in plan.offsets.items()})
    rank = F.element_at(offsets, F.col(_PART) + 1) + F.row_number().over(order) - 1
    k = _per_attempt({a: F.lit(v) for a, v in plan.ks.items()})
    base = _per_attempt({a: F.lit(v) for a, v in plan.bases.items()})
    pos, round_ = F.pmod(rank, k), F.floor(rank / k)
    chunk = base + F.when(F.pmod(round_, 2) == 0, pos).otherwise(k - 1 - pos)
    keys = F.array(*[F.lit(key) for key in plan.keys])
    measured = (F.octet_length(LINE) + 1).cast("long")
    nbytes = (
        F.when(F.col(LINE).isNull(), F.raise_error(F.lit("a request line to stage is null")))
        .when(measured == F.col(_SIZE), measured)
        .otherwise(
            F.raise_error(
                F.lit("a request line's size differs from the size its encoder gave (__llm_bytes)")
            )
        )
    )
    dealt = distinct.select(
        F.element_at(keys, (chunk + 1).cast("int")).alias("batch_key"),
        F.col(HASH).alias("hash"),
        F.col(_GROUP).cast("int").alias("attempt"),
        nbytes.cast("long").alias("nbytes"),
        F.col(LINE).alias("line"),
    )
    # Every part deals to every chunk: written as they are, the chunks would take a file per part
    # and chunk, and each writer task would sort all of its part's chunks at once.
    return dealt.repartition(plan.size, "batch_key")


def _per_attempt(values: dict[int, Column]) -> Column:
    """``values[attempt]`` for each row's attempt group (a literal map of the plan's values)."""
    from pyspark.sql import functions as F

    pairs = [x for attempt, v in sorted(values.items()) for x in (F.lit(attempt), v)]
    return F.element_at(F.create_map(*pairs), F.col(_GROUP))


def _parallelism(spark: SparkSession) -> int:
    try:
        return int(spark.conf.get("spark.sql.shuffle.partitions") or 8)
    except Exception:  # an unset or non-numeric value ("auto" on some platforms)
        return 8


class ChunkSink(Protocol):
    """Where staged chunks go: the store's ``chunks`` table (:class:`~spark_llm_batch._store.Store`)."""

    def append_chunks(self, rows: DataFrame) -> None:
        """Append the dealt rows (``batch_key``, ``hash``, ``attempt``, ``nbytes``, ``line``) in
        one Spark action and one commit: the write job."""
        ...

    def chunk_sizes(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Per chunk key: (lines, bytes) as committed."""
        ...


def stage_chunks(
    spark: SparkSession,
    pending_df: DataFrame,
    *,
    max_requests: int,
    max_bytes: int,
    model: str,
    sink: ChunkSink,
    attempt_col: str = ATTEMPT,
) -> StagedChunks:
    """Pack pending requests into chunks within both limits and stage their lines in the store.

    See the module docstring for the algorithm and ``_pack_plan``'s for its guarantee: every chunk
    holds at most ``max_requests`` lines and ``max_bytes`` bytes (newlines included); each attempt
    group uses at most ``max(ceil(N/max_requests), ceil(T/max_bytes)) + 1`` chunks unless its
    largest line is too large a share of ``max_bytes`` for that to be possible; input partitioning
    never matters. Chunks hold one attempt value each (and the one ``model``). Only statistics reach
    the driver.

    Args:
        spark: the session.
        pending_df: one row per request to send: ``__llm_hash``, ``__llm_line`` (rows with a null
            line are ignored) and optionally ``attempt_col`` and ``__llm_bytes``, the line's UTF-8
            size plus its newline (then rows with null bytes are ignored; a wrong size fails the
            write job); a hash that appears more than once with one attempt value is sent once.
        max_requests: the provider's request limit per batch.
        max_bytes: the provider's byte limit per batch input file.
        model: the model every line uses, recorded on each :class:`ChunkRef`.
        sink: appends the chunks' rows (the write job) and reads back their sizes.
        attempt_col: the column holding each request's attempt number (missing or null: 1).

    Returns:
        The staged chunks (keys fresh uuid4 hex), as committed.

    Raises:
        ConfigError: a line is larger than ``max_bytes`` (encode with the same limits).

    Example:
        >>> staged = stage_chunks(spark, pending, max_requests=50_000, max_bytes=200 << 20,
        ...                       model="gpt-4o-mini", sink=store)  # doctest: +SKIP
        >>> [(c.requests, c.nbytes) for c in staged.chunks]  # doctest: +SKIP
        [(33334, 10400208), (33333, 10399896), (33333, 10399896)]
    """

    rows = _rows(pending_df, attempt_col)
    groups = _measure(rows)
    if not groups:
        return StagedChunks()
    too_big = max(g.largest for g in groups)
    if too_big > max_bytes:
        raise ConfigError(
            f"a pending request line takes {too_big} bytes, over max_bytes={max_bytes}: encode "
            "requests with the same limits so that such rows fail as 'too_large'"
        )
    plan = _plan(groups, max_requests, max_bytes, _parallelism(spark))
    sink.append_chunks(_dealt_rows(rows, plan))
    sizes = sink.chunk_sizes(plan.keys)
    return StagedChunks(_written(plan, groups, sizes, model, max_requests, max_bytes))


def _written(
    plan: _Plan,
    groups: list[_Group],
    sizes: dict[str, tuple[int, int]],
    model: str,
    max_requests: int,
    max_bytes: int,
) -> list[ChunkRef]:
    """The chunks as committed, checked against the plan (counts, bytes) and the limits."""
    chunks = []
    for group in groups:
        k, base = plan.ks[group.attempt], plan.bases[group.attempt]
        written = 0
        for i in range(k):
            key = plan.keys[base + i]
            lines, nbytes = sizes.get(key, (0, 0))
            requests = _dealt(group.n, k, i)
            if lines != requests:
                raise SparkLLMBatchError(
                    f"chunk {key} holds {lines} lines in the store, {requests} were dealt"
                )
            if nbytes > max_bytes or requests > max_requests:
                raise SparkLLMBatchError(
                    f"chunk {key} breaks a limit: {requests} lines, {nbytes} bytes"
                )
            written += nbytes
            chunks.append(ChunkRef(key, requests, nbytes, model, group.attempt))
        if written != group.total:
            raise SparkLLMBatchError(
                f"chunks of attempt {group.attempt} hold {written} bytes, planned {group.total}"
            )
    return chunks
