"""Packing: assign pending requests to provider-sized chunks and write each chunk as one JSONL file.

The algorithm, run entirely on executors except for a few small aggregates:

1. Rank. Requests are range-sorted by ``(attempt, size desc, hash)``; a ``mapInArrow`` numbers the
   rows of each sorted partition (dropping adjacent duplicate hashes, which the sort makes adjacent)
   and the result is local-checkpointed, so that every later step sees one fixed ranking whatever
   the input's partitioning or determinism. A small aggregate (rows and bytes per partition and
   attempt) gives each partition's offset, so ``rank = offset[partition] + index``.
2. Deal. Within one attempt group of ``N`` requests and ``T`` bytes, ranks are dealt in snake order
   (0..K-1, K-1..0, ...) over ``K`` chunks. Every chunk then holds ``floor(N/K)`` or ``ceil(N/K)``
   requests, and at most ``T/K + s_max`` bytes (``s_max``: the largest line), because a chunk gets
   one line per round and each round's first line is no larger than the previous round's average.
3. Verify. A small aggregate measures every chunk; ``K`` starts at
   ``K0 = max(ceil(N/max_requests), ceil(T/max_bytes))`` and grows only while a chunk is too big:
   ``K0 + 1``, then ``ceil(T / (max_bytes - s_max))`` (which fits by the bound above), then doubling.
4. Write. Rows are shuffled by chunk; each task streams its chunks' lines to
   ``<staging_uri>/<key>.jsonl`` through ``pyarrow.fs`` and reports lines and bytes written, which the
   driver checks against step 3. No row passes through the driver.

Guarantee: both limits always hold, and a group uses at most ``K0 + 1`` chunks whenever
``s_max <= max_bytes - T/(K0 + 1)`` (always true when ``s_max <= max_bytes / (K0 + 1)``, e.g. any
line under 9 MB for a 20-batch job at OpenAI's 200 MB), for any partitioning. No packer can promise
``K0 + 1`` for arbitrary sizes (100 lines of 51 bytes under a 100-byte limit need 100 chunks, not
52); there the count grows as needed and the limits still hold.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spark_llm_batch._columns import ATTEMPT, CHUNK, HASH, LINE, NBYTES
from spark_llm_batch.errors import ConfigError, SparkLLMBatchError
from spark_llm_batch.providers.base import ChunkRef

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import StructType

__all__ = ["StagedChunks", "stage_chunks"]

_SIZE = "__llm_pack_size"
_GROUP = "__llm_pack_attempt"
_PART = "__llm_pack_part"
_INDEX = "__llm_pack_index"


@dataclass
class StagedChunks:
    """The chunks written by :func:`stage_chunks`.

    Attributes:
        chunks: one :class:`ChunkRef` per written file, its ``requests`` and ``nbytes`` measured.
        members: which request went where: ``__llm_hash``, ``batch_key`` (the chunk key) and
            ``attempt`` (int). Backed by a local checkpoint, so it always matches the files.
        requests: the staged lines, one per member: ``__llm_hash``, ``__llm_line``,
            ``__llm_bytes``; from the same checkpoint (recording them re-reads nothing upstream).
    """

    chunks: Sequence[ChunkRef]  # a list
    members: DataFrame
    requests: DataFrame | None = None


@dataclass(frozen=True)
class _Group:
    """One attempt value's requests: the unit that is packed."""

    attempt: int
    start: int  # global rank of its first request
    n: int
    total: int
    largest: int

    def first_k(self, max_requests: int, max_bytes: int) -> int:
        return max(1, math.ceil(self.n / max_requests), math.ceil(self.total / max_bytes))

    def next_k(self, k: int, max_requests: int, max_bytes: int) -> int:
        if k == self.first_k(max_requests, max_bytes):
            return min(self.n, k + 1)
        room = max_bytes - self.largest
        safe = math.ceil(self.total / room) if room > 0 else self.n
        return min(self.n, safe if safe > k else 2 * k)


