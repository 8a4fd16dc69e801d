"""A Delta table's rows through ``llm_batch``, reading only what changed since the last run.

:func:`answer_table` is what :func:`~spark_llm_batch.api.llm_batch_table` (and a YAML job whose
input is a Delta table) runs. The output table's own commits say what they cover: every commit
that writes it carries a mark in its ``userMetadata`` (:class:`Mark`: the input table, the input
version its rows reflect, and a fingerprint of the call and the input's schema). The mark and the
rows are one commit, so no crash can leave one without the other.

A run finds the newest mark in the output's history. When the input has Delta's change data feed
(``delta.enableChangeDataFeed``), the mark is the call's, no commit after it changed the output,
and every change since is an insert, the run reads just those changes (``readChangeFeed`` between
the marked version and the current one: only the files those commits added), answers them through
the same store (so the pay-once guarantees are the same), and appends their output rows with the
new mark. Otherwise it answers the whole table at its current version (``versionAsOf``) and
overwrites the output, marked, as ``llm_batch`` does; the log line says why. Updates and deletes
in the input therefore cost one whole read; a grown table only its growth.

A run that leaves rows unanswered (a detached run, or a waited one out of
``poll.timeout_seconds``) writes no mark: the next run covers the same changes again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_llm_batch._handle import BatchRun
    from spark_llm_batch.config import BatchConfig

__all__ = ["MARK_PREFIX", "Mark", "answer_table"]

log = logging.getLogger("spark_llm_batch")

MARK_PREFIX = "spark_llm_batch:"
"""How an output commit's ``userMetadata`` starts when it carries a :class:`Mark`."""

# Output commits that change no row: a mark before them still says what the output holds.
_ROW_KEEPING = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES",
                          "UNSET TBLPROPERTIES", "ADD CONSTRAINT", "DROP CONSTRAINT"})  # fmt: skip
_CDF_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")


