"""Collection: ended batches' result lines become one results row per member, merged into the store.

One path, whatever the transport:

1. Each batch's members (from ``chunks``, narrow: hash and attempt) go to one Spark task: a grouped
   map over ``batch_key``, a partition per batch (``repartitionByRange``; only the narrow member
   rows are shuffled).
2. In that task (:class:`_Meet`) the batch's result lines meet its members: the lines are read from
   the provider right there (``transport="executors"``) or arrive in the same group, downloaded
   beforehand by the driver into the store (``"driver"``); see
   :meth:`~spark_llm_batch._transport.Transport.result_lines`. A line for a hash that is no member
   is dropped, two lines for one member keep the first success (else the first line), and a member
   without a line gets its batch's fill (``missing``, or ``batch_failed`` with the provider's
   message; batches failed as a whole are not read). So every row leaves the task once, with no
   shuffle of the wide result rows; ``final`` is added in the JVM from the retry policy
   (:func:`retry_condition`).
3. One MERGE into ``results`` (:meth:`Store.merge_results`): insert-only when every batch is a first
   attempt (a row already there can only be this same collection's, committed before a crash), the
   full MERGE otherwise (a final row is never overwritten, an older attempt never overwrites a
   newer one). A hash that is a member of two of the batches (an attempt left uncollected by a
   crash, and its retry) is found first, from the members alone; such batches are then merged one
   at a time, in attempt order, so the MERGE rules decide between their rows.
4. The outcomes per batch are counted from the rows in ``results`` that carry its batch id
   (:func:`batch_outcomes`); no result row reaches the driver.

Authentication, permission and billing failures (class ``auth``) are stored with ``final`` false:
they are no answer, the job stops on them (the orchestrator raises), and the next run sends them
again once the credentials are fixed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from spark_llm_batch._arrow_rows import ROWS_PER_BATCH, no_cyclic_gc, rows_batch
from spark_llm_batch._results import RETRYABLE
from spark_llm_batch._store_tables import (
    FORMAT_VERSION,
    RESULT_COLUMNS,
    RESULT_FIELDS,
    BatchRecord,
    ddl,
)
from spark_llm_batch.config import RetryPolicy
from spark_llm_batch.providers.base import BatchState, Provider, ProviderBatch, ResultRow

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame

    from spark_llm_batch._schema import Structured
    from spark_llm_batch._store import Store
    from spark_llm_batch._transport import ResultLines, Transport

__all__ = ["Outcome", "Outcomes", "batch_outcomes", "collect_batches", "retry_condition"]


class Outcome(NamedTuple):
    """One collected batch's members, by what their results say."""

    succeeded: int = 0
    failed: int = 0  # failed for good
    retry: int = 0  # open: another attempt is due
    auth: int = 0  # refused for credentials, permission or billing: the job must stop
    input_tokens: int = 0  # what the batch's answers used: what the provider bills
    output_tokens: int = 0


_OUTCOME_COLUMNS = ("ok", "bad", "retry", "auth", "input_tokens", "output_tokens")
"""The aggregate columns of :func:`batch_outcomes`, in :class:`Outcome` field order."""

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
    structured: Structured | None = None,
) -> Outcomes:
    """Read the results of ended batches and MERGE one row per member into ``results``.

    One commit (the MERGE; one per batch when their members overlap); running it again after a
    crash changes nothing.

    Args:
        store: the store.
        transport: brings the result lines to the collection tasks.
        records: the ended batches' current records.
        retry: decides which failed rows stay open (``final`` false) for another attempt.
        failed_whole: batch key -> the provider's message, for batches that failed as a whole:
            their members are recorded ``batch_failed`` without reading any result.
        structured: how structured answers are read: a succeeded answer that does not parse,
            or lacks a required field, is recorded as an ``invalid_output`` failure (its text
            kept), checked in the JVM.

    Returns:
        The outcome of every batch of ``records``, counted from ``results`` once merged.
    """
    if not records:
        return {}
    failed_whole = failed_whole or {}
    groups = [list(records)]
    if len(records) > 1 and _members_overlap(store, [r.key for r in records]):
        groups = [[r] for r in sorted(records, key=lambda r: (r.attempt, r.key))]
    for group in groups:
        _merge_group(store, transport, group, retry, failed_whole, structured)
    return batch_outcomes(store, records)