def _ranked(pending: DataFrame, attempt_col: str) -> DataFrame:
    """Sorted, numbered per partition, deduplicated, and pinned by a local checkpoint."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType, StructField, StructType

    attempt = F.lit(1)
    if attempt_col in pending.columns:
        attempt = F.coalesce(F.col(attempt_col).cast("int"), F.lit(1))
    rows = pending.select(
        F.col(HASH),
        F.col(LINE),
        (F.octet_length(LINE) + 1).cast("long").alias(_SIZE),  # measured here: the file's truth
        attempt.alias(_GROUP),
    ).where(F.col(LINE).isNotNull())
    ordered = rows.orderBy(F.col(_GROUP), F.col(_SIZE).desc(), F.col(HASH))
    ordered = ordered.withColumn(_PART, F.spark_partition_id())
    schema = StructType([*ordered.schema.fields, StructField(_INDEX, LongType(), False)])
    numbered = ordered.mapInArrow(_number_rows, schema)
    # Pinning matters: a recomputed range sort may sample other bounds and move rows between
    # partitions, which would silently change every rank. A lost block fails the job instead.
    return numbered.localCheckpoint(eager=True, storageLevel=StorageLevel.MEMORY_AND_DISK)


def _number_rows(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Number one sorted partition's rows 0, 1, ..., skipping a hash equal to the previous one."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    previous: str | None = None
    next_index = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        hashes = batch.column(HASH)
        before = pa.concat_arrays(
            [pa.array([previous], hashes.type), hashes.slice(0, len(hashes) - 1)]
        )
        keep = pc.fill_null(pc.not_equal(hashes, before), True)
        kept = batch.filter(keep)
        previous = hashes[len(hashes) - 1].as_py()
        index = pa.array(np.arange(next_index, next_index + kept.num_rows, dtype=np.int64))
        next_index += kept.num_rows
        yield pa.RecordBatch.from_arrays([*kept.columns, index], [*kept.schema.names, _INDEX])


def _groups(ranked: DataFrame) -> tuple[list[int], list[_Group]]:
    """Per-partition rank offsets and the attempt groups, from one small aggregate."""
    from pyspark.sql import functions as F

    stats = (
        ranked.groupBy(_PART, _GROUP)
        .agg(F.count("*").alias("n"), F.sum(_SIZE).alias("total"), F.max(_SIZE).alias("largest"))
        .collect()
    )
    if not stats:
        return [], []
    counts = [0] * (max(int(r[_PART]) for r in stats) + 1)
    per_group: dict[int, list[int]] = {}
    for row in stats:
        counts[int(row[_PART])] += int(row["n"])
        agg = per_group.setdefault(int(row[_GROUP]), [0, 0, 0])
        agg[0] += int(row["n"])
        agg[1] += int(row["total"])
        agg[2] = max(agg[2], int(row["largest"]))
    offsets = [sum(counts[:i]) for i in range(len(counts))]
    groups, start = [], 0
    for attempt in sorted(per_group):  # the sort puts smaller attempts first
        n, total, largest = per_group[attempt]
        groups.append(_Group(attempt, start, n, total, largest))
        start += n
    return offsets, groups


def _chunk_column(offsets: list[int], groups: list[_Group], ks: dict[int, int]) -> Column:
    """The chunk id of each row: snake order over its group's ``K`` chunks, groups side by side."""
    from pyspark.sql import functions as F

    def lookup(values: dict[int, int]) -> Column:
        pairs = [F.lit(v) for key, value in values.items() for v in (key, value)]
        return F.element_at(F.create_map(*pairs), F.col(_GROUP)).cast("long")

    bases, base = {}, 0
    for group in groups:
        bases[group.attempt] = base
        base += ks[group.attempt]
    rank = F.element_at(
        F.array(*[F.lit(o).cast("long") for o in offsets]), F.col(_PART) + 1
    ) + F.col(_INDEX)
    local = rank - lookup({g.attempt: g.start for g in groups})
    k = lookup(ks)
    pos, rnd = F.pmod(local, k), F.floor(local / k).cast("long")
    snake = F.when(F.pmod(rnd, F.lit(2)) == 0, pos).otherwise(k - 1 - pos)
    return (lookup(bases) + snake).alias(CHUNK)


def _plan(
    ranked: DataFrame, offsets: list[int], groups: list[_Group], max_requests: int, max_bytes: int
) -> tuple[dict[int, int], dict[int, tuple[int, int]]]:
    """Chunks per group, grown until every chunk fits; returns them and each chunk's (rows, bytes)."""
    from pyspark.sql import functions as F

    ks = {g.attempt: g.first_k(max_requests, max_bytes) for g in groups}
    while True:
        chunk = _chunk_column(offsets, groups, ks)
        rows = ranked.groupBy(chunk).agg(F.count("*").alias("n"), F.sum(_SIZE).alias("b")).collect()
        sizes = {int(r[CHUNK]): (int(r["n"]), int(r["b"])) for r in rows}
        base, grown = 0, False
        for group in groups:
            k = ks[group.attempt]
            fits = all(
                sizes[c][0] <= max_requests and sizes[c][1] <= max_bytes
                for c in range(base, base + k)
            )
            if not fits:
                if k >= group.n:
                    raise SparkLLMBatchError(
                        f"cannot pack attempt {group.attempt}: a line exceeds max_bytes"
                    )
                ks[group.attempt] = group.next_k(k, max_requests, max_bytes)
                grown = True
            base += k
        if not grown:
            return ks, sizes


