"""Packing: assign pending requests to provider-sized chunks and write each chunk's lines to files.

The algorithm runs on executors in two Spark jobs; only per-part statistics reach the driver:

1. Measure (narrow columns only). Each request gets a fine part, ``pmod(xxhash64(hash), 1024)``.
   Requests are de-duplicated on ``(hash, attempt)`` and counted per fine part and attempt: rows,
   bytes (the line's UTF-8 size plus its newline, given by the caller as ``__llm_bytes`` so that
   no line is built here, or measured) and the largest line.
2. Plan (driver, ``_pack_plan``). Per attempt group, ``K`` chunks and ``P`` parts (the fine parts
   folded as ``fine % P``), chosen so that both limits are sure to hold when each part's rows,
   ranked by ``(size desc, hash)`` after the rows of the parts before it, are dealt in snake order
   (rank ``r`` to chunk ``0..K-1``, then ``K-1..0``, ...).
3. Write (one job, the full lines). Rows are shuffled by part and sorted within it; each task deals
   its parts' rows (dropping duplicates, adjacent after the sort) and streams every chunk's lines to
   ``<staging>/<key>/part-<p>.jsonl`` through ``pyarrow.fs``; its output rows are the members
   (``hash``, ``batch_key``, ``attempt``), which the caller commits in the same job. No row passes
   through the driver. The written bytes are checked against the plan.

Guarantee (the bound and its proof: ``_pack_plan``): both limits always hold, and a group uses at
most one chunk more than its limits require unless its largest line is too large a share of the
byte limit, for any input partitioning.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spark_llm_batch._chunk_files import chunk_parts, resolve_staging
from spark_llm_batch._columns import ATTEMPT, HASH, LINE, NBYTES
from spark_llm_batch._pack_plan import FINE_PARTS, _dealt, _Group, _Plan, _plan
from spark_llm_batch.errors import ConfigError, SparkLLMBatchError
from spark_llm_batch.providers.base import ChunkRef

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["StagedChunks", "stage_chunks"]

_SIZE = "__llm_pack_size"
_GROUP = "__llm_pack_attempt"
_FINE = "__llm_pack_fine"
_PART = "__llm_pack_part"

MembersSink = Callable[["DataFrame"], None]
"""Commits the members frame (``__llm_hash``, ``batch_key``, ``attempt``) in one Spark action."""


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


@dataclass
class _OpenChunk:
    """A part file being written by one task."""

    stream: Any
    temp: str
    final: str


class _Dealer:
    """The ``mapInArrow`` function: deal a task's sorted rows to chunks, write them, yield members."""

    def __init__(self, plan: _Plan, staging_uri: str) -> None:
        self.plan = plan
        self.staging_uri = staging_uri

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.fs as pafs

        fs, base = pafs.FileSystem.from_uri(self.staging_uri)
        local = isinstance(fs, pafs.LocalFileSystem)
        files: dict[tuple[int, int], _OpenChunk] = {}
        state: dict[str, Any] = {"last": None, "run": None, "index": 0}

        def open_file(chunk: int, part: int) -> _OpenChunk:
            folder = f"{base}/{self.plan.keys[chunk]}"
            fs.create_dir(folder, recursive=True)
            final = f"{folder}/part-{part:05d}.jsonl"
            # Local files are written aside and renamed, so a retried task never leaves half a
            # file; object stores publish an object only when its upload completes.
            temp = f"{final}.{uuid.uuid4().hex}.tmp" if local else final
            return _OpenChunk(fs.open_output_stream(temp), temp, final)

        try:
            for batch in batches:
                if batch.num_rows:
                    yield self._deal(batch, state, files, open_file)
        finally:
            for entry in files.values():
                entry.stream.close()
        for entry in files.values():
            if local:
                fs.move(entry.temp, entry.final)

    def _deal(
        self,
        batch: pa.RecordBatch,
        state: dict[str, Any],
        files: dict[tuple[int, int], _OpenChunk],
        open_file: Callable[[int, int], _OpenChunk],
    ) -> pa.RecordBatch:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        parts = batch.column(_PART).to_numpy(zero_copy_only=False)
        groups = batch.column(_GROUP).to_numpy(zero_copy_only=False)
        hashes = batch.column(HASH)
        # A duplicate (same hash and attempt) sorts right after its twin, possibly across batches.
        previous = pa.concat_arrays([pa.array([state["last"]], hashes.type), hashes[:-1]])
        continues = state["run"] == (parts[0], groups[0])
        same_run = np.concatenate([[continues], _same_as_previous(parts, groups)])
        equal = pc.fill_null(pc.equal(hashes, previous), False).to_numpy(zero_copy_only=False)
        keep = ~(equal & same_run)
        state["last"] = hashes[-1].as_py()
        kept = batch.filter(pa.array(keep))
        parts, groups = parts[keep], groups[keep]
        index = _run_index(parts, groups, state)
        chunk = self._chunks(parts, groups, index)
        lines = kept.column(LINE)
        with_newline = pc.binary_join_element_wise(
            lines, pa.scalar("", lines.type), pa.scalar("\n", lines.type)
        )
        for part, target in sorted(set(zip(parts.tolist(), chunk.tolist(), strict=True))):
            selected = pc.filter(with_newline, pa.array((parts == part) & (chunk == target)))
            entry = files.get((target, part))
            if entry is None:
                entry = files[(target, part)] = open_file(target, part)
            entry.stream.write(_utf8_payload(selected))
        keys = pa.array(self.plan.keys, pa.string())
        return pa.RecordBatch.from_arrays(
            [kept.column(HASH), pc.take(keys, pa.array(chunk)), pa.array(groups, pa.int32())],
            [HASH, "batch_key", "attempt"],
        )

    def _chunks(self, parts: np.ndarray, groups: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Global chunk index of each row: snake order over its group's chunks, by global rank."""
        import numpy as np

        chunk = np.empty(len(index), dtype=np.int64)
        for attempt in np.unique(groups).tolist():
            mask = groups == attempt
            offsets = np.asarray(self.plan.offsets[attempt], dtype=np.int64)
            rank = offsets[parts[mask]] + index[mask]
            k = self.plan.ks[attempt]
            pos, rnd = rank % k, rank // k
            chunk[mask] = self.plan.bases[attempt] + np.where(rnd % 2 == 0, pos, k - 1 - pos)
        return chunk


def _same_as_previous(parts: np.ndarray, groups: np.ndarray) -> np.ndarray:
    return (parts[1:] == parts[:-1]) & (groups[1:] == groups[:-1])


def _run_index(parts: np.ndarray, groups: np.ndarray, state: dict[str, Any]) -> np.ndarray:
    """Each row's index within its (part, attempt) run, continuing the previous batch's run."""
    import numpy as np

    n = len(parts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[True], ~_same_as_previous(parts, groups)])
    start_at = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    index = np.arange(n, dtype=np.int64) - start_at
    if state["run"] == (parts[0], groups[0]):
        first_run = start_at == 0
        index[first_run] += state["index"]
    state["index"] = int(index[-1]) + 1
    state["run"] = (parts[-1], groups[-1])
    return index


