"""The handle a detached run returns: ``llm_batch(df, ..., wait=False)`` -> :class:`BatchRun`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_llm_batch._status import JobStatus
    from spark_llm_batch._store import Store

__all__ = ["BatchRun", "is_table_name", "read_output"]


def is_table_name(target: str) -> bool:
    """A table (or catalog schema) name such as ``catalog.schema.table``, not a path: it holds
    neither ``/`` nor ``:``. The one rule for outputs, stores and job inputs."""
    return "/" not in target and ":" not in target


def read_output(spark: SparkSession, target: str) -> DataFrame:
    """The output Delta table at ``target`` (a table name or a path)."""
    if is_table_name(target):
        return spark.read.table(target)
    return spark.read.format("delta").load(target)


@dataclass(frozen=True)
class BatchRun:
    """Where a detached run left its job.

    Attributes:
        job: the job's output location (table name or path), written once complete.
        complete: every row is answered or failed for good, and the output is written.
        status: the job's figures in the store (batches by state, requests, tokens, cost).
        store: the store location.

    Example:
        >>> run = df.llm_batch("prompt", model="gpt-4o-mini", store="/lake/s", wait=False)  # doctest: +SKIP
        >>> print(run)  # doctest: +SKIP
        >>> out = run.result() if run.complete else None  # doctest: +SKIP
    """

    job: str
    complete: bool
    status: JobStatus
    store: str
    _spark: SparkSession = field(repr=False, compare=False)

    @classmethod
    def of(cls, spark: SparkSession, store: Store, job: str, *, complete: bool) -> BatchRun:
        """The handle of ``job`` with its current status."""
        from spark_llm_batch._status import status

        return cls(job, complete, status(store).job(job), store.location, spark)

    @property
    def output(self) -> str | None:
        """The output location once written, else ``None``."""
        return self.job if self.complete else None

    def result(self) -> DataFrame:
        """The output table.

        Raises:
            StoreError: the run is not complete: batches are still in flight.
        """
        from spark_llm_batch.errors import StoreError

        if not self.complete:
            raise StoreError(
                f"the job writing {self.job!r} is not complete ({self.status.in_flight} batch(es) "
                "in flight): run the same call again later to collect them"
            )
        return read_output(self._spark, self.job)

    def __str__(self) -> str:
        s = self.status
        head = "complete" if self.complete else f"in flight: {s.in_flight} batch(es)"
        return (
            f"{head}; requests done {s.requests_done}, failed {s.requests_failed}, pending "
            f"{s.requests_pending}; tokens in {s.input_tokens} out {s.output_tokens}; "
            f"output {self.job if self.complete else '(written once complete)'}"
        )