def _resolve(staging_uri: str) -> str:
    """The staging directory as executors and providers will open it, created if missing."""
    import os
    from urllib.parse import urlparse

    import pyarrow.fs as pafs

    parsed = urlparse(staging_uri)
    if parsed.scheme == "file":
        # Spark and catalogs spell local paths "file:/p" (one slash): a path, not a relative name.
        uri = os.path.abspath(parsed.path)
    elif parsed.scheme == "dbfs":
        uri = "/dbfs" + parsed.path  # Databricks mounts DBFS there for plain file access
    elif "://" in staging_uri:
        uri = staging_uri.rstrip("/")
    else:
        uri = os.path.abspath(staging_uri)  # pyarrow.fs only takes absolute paths
    fs, base = pafs.FileSystem.from_uri(uri)
    fs.create_dir(base, recursive=True)
    return uri


@dataclass
class _OpenChunk:
    """A chunk file being written by one task."""

    stream: Any
    temp: str
    lines: int = 0
    nbytes: int = 0


def _open(fs: Any, path: str, local: bool) -> _OpenChunk:
    # Local files are written aside and renamed, so a retried task never leaves a half file;
    # object stores publish an object only when its upload completes.
    temp = f"{path}.{uuid.uuid4().hex}.tmp" if local else path
    return _OpenChunk(fs.open_output_stream(temp), temp)


def _append_batch(
    batch: pa.RecordBatch, files: dict[int, _OpenChunk], open_file: Callable[[int], _OpenChunk]
) -> None:
    """Append each chunk's lines of ``batch`` to its file (opened on first sight)."""
    import pyarrow.compute as pc

    chunks, lines = batch.column(CHUNK), batch.column(LINE)
    for chunk in pc.unique(chunks).to_pylist():
        selected = pc.filter(lines, pc.equal(chunks, chunk)).to_pylist()
        data = ("\n".join(selected) + "\n").encode("utf-8")
        entry = files.get(chunk)
        if entry is None:
            entry = files[chunk] = open_file(chunk)
        entry.stream.write(data)
        entry.lines += len(selected)
        entry.nbytes += len(data)


