"""Collection: ended batches' result lines become one results row per member, merged into the store.

One path, whatever the transport:

1. The transport gives the result lines of the batches that have any
   (:meth:`~spark_llm_batch._transport.Transport.result_rows`: read in Spark tasks, or downloaded
   by the driver into the store); batches failed as a whole are not read.
2. One aggregate, grouped by request hash, meets the lines with the batches' members (from
   ``chunks``): a line for a hash that is no member of its batch is dropped, two lines for one
   member keep the success (else the first), and a member without a line gets its batch's fill
   (``missing``, or ``batch_failed`` with the provider's message). ``final`` comes from the retry
   policy, as a Spark expression (:func:`retry_condition`). All of it runs in the JVM: one shuffle,
   no Python per row.
3. One MERGE into ``results`` (:meth:`Store.merge_results`): insert-only when every batch is a first
   attempt (a row already there can only be this same collection's, committed before a crash), the
   full MERGE otherwise (a final row is never overwritten, an older attempt never overwrites a
   newer one).
4. The outcomes per batch are counted from ``results`` joined with the members
   (:func:`batch_outcomes`); no result row reaches the driver.

Authentication, permission and billing failures (class ``auth``) are stored with ``final`` false:
they are no answer, the job stops on them (the orchestrator raises), and the next run sends them
again once the credentials are fixed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from spark_llm_batch._results import RETRYABLE
from spark_llm_batch._store_tables import FORMAT_VERSION, RESULT_FIELDS, BatchRecord
from spark_llm_batch.config import RetryPolicy
from spark_llm_batch.providers.base import BatchState, ProviderBatch

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from spark_llm_batch._store import Store
    from spark_llm_batch._transport import Transport

__all__ = ["Outcome", "Outcomes", "batch_outcomes", "collect_batches", "retry_condition"]


class Outcome(NamedTuple):
    """One collected batch's members, by what their results say."""

    succeeded: int = 0
    failed: int = 0  # failed for good
    retry: int = 0  # open: another attempt is due
    auth: int = 0  # refused for credentials, permission or billing: the job must stop


Outcomes = dict[str, Outcome]
"""Batch key -> its :class:`Outcome`."""

_LINE = [name for name, _ in RESULT_FIELDS]


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
    transport: Transport,
    records: Sequence[BatchRecord],
    *,
    retry: RetryPolicy,
    failed_whole: dict[str, str] | None = None,
) -> Outcomes:
    """Read the results of ended batches and MERGE one row per member into ``results``.

    One commit (the MERGE); running it again after a crash changes nothing.

    Args:
        store: the store.
        transport: brings the result lines into Spark.
        records: the ended batches' current records.
        retry: decides which failed rows stay open (``final`` false) for another attempt.
        failed_whole: batch key -> the provider's message, for batches that failed as a whole:
            their members are recorded ``batch_failed`` without reading any result.

    Returns:
        The outcome of every batch of ``records``, counted from ``results`` once merged.
    """
    if not records:
        return {}
    failed_whole = failed_whole or {}
    readable = [provider_batch(r) for r in records if r.key not in failed_whole]
    now = dt.datetime.now(dt.timezone.utc)
    with transport.result_rows(readable) as lines:
        source = _source(store, records, lines, failed_whole, retry, now)
        store.merge_results(source, insert_only=all(r.attempt == 1 for r in records))
    return batch_outcomes(store, [r.key for r in records])


def _fills(store: Store, records: Sequence[BatchRecord], failed_whole: dict[str, str]) -> DataFrame:
    """Per batch (small, broadcast): its id, model, attempt, and the class and message of a member
    with no line."""
    rows = [
        (
            r.key,
            r.batch_id,
            r.model,
            r.attempt,
            "batch_failed" if r.key in failed_whole else "missing",
            failed_whole.get(r.key, f"no result line for this request in batch {r.batch_id}"),
        )
        for r in records
    ]
    schema = (
        "f_key STRING, f_batch_id STRING, f_model STRING, f_attempt INT, f_class STRING, "
        "f_message STRING"
    )
    return store.spark.createDataFrame(rows, schema)