def _members_overlap(store: Store, keys: Sequence[str]) -> bool:
    """Whether some hash is a member of two of the batches (narrow columns only)."""
    from pyspark.sql import functions as F

    twice = store.members_of(keys).groupBy("hash").agg(F.count(F.lit(1)).alias("n"))
    return bool(twice.where(F.col("n") > 1).limit(1).collect())


def _merge_group(
    store: Store,
    transport: Transport,
    records: Sequence[BatchRecord],
    retry: RetryPolicy,
    failed_whole: dict[str, str],
    structured: Structured | None,
) -> None:
    readable = [provider_batch(r) for r in records if r.key not in failed_whole]
    now = dt.datetime.now(dt.timezone.utc)
    with transport.result_lines(readable) as lines:
        source = _source(store, records, lines, failed_whole, retry, now)
        if structured is not None:
            source = _checked(source, structured, retry)
        store.merge_results(source, insert_only=all(r.attempt == 1 for r in records))


def _source(
    store: Store,
    records: Sequence[BatchRecord],
    lines: ResultLines,
    failed_whole: dict[str, str],
    retry: RetryPolicy,
    now: dt.datetime,
) -> DataFrame:
    """One results row per member of ``records`` (results-table columns), see the module docstring."""
    from pyspark.sql import functions as F

    keys = [r.key for r in records]
    nothing = [F.lit(None).cast(kind).alias(name) for name, kind in RESULT_FIELDS]
    group = store.members_of(keys).select(
        "batch_key", "hash", F.lit(True).alias("member"), *nothing
    )
    if lines.staged is not None:
        got = lines.staged.where(F.col("batch_key").isin(keys))
        group = group.unionByName(
            got.select("batch_key", "hash", F.lit(False).alias("member"), *_LINE)
        )
    fills = {
        r.key: _Fill(
            batch=None if r.key in failed_whole else provider_batch(r),
            batch_id=r.batch_id,
            model=r.model,
            attempt=r.attempt,
            error_class="batch_failed" if r.key in failed_whole else "missing",
            message=failed_whole.get(
                r.key, f"no result line for this request in batch {r.batch_id}"
            ),
        )
        for r in records
    }
    met = (
        group.repartitionByRange(len(keys), "batch_key")  # a partition per batch, about
        .groupBy("batch_key")
        .applyInArrow(_iterator_form(_Meet(fills, lines.reader)), ddl(_MET_COLUMNS))
    )
    final = (F.col("status") == "succeeded") | ~retry_condition(
        F.col("error_class"), F.col("attempt"), retry
    )
    return met.select(
        *met.columns,
        final.alias("final"),
        F.lit(now).alias("updated_at"),  # a literal: one value for the whole collection
        F.lit(FORMAT_VERSION).alias("format_version"),
    )


INVALID_OUTPUT_MESSAGE = (
    "the answer does not match response_format (it is not JSON of that shape, or a required "
    "field is missing or null): the raw answer is in text"
)


def _checked(source: DataFrame, structured: Structured, retry: RetryPolicy) -> DataFrame:
    """``source`` with its succeeded answers that break the format recorded ``invalid_output``
    (and ``final`` again from the retry policy)."""
    from pyspark.sql import functions as F

    parsed = F.from_json(F.col("text"), structured.kind)
    broken = parsed.isNull()
    for name in structured.required:
        broken = broken | parsed[name].isNull()
    bad = (F.col("status") == "succeeded") & broken
    changed = {
        "status": F.when(bad, F.lit("failed")).otherwise(F.col("status")),
        "error_class": F.when(bad, F.lit("invalid_output")).otherwise(F.col("error_class")),
        "error_message": F.when(bad, F.lit(INVALID_OUTPUT_MESSAGE)).otherwise(
            F.col("error_message")
        ),
        "final": F.when(
            bad, ~retry_condition(F.lit("invalid_output"), F.col("attempt"), retry)
        ).otherwise(F.col("final")),
    }
    return source.select(*[changed.get(c, F.col(c)).alias(c) for c in source.columns])


