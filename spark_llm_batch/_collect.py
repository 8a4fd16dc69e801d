"""Collection: parse ended batches' results on executors and merge them into the store.

The driver builds a DataFrame of one row per ended batch (``spark.range`` with one partition per
batch, the batch metadata travelling in the closure) and runs :class:`_Parser` over it with
``mapInArrow``: one task per batch, in parallel, each streaming ``provider.iter_results`` and
yielding Arrow batches of at most :data:`_ROWS_PER_BATCH` rows. No result row reaches the driver.

The parsed rows are left-joined onto the batches' members: a member with no result line becomes a
failed row of class ``missing`` (or ``batch_failed`` with the provider's message, for a batch that
failed as a whole, whose results are not read at all). Duplicate lines for one hash collapse to one
row (a success wins). ``final`` is decided here from the retry policy, and the rows are MERGEd into
``results`` in one commit (:meth:`Store.merge_results`). Delta materialises a non-Delta MERGE source,
so the provider's files are read once per collection.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from spark_llm_batch import _columns as C
from spark_llm_batch._results import RETRYABLE
from spark_llm_batch._store_tables import FORMAT_VERSION, BatchRecord
from spark_llm_batch.config import RetryPolicy
from spark_llm_batch.providers.base import BatchState, Provider, ProviderBatch, ResultRecord

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame

    from spark_llm_batch._store import Store

__all__ = ["PARSED_SCHEMA", "batch_outcomes", "collect_batches", "retry_requests"]

_ROWS_PER_BATCH = 4096

PARSED_SCHEMA = (
    "hash STRING, batch_key STRING, status STRING, text STRING, finish_reason STRING, "
    "error_class STRING, error_message STRING, input_tokens BIGINT, output_tokens BIGINT, model STRING"
)
"""Rows yielded by the executor-side parser."""

# Every ResultRecord field but custom_id, in declaration order (the parser's column order).
_RECORD_FIELDS = tuple(f.name for f in fields(ResultRecord) if f.name != "custom_id")


@dataclass(frozen=True)
class _Spec:
    """What a task needs to read one batch (small; pickled with the closure)."""

    key: str
    batch: ProviderBatch | None  # None: failed as a whole, nothing to read


class _Parser:
    """The ``mapInArrow`` function: partition ``i`` of ``spark.range(n)`` reads batch ``i``."""

    def __init__(self, provider: Provider, specs: Sequence[_Spec]) -> None:
        self.provider = provider
        self.specs = list(specs)

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for ids in batches:
            for index in ids.column(0).to_pylist():
                spec = self.specs[index]
                if spec.batch is not None:
                    yield from self._parse(spec.key, self.provider.iter_results(spec.batch))

    @staticmethod
    def _parse(key: str, records: Iterator[ResultRecord]) -> Iterator[pa.RecordBatch]:
        # One tuple per record (a C-level attrgetter), transposed per batch: about 4x faster than
        # appending field by field, which cost as much as parsing the JSON itself.
        as_tuple = attrgetter("custom_id", *_RECORD_FIELDS)
        rows: list[tuple[Any, ...]] = []
        for record in records:
            rows.append(as_tuple(record))
            if len(rows) >= _ROWS_PER_BATCH:
                yield _record_batch(key, rows)
                rows = []
        if rows:
            yield _record_batch(key, rows)


def _record_batch(key: str, rows: list[tuple[Any, ...]]) -> pa.RecordBatch:
    """Rows of ``(custom_id, *_RECORD_FIELDS)`` of batch ``key`` as one Arrow batch."""
    import pyarrow as pa

    schema = _arrow_schema()
    columns = list(zip(*rows, strict=True))
    arrays = [pa.array(columns[0], pa.string()), pa.array([key] * len(rows), pa.string())]
    arrays += [
        pa.array(values, f.type) for values, f in zip(columns[1:], list(schema)[2:], strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _arrow_schema() -> pa.Schema:
    import pyarrow as pa

    text = ("hash", "batch_key", "status", "text", "finish_reason", "error_class", "error_message")
    tokens = [pa.field("input_tokens", pa.int64()), pa.field("output_tokens", pa.int64())]
    return pa.schema(
        [*(pa.field(n, pa.string()) for n in text), *tokens, pa.field("model", pa.string())]
    )


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


def collect_batches(
    store: Store,
    provider: Provider,
    records: Sequence[BatchRecord],
    *,
    retry: RetryPolicy,
    failed_whole: dict[str, str] | None = None,
) -> None:
    """Read the results of ended batches on executors and MERGE them into ``results`` (one commit).

    Args:
        store: the store.
        provider: the provider (pickled to executors).
        records: the ended batches' current records.
        retry: decides which failed rows stay open (``final`` false) for another attempt.
        failed_whole: batch key -> the provider's message, for batches that failed as a whole:
            their members are recorded ``batch_failed`` without reading any result.
    """
    failed_whole = failed_whole or {}
    specs = [_Spec(r.key, None if r.key in failed_whole else provider_batch(r)) for r in records]
    ids = store.spark.range(0, len(specs), 1, numPartitions=max(len(specs), 1))
    parsed = ids.mapInArrow(_Parser(provider, specs), PARSED_SCHEMA)

    rows = _member_rows(store, records, parsed, failed_whole)
    store.merge_results(_finalize(_one_per_hash(rows), retry))


def _member_rows(
    store: Store, records: Sequence[BatchRecord], parsed: DataFrame, failed_whole: dict[str, str]
) -> DataFrame:
    """Every member of ``records`` with its parsed result, or a ``missing`` / ``batch_failed`` row."""
    from pyspark.sql import functions as F

    meta_rows = [
        (
            r.key,
            r.batch_id,
            r.attempt,
            r.model,
            "batch_failed" if r.key in failed_whole else "missing",
            failed_whole.get(r.key, f"no result line for this request in batch {r.batch_id}"),
        )
        for r in records
    ]
    meta = store.spark.createDataFrame(
        meta_rows,
        "batch_key STRING, batch_id STRING, attempt INT, b_model STRING, fill_class STRING, fill_msg STRING",
    )
    members = (
        store.members_of([r.key for r in records])
        .drop("attempt")
        .join(F.broadcast(meta), "batch_key")
    )
    joined = members.join(parsed, ["hash", "batch_key"], "left")
    answered = F.col("status").isNotNull()
    rows = joined.select(
        "hash",
        F.coalesce("status", F.lit("failed")).alias("status"),
        "text",
        "finish_reason",
        F.when(answered, F.col("error_class")).otherwise(F.col("fill_class")).alias("error_class"),
        F.when(answered, F.col("error_message"))
        .otherwise(F.col("fill_msg"))
        .alias("error_message"),
        "input_tokens",
        "output_tokens",
        F.coalesce("model", "b_model").alias("model"),
        "batch_id",
        "attempt",
    )
    return rows


def _one_per_hash(rows: DataFrame) -> DataFrame:
    """One row per hash (MERGE needs it): a success wins over a failure, a later attempt over an earlier."""
    from pyspark.sql import functions as F

    rank = F.when(F.col("status") == "succeeded", 1).otherwise(0) * 1_000_000 + F.col("attempt")
    payload = [c for c in rows.columns if c != "hash"]
    best = rows.groupBy("hash").agg(F.max_by(F.struct(*payload), rank).alias("r"))
    return best.select("hash", *[F.col(f"r.{c}").alias(c) for c in payload])


def _finalize(rows: DataFrame, retry: RetryPolicy) -> DataFrame:
    """Add ``final``, ``updated_at`` and ``format_version``, in the results table's column order."""
    from pyspark.sql import functions as F

    return rows.select(
        *rows.columns,
        F.when(F.col("status") == "succeeded", F.lit(True))
        .otherwise(~_retry_left(retry))
        .alias("final"),
        F.current_timestamp().alias("updated_at"),
        F.lit(FORMAT_VERSION).alias("format_version"),
    )