def _utf8_payload(strings: pa.Array) -> pa.Buffer:
    """The concatenated bytes of a string array without nulls (a slice of its data buffer)."""
    import numpy as np
    import pyarrow as pa

    if strings.null_count:
        raise SparkLLMBatchError("a request line to write is null")
    wide = pa.types.is_large_string(strings.type) or pa.types.is_large_binary(strings.type)
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64 if wide else np.int32)
    start, end = int(offsets[strings.offset]), int(offsets[strings.offset + len(strings)])
    return strings.buffers()[2].slice(start, end - start)


def _parallelism(spark: SparkSession) -> int:
    try:
        return int(spark.conf.get("spark.sql.shuffle.partitions") or 8)
    except Exception:  # an unset or non-numeric value ("auto" on some platforms)
        return 8


def stage_chunks(
    spark: SparkSession,
    pending_df: DataFrame,
    *,
    max_requests: int,
    max_bytes: int,
    staging_uri: str,
    model: str,
    record_members: MembersSink,
    attempt_col: str = ATTEMPT,
) -> StagedChunks:
    """Pack pending requests into chunks within both limits and write them to the staging area.

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
            written-bytes check); a hash that appears more than once with one attempt value is
            sent once.
        max_requests: the provider's request limit per batch.
        max_bytes: the provider's byte limit per batch input file.
        staging_uri: a directory (local path or ``pyarrow.fs`` URI) for the chunks.
        model: the model every line uses, recorded on each :class:`ChunkRef`.
        record_members: commits the members frame; it runs the write job, so the members always
            match the files.
        attempt_col: the column holding each request's attempt number (missing or null: 1).

    Returns:
        The written chunks, each a directory ``<staging_uri>/<key>`` (key a fresh uuid4 hex).

    Raises:
        ConfigError: a line is larger than ``max_bytes`` (encode with the same limits).

    Example:
        >>> staged = stage_chunks(spark, pending, max_requests=50_000, max_bytes=200 << 20,
        ...                       staging_uri="/tmp/store/staging", model="gpt-4o-mini",
        ...                       record_members=store.append_members)  # doctest: +SKIP
        >>> [(c.requests, c.nbytes) for c in staged.chunks]  # doctest: +SKIP
        [(33334, 10400208), (33333, 10399896), (33333, 10399896)]
    """
    from pyspark.sql import functions as F

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
    uri = resolve_staging(staging_uri)
    by_part = (
        rows.withColumn(_PART, F.pmod(F.col(_FINE), F.lit(plan.parts)).cast("int"))
        .select(HASH, LINE, _SIZE, _GROUP, _PART)
        .repartition(plan.parts, _PART)
        .sortWithinPartitions(_PART, _GROUP, F.col(_SIZE).desc(), HASH)
    )
    members = by_part.mapInArrow(
        _Dealer(plan, uri), f"`{HASH}` STRING, batch_key STRING, attempt INT"
    )
    record_members(members)
    return StagedChunks(_written(plan, groups, uri, model, max_requests, max_bytes))


def _written(
    plan: _Plan, groups: list[_Group], uri: str, model: str, max_requests: int, max_bytes: int
) -> list[ChunkRef]:
    """The chunks as written, checked against the plan (counts) and the limits (bytes)."""
    chunks = []
    for group in groups:
        k, base = plan.ks[group.attempt], plan.bases[group.attempt]
        written = 0
        for i in range(k):
            key = plan.keys[base + i]
            nbytes = sum(size for _, size in chunk_parts(f"{uri}/{key}"))
            requests = _dealt(group.n, k, i)
            if nbytes > max_bytes or requests > max_requests:
                raise SparkLLMBatchError(
                    f"chunk {key} breaks a limit: {requests} lines, {nbytes} bytes"
                )
            written += nbytes
            chunks.append(ChunkRef(key, f"{uri}/{key}", requests, nbytes, model, group.attempt))
        if written != group.total:
            raise SparkLLMBatchError(
                f"chunk files of attempt {group.attempt} hold {written} bytes, planned {group.total}"
            )
    return chunks
