"""Packing: both limits hold, the chunk count stays near the lower bound, every request lands once."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from spark_llm_batch import _columns as C
from spark_llm_batch._pack import StagedChunks, stage_chunks
from spark_llm_batch._pack_plan import _dealt, _Group
from spark_llm_batch.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Python workers must run this interpreter (it has pyarrow), whatever `python3` is on PATH.


def _pending(spark: SparkSession, n: int, pad: str, *, attempt: str | None = None) -> DataFrame:
    """``n`` requests whose lines carry their hash; ``pad`` and ``attempt`` are SQL expressions of ``id``."""
    from pyspark.sql import functions as F

    line = F.concat(
        F.lit('{"custom_id":"'),
        F.col(C.HASH),
        F.lit('","pad":"'),
        F.expr(f"repeat('x', {pad})"),
        F.lit('"}'),
    )
    df = spark.range(n).withColumn(C.HASH, F.md5(F.col("id").cast("string")))
    df = df.withColumn(C.LINE, line).withColumn(C.NBYTES, F.octet_length(C.LINE) + 1)
    return df.withColumn(C.ATTEMPT, F.expr(attempt)) if attempt else df


def _expected(
    n: int, pad: Callable[[int], int], attempt: Callable[[int], int] = lambda i: 1
) -> dict[str, tuple[int, int]]:
    """What ``_pending`` holds, computed without Spark: hash -> (line bytes with newline, attempt)."""
    return {
        hashlib.md5(str(i).encode()).hexdigest(): (
            len('{"custom_id":"","pad":""}') + 32 + pad(i) + 1,
            attempt(i),
        )
        for i in range(n)
    }


class _Chunks:
    """A chunk sink that keeps the committed rows (packing's single write job runs here)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, int, int, str]] = []
        self.appends = 0

    def append_chunks(self, frame: DataFrame) -> None:
        self.appends += 1
        self.rows += [
            (r["batch_key"], r["hash"], r["attempt"], r["nbytes"], r["line"])
            for r in frame.collect()
        ]

    def chunk_sizes(self, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        sizes: dict[str, tuple[int, int]] = {}
        for key, _, _, nbytes, _ in self.rows:
            if key in keys:
                n, b = sizes.get(key, (0, 0))
                sizes[key] = (n + 1, b + nbytes)
        return sizes


def _check(
    staged: StagedChunks,
    sink: _Chunks,
    expected: dict[str, tuple[int, int]],
    *,
    max_requests: int,
    max_bytes: int,
    slack: int = 1,
) -> None:
    """Limits, bound, exactly-once placement, rows == refs, sizes == lines."""
    placed: dict[str, str] = {}
    attempts = {c.key: c.attempt for c in staged.chunks}
    for chunk in staged.chunks:
        rows = [r for r in sink.rows if r[0] == chunk.key]
        assert len(rows) == chunk.requests <= max_requests
        assert sum(len(r[4].encode()) + 1 for r in rows) == chunk.nbytes <= max_bytes
        for _, hash_, attempt, nbytes, line in rows:
            assert nbytes == len(line.encode()) + 1
            custom_id = json.loads(line)["custom_id"]
            assert custom_id == hash_
            assert custom_id not in placed
            assert expected[custom_id][1] == chunk.attempt == attempt
            placed[custom_id] = chunk.key
    assert set(placed) == set(expected)
    assert len(sink.rows) == len(placed)
    assert sink.appends == 1  # one write job
    for attempt in set(attempts.values()):
        group = [v[0] for v in expected.values() if v[1] == attempt]
        bound = max(math.ceil(len(group) / max_requests), math.ceil(sum(group) / max_bytes))
        assert sum(1 for a in attempts.values() if a == attempt) <= bound + slack


def _stage(
    pending: DataFrame, tmp_path: Path, max_requests: int, max_bytes: int
) -> tuple[StagedChunks, _Chunks]:
    sink = _Chunks()
    staged = stage_chunks(
        pending.sparkSession,
        pending,
        max_requests=max_requests,
        max_bytes=max_bytes,
        model="m",
        sink=sink,
    )
    return staged, sink


def test_one_partition_count_bound(spark: SparkSession, tmp_path: Path) -> None:
    pending = _pending(spark, 1000, "id % 37").coalesce(1)
    staged, members = _stage(
        pending, tmp_path, 64, 10**9
    )  # count-bound: ceil(1000 / 64) = 16 chunks
    _check(staged, members, _expected(1000, lambda i: i % 37), max_requests=64, max_bytes=10**9)
    assert len(staged.chunks) == 16


def test_400_partitions_byte_bound(spark: SparkSession, tmp_path: Path) -> None:
    pending = _pending(spark, 2000, "20 + id % 50").repartition(400)
    staged, members = _stage(pending, tmp_path, 10_000, 12_000)
    _check(
        staged,
        members,
        _expected(2000, lambda i: 20 + i % 50),
        max_requests=10_000,
        max_bytes=12_000,
    )


def test_skewed_partitions(spark: SparkSession, tmp_path: Path) -> None:
    from pyspark.sql import functions as F

    skew = F.when(F.col("id") < 2700, F.lit(0)).otherwise(F.col("id"))  # 90 % in one partition
    pending = _pending(spark, 3000, "id % 101").repartition(8, skew)
    staged, members = _stage(pending, tmp_path, 250, 60_000)
    _check(staged, members, _expected(3000, lambda i: i % 101), max_requests=250, max_bytes=60_000)


def test_mixed_tiny_and_big_lines(spark: SparkSession, tmp_path: Path) -> None:
    # Half the lines 59 bytes, half 1.3 KB, interleaved across 5 partitions; both limits bind.
    pending = _pending(spark, 2000, "CASE WHEN id % 2 = 0 THEN 1 ELSE 1200 END").repartition(5)
    staged, members = _stage(pending, tmp_path, 200, 100_000)
    expected = _expected(2000, lambda i: 1 if i % 2 == 0 else 1200)
    _check(staged, members, expected, max_requests=200, max_bytes=100_000)


def test_attempt_groups_and_duplicates(spark: SparkSession, tmp_path: Path) -> None:
    pending = _pending(spark, 900, "id % 13", attempt="CAST(1 + id % 3 AS INT)")
    doubled = pending.unionByName(pending.where("id < 50")).repartition(4)  # 50 repeated hashes
    staged, members = _stage(doubled, tmp_path, 100, 10**6)
    expected = _expected(900, lambda i: i % 13, lambda i: 1 + i % 3)
    _check(staged, members, expected, max_requests=100, max_bytes=10**6)
    assert sorted({c.attempt for c in staged.chunks}) == [1, 2, 3]


def test_lines_too_big_to_pair_still_fit(spark: SparkSession, tmp_path: Path) -> None:
    # Every line is over half the byte limit: no two fit together, so the bound cannot hold.
    staged, members = _stage(_pending(spark, 12, "600"), tmp_path, 100, 1000)
    _check(
        staged, members, _expected(12, lambda i: 600), max_requests=100, max_bytes=1000, slack=10**6
    )
    assert len(staged.chunks) == 12


def test_empty_and_oversized_input(spark: SparkSession, tmp_path: Path) -> None:
    staged, members = _stage(_pending(spark, 10, "5").where("id < 0"), tmp_path, 10, 1000)
    assert staged.chunks == []
    assert members.rows == []
    assert members.appends == 0
    with pytest.raises(ConfigError, match="max_bytes"):
        _stage(_pending(spark, 10, "5000"), tmp_path, 10, 1000)


def test_sizes_measured_without_nbytes_and_a_wrong_nbytes_is_caught(
    spark: SparkSession, tmp_path: Path
) -> None:
    from pyspark.sql import functions as F

    pending = _pending(spark, 300, "id % 29").repartition(3)
    staged, members = _stage(pending.drop(C.NBYTES), tmp_path / "measured", 64, 4000)
    _check(staged, members, _expected(300, lambda i: i % 29), max_requests=64, max_bytes=4000)
    # A caller's size one byte short for some lines: the write job refuses them.
    wrong = pending.withColumn(
        C.NBYTES, F.when(F.col("id") % 7 == 0, F.col(C.NBYTES) - 1).otherwise(F.col(C.NBYTES))
    )
    with pytest.raises(Exception, match="differs from the size its encoder gave"):
        _stage(wrong, tmp_path / "wrong", 64, 4000)
    # A line missing where a size was given: refused too, never staged as an empty request.
    holed = pending.withColumn(C.LINE, F.when(F.col("id") != 5, F.col(C.LINE)))
    with pytest.raises(Exception, match="a request line to stage is null"):
        _stage(holed, tmp_path / "holed", 64, 4000)


def _snake_max(sizes: list[int], k: int) -> int:
    bins = [0] * k
    for rank, size in enumerate(sorted(sizes, reverse=True)):
        pos, rnd = rank % k, rank // k
        bins[pos if rnd % 2 == 0 else k - 1 - pos] += size
    return max(bins)


def _snake_bins(ranked: list[int], k: int) -> list[int]:
    bins = [0] * k
    for rank, size in enumerate(ranked):
        pos, rnd = rank % k, rank // k
        bins[pos if rnd % 2 == 0 else k - 1 - pos] += size
    return bins


def test_snake_over_descending_runs_and_counts() -> None:
    # Packing ranks P parts one after the other, each sorted by size: P descending runs.
    rng = random.Random(11)
    for _ in range(300):
        runs = [
            sorted((rng.choice([1, 3, 40, 400]) for _ in range(rng.randint(0, 80))), reverse=True)
            for _ in range(rng.randint(1, 6))
        ]
        ranked = [size for run in runs for size in run]
        if not ranked:
            continue
        k = rng.randint(1, len(ranked))
        bins = _snake_bins(ranked, k)
        assert max(bins) <= sum(ranked) / k + (2 * len(runs) - 1) * max(ranked)
        counts = _snake_bins([1] * len(ranked), k)
        assert counts == [_dealt(len(ranked), k, i) for i in range(k)]


def test_snake_bound_and_growth() -> None:
    rng = random.Random(7)
    for _ in range(300):
        sizes = [
            rng.choice([1, 2, 5, 50, 400]) * rng.randint(1, 5) for _ in range(rng.randint(1, 300))
        ]
        k = rng.randint(1, len(sizes))
        assert _snake_max(sizes, k) <= sum(sizes) / k + max(sizes)
    # K0, then K0 + 1, then the K the bound proves sufficient, then doubling, never past N.
    group = _Group(attempt=1, n=1000, total=500_000, largest=60_000, fine={})
    first = group.first_k(100, 100_000)
    assert first == 10
    assert group.next_k(first, 100, 100_000) == 11
    assert group.next_k(11, 100, 100_000) == math.ceil(500_000 / (100_000 - 60_000)) == 13
    assert group.next_k(13, 100, 100_000) == 26
    assert group.next_k(999, 100, 100_000) == 1000