def _retry_left(retry: RetryPolicy) -> Column:
    """True where the row's class is retryable and its attempt is below the policy's limit."""
    from pyspark.sql import functions as F

    condition = F.lit(False)
    for failure_class in sorted(RETRYABLE):
        allowed = retry.attempts_for(failure_class)
        condition = condition | (
            (F.col("error_class") == failure_class) & (F.col("attempt") < allowed)
        )
    return F.coalesce(condition, F.lit(False))


def batch_outcomes(store: Store, keys: Sequence[str]) -> dict[str, tuple[int, int, int]]:
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


def retry_requests(store: Store, records: Sequence[BatchRecord]) -> DataFrame:
    """Requests of ``records`` whose result is not final and that are not in flight elsewhere.

    Columns ``__llm_hash``, ``__llm_line``, ``__llm_bytes``, ``__llm_attempt`` (= attempt + 1):
    what ``_pack.stage_chunks`` takes. The anti-join makes re-staging idempotent: after a crash
    between re-staging and ``collected``, collecting again stages nothing twice.
    """
    from pyspark.sql import functions as F

    keys = [r.key for r in records]
    open_results = (
        store.table("results")
        .where(~F.col("final"))
        .select("hash", F.col("attempt").alias("r_attempt"))
    )
    candidates = store.members_of(keys).join(open_results, "hash")
    candidates = candidates.where(F.col("r_attempt") == F.col("attempt"))
    candidates = candidates.select(
        F.col("hash").alias(C.HASH), (F.col("attempt") + 1).alias(C.ATTEMPT)
    )
    candidates = candidates.join(store.inflight_hashes(exclude_keys=keys), C.HASH, "left_anti")
    lines = (
        store.table("requests")
        .dropDuplicates(["hash"])
        .select(
            F.col("hash").alias(C.HASH),
            F.col("line").alias(C.LINE),
            F.col("nbytes").alias(C.NBYTES),
        )
    )
    return candidates.join(lines, C.HASH).select(C.HASH, C.LINE, C.NBYTES, C.ATTEMPT)