_MET_COLUMNS = RESULT_COLUMNS[: [name for name, _ in RESULT_COLUMNS].index("final")]
"""What a collection task gives per member: the results table's columns before ``final``."""

_MODEL_AT = 1 + _LINE.index("model")
"""Where a :data:`ResultRow` (custom id first) holds the model."""


def _iterator_form(
    meet: _Meet,
) -> Callable[[tuple[pa.Scalar, ...], Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``meet`` as a function whose type hints ask ``applyInArrow`` for its iterator form (a
    group's rows stream in Arrow batches; rows stream out)."""
    import pyarrow as pa

    def grouped(
        key: tuple[pa.Scalar, ...], batches: Iterator[pa.RecordBatch]
    ) -> Iterator[pa.RecordBatch]:
        return meet(key, batches)

    # Spark reads these at runtime: real types, not the strings postponed annotations leave.
    grouped.__annotations__ = {
        "key": tuple[pa.Scalar, ...],
        "batches": Iterator[pa.RecordBatch],
        "return": Iterator[pa.RecordBatch],
    }
    return grouped


@dataclass(frozen=True)
class _Fill:
    """What a collection task knows of its batch: where to read its lines (``batch``: ``None`` when
    it failed as a whole), and what a member without a line gets."""

    batch: ProviderBatch | None
    batch_id: str | None
    model: str | None
    attempt: int
    error_class: str
    message: str


@dataclass(frozen=True)
class _Meet:
    """The grouped-map function of collection: one batch's member rows (and the lines the driver
    staged, if any) in; one row per member out (see the module docstring)."""

    fills: dict[str, _Fill]
    reader: Provider | None

    def __call__(
        self, key: tuple[pa.Scalar, ...], batches: Iterator[pa.RecordBatch]
    ) -> Iterator[pa.RecordBatch]:
        fill = self.fills[key[0].as_py()]
        meeting = _Meeting(fill)
        with no_cyclic_gc():  # parsing: see _arrow_rows
            for batch in batches:
                meeting.add_group_rows(batch)
            if self.reader is not None and fill.batch is not None:
                for row in self.reader.iter_result_rows(fill.batch):
                    meeting.line(row)
                    if len(meeting.out) >= ROWS_PER_BATCH:
                        yield meeting.flush()
            meeting.finish()
        while meeting.out:
            yield meeting.flush(ROWS_PER_BATCH)


class _Meeting:
    """One batch's members and lines, as a collection task meets them."""

    def __init__(self, fill: _Fill) -> None:
        self.fill = fill
        self.members: set[str] = set()
        self.answered: set[str] = set()  # members whose success left already
        self.failures: dict[str, ResultRow] = {}  # first failure line per member, held
        self.held: list[ResultRow] = []  # lines seen before their member (strangers, until the end)
        self.out: list[tuple[Any, ...]] = []

    def add_group_rows(self, batch: pa.RecordBatch) -> None:
        """Rows of the group: members, and lines the driver staged (``member`` false)."""
        import pyarrow.compute as pc

        is_member = batch.column("member")
        self.members.update(batch.filter(is_member).column("hash").to_pylist())
        staged = batch.filter(pc.invert(is_member))
        if staged.num_rows:
            columns = [staged.column(name).to_pylist() for name in ("hash", *_LINE)]
            for row in zip(*columns, strict=True):
                self.line(row)

    def line(self, row: ResultRow) -> None:
        """One result line: kept when it is the first success (else the first line) of a member."""
        hash_ = row[0]
        if hash_ not in self.members:
            self.held.append(row)
        elif hash_ in self.answered:
            pass
        elif row[1] == "succeeded":
            self.answered.add(hash_)
            self.failures.pop(hash_, None)
            self._emit(row)
        elif hash_ not in self.failures:
            self.failures[hash_] = row

    def finish(self) -> None:
        """The held lines of members, the failures, then a fill for every member with no line."""
        held, self.held = self.held, []
        for row in held:
            if row[0] in self.members:
                self.line(row)
        for row in self.failures.values():
            self._emit(row)
        fill = self.fill
        filled = {"status": "failed", "error_class": fill.error_class,
                  "error_message": fill.message, "model": fill.model,
                  "batch_id": fill.batch_id, "attempt": fill.attempt}  # fmt: skip
        names = [name for name, _ in _MET_COLUMNS]
        for hash_ in self.members.difference(self.answered, self.failures):
            self.out.append(tuple(hash_ if n == "hash" else filled.get(n) for n in names))
        self.failures = {}

    def _emit(self, row: ResultRow) -> None:
        """A line as a row of :data:`_MET_COLUMNS`: its fields (the batch's model when it names
        none), then the batch's id and attempt."""
        fill = self.fill
        model = row[_MODEL_AT] or fill.model
        self.out.append(
            (*row[:_MODEL_AT], model, *row[_MODEL_AT + 1 :], fill.batch_id, fill.attempt)
        )

    def flush(self, limit: int | None = None) -> pa.RecordBatch:
        """The rows out so far (at most ``limit``) as an Arrow batch of :data:`_MET_COLUMNS`."""
        rows, self.out = (self.out, []) if limit is None else (self.out[:limit], self.out[limit:])
        return rows_batch(_MET_COLUMNS, rows)


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


def batch_outcomes(store: Store, records: Sequence[BatchRecord]) -> Outcomes:
    """Per batch: the stored results it wrote, by :class:`Outcome`.

    A created batch's rows are found by the batch id they carry (no join: one narrow scan of
    ``results``); the rows of a batch never created (it failed as a whole before the provider gave
    it an id) through its members, at its attempt. A member whose row another batch wrote (a later
    attempt) counts for that batch only.
    """
    from pyspark.sql import functions as F

    results = store.table("results")
    by_id = {r.batch_id: r.key for r in records if r.batch_id}
    never = [r.key for r in records if not r.batch_id]
    frames = []
    if by_id:
        written = results.where(F.col("batch_id").isin(list(by_id)))
        frames.append(
            written.select(
                F.col("batch_id").alias("id"),
                "status",
                "final",
                "error_class",
                "input_tokens",
                "output_tokens",
            )
        )
    if never:
        rows = results.where(F.col("batch_id").isNull()).select(
            "hash", "status", "final", "error_class", F.col("attempt").alias("r_attempt")
        )
        joined = store.members_of(never).join(rows, "hash")
        joined = joined.where(F.col("r_attempt") == F.col("attempt"))
        no_tokens = F.lit(None).cast("bigint")  # never created: nothing was billed
        frames.append(
            joined.select(
                F.col("batch_key").alias("id"),
                "status",
                "final",
                "error_class",
                no_tokens.alias("input_tokens"),
                no_tokens.alias("output_tokens"),
            )
        )
    ok = F.col("status") == "succeeded"
    auth = F.col("error_class") == "auth"

    def count(condition: Column) -> Column:
        return F.sum(F.when(condition, 1).otherwise(0))

    both = frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
    counts = both.groupBy("id").agg(
        count(ok).alias("ok"),
        count(~ok & F.col("final")).alias("bad"),
        count(~F.col("final") & ~auth).alias("retry"),
        count(~F.col("final") & auth).alias("auth"),
        F.coalesce(F.sum("input_tokens"), F.lit(0)).alias("input_tokens"),
        F.coalesce(F.sum("output_tokens"), F.lit(0)).alias("output_tokens"),
    )
    out = {r.key: Outcome() for r in records}
    for row in counts.collect():
        key = by_id.get(row["id"], row["id"])
        out[key] = Outcome(*(int(row[name]) for name in _OUTCOME_COLUMNS))
    return out