@dataclass(frozen=True)
class Mark:
    """What one output commit covers: ``source`` (the input table) at ``version``, answered by
    the call whose fingerprint (with the input's schema) is ``call``."""

    source: str
    version: int
    call: str

    def note(self) -> str:
        return MARK_PREFIX + json.dumps(
            {"source": self.source, "version": self.version, "call": self.call}, sort_keys=True
        )

    @classmethod
    def parse(cls, note: str | None) -> Mark | None:
        if not note or not note.startswith(MARK_PREFIX):
            return None
        try:
            fields = json.loads(note[len(MARK_PREFIX) :])
            return cls(str(fields["source"]), int(fields["version"]), str(fields["call"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class _Source:
    """The input Delta table: a table name or a path."""

    spark: SparkSession
    name: str

    @property
    def sql(self) -> str:
        """How SQL names it."""
        return _sql_name(self.name)

    def reader(self) -> Any:
        return self.spark.read.format("delta")

    def load(self, reader: Any) -> DataFrame:
        from spark_llm_batch._handle import is_table_name

        return reader.table(self.name) if is_table_name(self.name) else reader.load(self.name)

    def version(self) -> int | None:
        """The current version, or ``None`` when it is not a Delta table."""
        from pyspark.errors import AnalysisException

        try:
            row = self.spark.sql(f"DESCRIBE HISTORY {self.sql} LIMIT 1").first()
        except AnalysisException:
            return None
        return None if row is None else int(row["version"])

    def at(self, version: int) -> DataFrame:
        return self.load(self.reader().option("versionAsOf", version))

    def inserts(self, after: int, upto: int) -> tuple[DataFrame | None, str]:
        """The rows inserted in versions ``after + 1 .. upto``, or ``None`` and why they cannot
        stand for the change (no change feed for those versions, or an update or delete)."""
        from pyspark.errors import AnalysisException
        from pyspark.sql import functions as F

        reader = (
            self.reader()
            .option("readChangeFeed", "true")
            .option("startingVersion", after + 1)
            .option("endingVersion", upto)
        )
        try:
            changes = self.load(reader)
            other = changes.where(F.col("_change_type") != "insert").limit(1).collect()
        except AnalysisException as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return None, f"no change data feed for versions {after + 1}..{upto} ({first})"
        if other:
            return None, f"versions {after + 1}..{upto} update or delete rows"
        return changes.where(F.col("_change_type") == "insert").drop(*_CDF_COLUMNS), ""


def answer_table(
    spark: SparkSession,
    table: str,
    prompt_col: str | None,
    cfg: BatchConfig,
    *,
    wait: bool,
    incremental: bool = True,
) -> DataFrame | BatchRun:
    """Answer every row of the Delta table ``table``; see the module docstring.

    Returns what :func:`~spark_llm_batch.api.llm_batch` returns: the output table read back, or
    with ``wait=False`` a :class:`~spark_llm_batch._handle.BatchRun`. A waited run that gives up
    with some changed rows unanswered returns the output table plus those rows as they stand
    (``pending``), and leaves the table as it was.
    """
    from spark_llm_batch import _schema, api
    from spark_llm_batch._handle import BatchRun, read_output
    from spark_llm_batch._store import Store

    source = _Source(spark, table)
    version = source.version()
    current = source.load(source.reader())
    if version is None:  # not Delta: no versions to follow
        log.info("input %s is not a Delta table: reading all of it", table)
        return api.llm_batch(current, prompt_col, config=cfg, wait=wait)
    resolved, _ = _schema.resolve(cfg, spark)  # as llm_batch names the call and its output
    target = resolved.output or api.default_output(current, resolved, prompt_col)
    mark = Mark(table, version, _fingerprint(resolved, prompt_col, current))
    last, why = _last_mark(spark, target, mark) if incremental else (None, "incremental is off")

    def done(rows: DataFrame | None) -> DataFrame | BatchRun:
        if not wait:
            return BatchRun.of(spark, Store.open(spark, cfg.store), target, complete=True)
        return rows if rows is not None else read_output(spark, target)

    if last is not None and last.version == version:
        log.info("input %s unchanged since version %d: nothing to read", table, version)
        return done(None)
    rows = None
    if last is not None:
        rows, why = source.inserts(last.version, version)
    if rows is None:
        log.info("input %s: reading all of version %d (%s)", table, version, why)
        answered = api.answer_rows(source.at(version), prompt_col, cfg, target=target, wait=wait)
        if answered.open and not wait:
            return BatchRun.of(spark, answered.store, target, complete=False)
        note = None if answered.open else mark.note()  # pending rows: the next run reads all
        return done(api.write_output(answered.rows, target, note=note))
    assert last is not None
    log.info("input %s: reading the rows inserted in versions %d..%d", table, last.version + 1,
             version)  # fmt: skip
    answered = api.answer_rows(rows, prompt_col, cfg, target=target, wait=wait)
    if answered.open:
        if not wait:
            return BatchRun.of(spark, answered.store, target, complete=False)
        log.warning("some rows inserted since version %d are still pending: the output table "
                    "stays as it was; run again to collect them", last.version)  # fmt: skip
        return read_output(spark, target).unionByName(answered.rows)
    return done(api.write_output(answered.rows, target, append=True, note=mark.note()))


def _sql_name(target: str) -> str:
    """How SQL names the Delta table ``target``: a table name as it is, a path as
    ``delta.`<path>```."""
    from spark_llm_batch._handle import is_table_name

    return target if is_table_name(target) else "delta.`" + target.replace("`", "``") + "`"


def _fingerprint(cfg: BatchConfig, prompt_col: str | None, current: DataFrame) -> str:
    from spark_llm_batch import api

    identity = {**api.call_identity(cfg, prompt_col), "schema": current.schema.json()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _last_mark(spark: SparkSession, target: str, expected: Mark) -> tuple[Mark | None, str]:
    """The output's newest mark when it still says what the output holds for this call, else
    ``None`` and why not."""
    from pyspark.errors import AnalysisException

    try:
        history = spark.sql(f"DESCRIBE HISTORY {_sql_name(target)}").select(
            "version", "operation", "userMetadata"
        ).collect()  # fmt: skip
    except AnalysisException:
        return None, "no output yet"
    for row in sorted(history, key=lambda r: -int(r["version"])):
        mark = Mark.parse(row["userMetadata"])
        if mark is not None:
            if (mark.source, mark.call) != (expected.source, expected.call):
                return None, "the output was written by another call or input schema"
            if mark.version > expected.version:
                return None, f"the output covers version {mark.version}, newer than the input"
            return mark, ""
        if row["operation"] not in _ROW_KEEPING:
            return None, f"the output was changed since its last run ({row['operation']})"
    return None, "the output carries no mark of a run"