def _writer(
    staging_uri: str, keys: Sequence[str]
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function that writes every chunk of a partition to ``<key>.jsonl``."""

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa
        import pyarrow.fs as pafs

        fs, base = pafs.FileSystem.from_uri(staging_uri)
        local = isinstance(fs, pafs.LocalFileSystem)
        files: dict[int, _OpenChunk] = {}
        for batch in batches:
            _append_batch(
                batch, files, lambda chunk: _open(fs, f"{base}/{keys[chunk]}.jsonl", local)
            )
        for chunk, entry in files.items():
            entry.stream.close()
            if local:
                fs.move(entry.temp, f"{base}/{keys[chunk]}.jsonl")
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(list(files), pa.int64()),
                pa.array([e.lines for e in files.values()], pa.int64()),
                pa.array([e.nbytes for e in files.values()], pa.int64()),
            ],
            [CHUNK, "requests", "nbytes"],
        )

    return write


def _write(
    assigned: DataFrame, staging_uri: str, keys: Sequence[str]
) -> dict[int, tuple[int, int]]:
    """Write the chunk files on executors; return each chunk's (lines, bytes) as written."""
    from pyspark.sql.types import LongType, StructField, StructType

    schema = StructType(
        [
            StructField(CHUNK, LongType()),
            StructField("requests", LongType()),
            StructField("nbytes", LongType()),
        ]
    )
    # Hash-partitioning on the chunk id puts each chunk's rows in exactly one task: one file each.
    by_chunk = assigned.select(CHUNK, LINE).repartition(len(keys), CHUNK)
    rows = by_chunk.mapInArrow(_writer(staging_uri, keys), schema).collect()
    written: dict[int, tuple[int, int]] = {}
    for row in rows:
        if int(row[CHUNK]) in written:
            raise SparkLLMBatchError(f"chunk {row[CHUNK]} was written by two tasks")
        written[int(row[CHUNK])] = (int(row["requests"]), int(row["nbytes"]))
    return written


def _members_schema() -> StructType:
    from pyspark.sql.types import IntegerType, StringType, StructField, StructType

    return StructType(
        [
            StructField(HASH, StringType(), False),
            StructField("batch_key", StringType(), False),
            StructField("attempt", IntegerType(), False),
        ]
    )


def stage_chunks(
    spark: SparkSession,
    pending_df: DataFrame,
    *,
    max_requests: int,
    max_bytes: int,
    staging_uri: str,
    model: str,
    attempt_col: str = ATTEMPT,
) -> StagedChunks:
    """Pack pending requests into chunks within both limits and write each chunk as one JSONL file.

    See the module docstring for the algorithm and its guarantee: every chunk holds at most
    ``max_requests`` lines and ``max_bytes`` bytes (newlines included); each attempt group uses at
    most ``max(ceil(N/max_requests), ceil(T/max_bytes)) + 1`` chunks unless its largest line is too
    large a share of ``max_bytes`` for that to be possible; input partitioning never matters. Chunks
    hold one attempt value each (and the one ``model``). Only metadata reaches the driver.

    Args:
        spark: the session (used for the empty result).
        pending_df: one row per request to send: ``__llm_hash``, ``__llm_line`` (rows with a null
            line are ignored) and optionally ``attempt_col``; hashes should be distinct (adjacent
            duplicates of one hash and attempt are dropped).
        max_requests: the provider's request limit per batch.
        max_bytes: the provider's byte limit per batch input file.
        staging_uri: a directory (local path or ``pyarrow.fs`` URI) for the chunk files.
        model: the model every line uses, recorded on each :class:`ChunkRef`.
        attempt_col: the column holding each request's attempt number (missing or null: 1).

    Returns:
        The written chunks (``<staging_uri>/<key>.jsonl``, key a fresh uuid4 hex) and the members.

    Raises:
        ConfigError: a line is larger than ``max_bytes`` (encode with the same limits).

    Example:
        >>> staged = stage_chunks(spark, pending, max_requests=50_000, max_bytes=200 << 20,
        ...                       staging_uri="/tmp/store/staging", model="gpt-4o-mini")  # doctest: +SKIP
        >>> [(c.requests, c.nbytes) for c in staged.chunks]  # doctest: +SKIP
        [(33334, 10400208), (33333, 10399896), (33333, 10399896)]
    """
    from pyspark.sql import functions as F

    ranked = _ranked(pending_df, attempt_col)
    offsets, groups = _groups(ranked)
    if not groups:
        return StagedChunks([], spark.createDataFrame([], _members_schema()))
    too_big = max(g.largest for g in groups)
    if too_big > max_bytes:
        raise ConfigError(
            f"a pending request line takes {too_big} bytes, over max_bytes={max_bytes}: encode "
            "requests with the same limits so that such rows fail as 'too_large'"
        )
    ks, sizes = _plan(ranked, offsets, groups, max_requests, max_bytes)
    keys = [uuid.uuid4().hex for _ in sizes]
    assigned = ranked.select(HASH, LINE, _GROUP, _chunk_column(offsets, groups, ks))
    uri = _resolve(staging_uri)
    written = _write(assigned, uri, keys)
    if written != sizes:
        raise SparkLLMBatchError(
            f"chunk files do not match the plan: wrote {written}, planned {sizes}"
        )
    attempts = [g.attempt for g in groups for _ in range(ks[g.attempt])]
    chunks = [
        ChunkRef(key, f"{uri}/{key}.jsonl", sizes[i][0], sizes[i][1], model, attempts[i])
        for i, key in enumerate(keys)
    ]
    lines = ranked.select(HASH, LINE, F.col(_SIZE).alias(NBYTES))
    return StagedChunks(chunks, _members(assigned, keys), lines)


def _members(assigned: DataFrame, keys: Sequence[str]) -> DataFrame:
    """``(__llm_hash, batch_key, attempt)``: a pure function of the checkpoint, so it matches the files."""
    from pyspark.sql import functions as F

    key_of = F.element_at(F.array(*[F.lit(k) for k in keys]), (F.col(CHUNK) + 1).cast("int"))
    return assigned.select(
        F.col(HASH), key_of.alias("batch_key"), F.col(_GROUP).cast("int").alias("attempt")
    )