def _source(
    store: Store,
    records: Sequence[BatchRecord],
    lines: DataFrame,
    failed_whole: dict[str, str],
    retry: RetryPolicy,
    now: dt.datetime,
) -> DataFrame:
    """One results row per member of ``records`` (results-table columns), see the module docstring."""
    from pyspark.sql import functions as F

    keys = [r.key for r in records]
    nothing = [F.lit(None).cast(kind).alias(name) for name, kind in RESULT_FIELDS]
    members = store.members_of(keys).select(
        "hash", "batch_key", "attempt", F.lit(True).alias("member"), *nothing
    )
    got = lines.where(F.col("batch_key").isin(keys)).select(
        "hash", "batch_key", F.lit(None).cast("int").alias("attempt"), F.lit(False).alias("member"),
        *_LINE,
    )  # fmt: skip
    both = members.unionByName(got)
    is_member = F.col("member")
    grouped = both.groupBy("hash").agg(
        F.collect_list(F.when(is_member, F.struct("attempt", "batch_key"))).alias("m"),
        F.collect_list(F.when(~is_member, F.struct("batch_key", *_LINE))).alias("l"),
    )
    member_keys = F.transform("m", lambda m: m["batch_key"])
    valid = F.filter("l", lambda x: F.array_contains(member_keys, x["batch_key"]))

    def member_attempt(line: Column) -> Column:
        return F.get(F.filter("m", lambda m: m["batch_key"] == line["batch_key"]), 0)["attempt"]

    # The line kept for a hash: a success first, then the later attempt.
    scored = F.transform(
        valid,
        lambda x: F.struct(
            (x["status"] == "succeeded").alias("ok"), member_attempt(x).alias("a"), x.alias("x")
        ),
    )
    picked = grouped.where(F.size("m") > 0).select(  # no member here: a stranger's line, dropped
        "hash", "m", F.array_max(scored)["x"].alias("x")
    )
    # The batch the row is for: the line's, else (no line) the member's latest.
    key = F.coalesce(F.col("x.batch_key"), F.array_max("m")["batch_key"])
    rows = picked.select("hash", "x", key.alias("k")).join(
        F.broadcast(_fills(store, records, failed_whole)), F.col("k") == F.col("f_key")
    )
    answered = F.col("x").isNotNull()

    def field(name: str) -> Column:
        return F.col(f"x.{name}")

    status = F.when(answered, field("status")).otherwise(F.lit("failed"))
    error_class = F.when(answered, field("error_class")).otherwise(F.col("f_class"))
    attempt = F.col("f_attempt").cast("int")  # the batch's attempt, as every row of it
    out = rows.select(
        "hash",
        status.alias("status"),
        field("text").alias("text"),
        field("finish_reason").alias("finish_reason"),
        error_class.alias("error_class"),
        F.when(answered, field("error_message"))
        .otherwise(F.col("f_message"))
        .alias("error_message"),
        field("input_tokens").alias("input_tokens"),
        field("output_tokens").alias("output_tokens"),
        F.coalesce(field("model"), F.col("f_model")).alias("model"),
        F.col("f_batch_id").alias("batch_id"),
        attempt.alias("attempt"),
    )
    final = (F.col("status") == "succeeded") | ~retry_condition(
        F.col("error_class"), F.col("attempt"), retry
    )
    return out.select(
        *out.columns,
        final.alias("final"),
        F.lit(now).alias("updated_at"),  # a literal: one value for the whole collection
        F.lit(FORMAT_VERSION).alias("format_version"),
    )


def retry_condition(error_class: Column, attempt: Column, policy: RetryPolicy) -> Column:
    """Whether a request that failed with ``error_class`` on ``attempt`` stays open: a retryable
    class with attempts left under ``policy``, or ``auth`` (sent again once the job is fixed).

    Example:
        >>> retry_condition(F.col("error_class"), F.col("attempt"), RetryPolicy())  # doctest: +SKIP
    """
    from pyspark.sql import functions as F

    condition = F.when(error_class == "auth", F.lit(True))
    for name in sorted(RETRYABLE):
        condition = condition.when(error_class == name, attempt < policy.attempts_for(name))
    return condition.otherwise(F.lit(False))


def batch_outcomes(store: Store, keys: Sequence[str]) -> Outcomes:
    """Per batch: its members' stored results at the batch's attempt, by :class:`Outcome`."""
    from pyspark.sql import functions as F

    results = store.table("results").select(
        "hash", "status", "final", "error_class", F.col("attempt").alias("r_attempt")
    )
    joined = store.members_of(keys).join(results, "hash")
    joined = joined.where(F.col("r_attempt") == F.col("attempt"))
    ok = F.col("status") == "succeeded"
    auth = F.col("error_class") == "auth"

    def count(condition: Column) -> Column:
        return F.sum(F.when(condition, 1).otherwise(0))

    counts = joined.groupBy("batch_key").agg(
        count(ok).alias("ok"),
        count(~ok & F.col("final")).alias("bad"),
        count(~F.col("final") & ~auth).alias("retry"),
        count(~F.col("final") & auth).alias("auth"),
    )
    out = {key: Outcome() for key in keys}
    for row in counts.collect():
        out[row["batch_key"]] = Outcome(
            int(row["ok"]), int(row["bad"]), int(row["retry"]), int(row["auth"])
        )
    return out
