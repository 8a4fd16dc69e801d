"""``spark-submit`` entry point: read a YAML job, run ``llm_batch``, print a summary.

Usage::

    spark-submit jobs/run_job.py --conf conf/example_job.yaml
    python jobs/run_job.py --conf conf/example_job.yaml   # with a local Delta session

Exit codes: 0 all rows answered, 1 some rows failed or are still pending, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    """Run the job described by ``--conf``; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", required=True, help="YAML job file (see conf/example_job.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    import spark_llm_batch
    from spark_llm_batch.config import JobConfig
    from spark_llm_batch.errors import ConfigError

    try:
        job = JobConfig.from_file(args.conf)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spark = spark_llm_batch.get_session()
    if "/" in job.input or ":" in job.input:
        df = spark.read.format(job.input_format).load(job.input)
    else:
        df = spark.read.table(job.input)
    try:
        out = spark_llm_batch.llm_batch(df, job.prompt_col, config=job.batch)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = {
        row["status"]: row["count"]
        for row in out.groupBy(f"{job.batch.result_col}.status").count().collect()
    }
    print(f"rows by status: {counts}")
    return 0 if set(counts) <= {"succeeded"} else 1


if __name__ == "__main__":
    sys.exit(main())
