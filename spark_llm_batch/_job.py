"""A job from YAML: read the input, run ``llm_batch``, print a summary, return an exit code.

What ``spark-llm-batch run --config FILE`` (and ``spark-submit jobs/run_job.py --config FILE``)
runs. The file is a :class:`~spark_llm_batch.config.JobConfig` (``conf/example_job.yaml`` shows
every option).

Exit codes:
    0: every row answered; or a detached run (``wait: false`` or ``no_wait``) whose batches are
       still in flight: run the same command again later (e.g. on a schedule) to collect them.
    1: some rows failed (the summary counts them by failure class), some are still pending after
       a waited run gave up (``batch.poll.timeout_seconds``), or the run stopped on a provider or
       store error.
    2: bad configuration: the file, a field (named), the input, or the call's options.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from spark_llm_batch._handle import BatchRun

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_llm_batch.config import JobConfig

__all__ = ["EXIT_BAD_CONFIG", "EXIT_FAILED", "EXIT_OK", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2

log = logging.getLogger("spark_llm_batch")


def main(config_path: str, *, no_wait: bool = False) -> int:
    """Run the job described by the YAML file ``config_path``; return the exit code.

    Args:
        config_path: a :class:`~spark_llm_batch.config.JobConfig` YAML file.
        no_wait: run detached whatever the file's ``wait`` says.

    Example:
        >>> main("conf/example_job.yaml")  # doctest: +SKIP
        0
    """
    from spark_llm_batch.config import JobConfig
    from spark_llm_batch.errors import ConfigError, SparkLLMBatchError

    # A job's log is its progress report (basicConfig leaves a configured logging alone).
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        job = JobConfig.from_file(config_path)
    except ConfigError as exc:
        return _bad_config(str(exc))
    from pyspark.errors import AnalysisException

    spark = _session()
    try:
        df = _read_input(spark, job)
    except AnalysisException as exc:
        field = "query" if job.query is not None else "input"
        return _bad_config(f"{field}: cannot read {_source(job)}: {_first_line(exc)}")
    try:
        if job.wait and not no_wait:
            return _waited(df, job)
        return _detached(df, job)
    except ConfigError as exc:
        return _bad_config(str(exc))
    except SparkLLMBatchError as exc:
        # Provider refusals (credentials, billing), failed batches, store errors: what was done
        # is in the store; the same command resumes once the cause is fixed.
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _session() -> SparkSession:
    """The Spark session (:func:`~spark_llm_batch.session.get_session`: spark-submit's settings
    as they are, when it started the driver), its master logged."""
    import spark_llm_batch

    spark = spark_llm_batch.get_session()
    log.info("spark session: master %s", spark.conf.get("spark.master", "(not set)"))
    return spark


def _read_input(spark: SparkSession, job: JobConfig) -> DataFrame:
    if job.query is not None:
        return spark.sql(job.query)
    assert job.input is not None  # JobConfig: exactly one of input and query
    if job.input_is_path:
        return spark.read.format(job.input_format).load(job.input)
    return spark.read.table(job.input)


def _call(df: DataFrame, job: JobConfig, *, wait: bool) -> DataFrame | BatchRun:
    """``llm_batch`` on the input; over a table, :func:`~spark_llm_batch.api.llm_batch_table`
    (which reads only what changed since the last run when it can)."""
    import spark_llm_batch

    if job.follows_versions:
        assert job.input is not None
        return spark_llm_batch.llm_batch_table(
            df.sparkSession, job.input, job.prompt_col, config=job.batch, wait=wait,
            incremental=job.incremental,
        )  # fmt: skip
    return spark_llm_batch.llm_batch(df, job.prompt_col, config=job.batch, wait=wait)


def _waited(df: DataFrame, job: JobConfig) -> int:
    out = _call(df, job, wait=True)
    assert not isinstance(out, BatchRun)
    return _report(out, job, job.batch.output)


def _detached(df: DataFrame, job: JobConfig) -> int:
    """Advance the run as far as it goes without waiting; report it, or its output once done."""
    run = _call(df, job, wait=False)
    assert isinstance(run, BatchRun)
    if not run.complete:
        print(f"in flight: {run}")
        print(
            "the batches are in flight (recorded in the store): run the same command again "
            "later to collect them; it exits 0 and prints 'complete' once every row is answered"
        )
        return EXIT_OK
    return _report(run.result(), job, run.output)


def _report(out: DataFrame, job: JobConfig, output: str | None) -> int:
    """Print rows by status and failure class; the exit code they make."""
    from pyspark.sql import functions as F

    result = job.batch.result_col
    rows = (
        out.groupBy(F.col(f"{result}.status").alias("status"), F.col(f"{result}.error_class"))
        .count()
        .collect()
    )
    by_status: dict[str, int] = {}
    failures: dict[str, int] = {}
    for row in rows:
        by_status[row["status"]] = by_status.get(row["status"], 0) + row["count"]
        if row["status"] != "succeeded":
            failures[row["error_class"]] = failures.get(row["error_class"], 0) + row["count"]
    total = sum(by_status.values())
    counts = ", ".join(f"{status} {n}" for status, n in sorted(by_status.items()))
    where = output or f"a table under the store {job.batch.store} (set batch.output to name it)"
    print(f"rows: {total} ({counts or 'none'}); output: {where}")
    if failures:
        classes = ", ".join(f"{cls} {n}" for cls, n in sorted(failures.items()))
        print(f"not answered: {classes} (see {result}.error_class and {result}.error_message)")
        if "pending" in failures:
            print("pending rows are still in flight: run the same command again to collect them")
        return EXIT_FAILED
    print("complete: every row answered")
    return EXIT_OK


def _bad_config(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_CONFIG


def _source(job: JobConfig) -> str:
    if job.query is not None:
        return "the query"
    return f"{job.input_format} path {job.input!r}" if job.input_is_path else f"table {job.input!r}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
