"""The job the crash-and-resume tests run (and kill) in a subprocess.

It builds its own local Spark session, reads the input parquet table the test wrote, runs
``llm_batch`` against the emulator that lives in the TEST process, and writes the output rows as
JSON, with what the store still stages (atomically: a crashed run leaves no result file). Crash
points are chosen by the test through ``SPARK_LLM_BATCH_FAILPOINT`` in this process's environment.

Usage::

    python tests/crash_job.py --input IN --store STORE --output OUT --result RESULT.json \
        --base-url http://127.0.0.1:PORT/v1 [--provider openai|anthropic] [--max-requests 10] \
        [--max-in-flight 3] [--transport executors|driver|auto] [--lease-seconds 30]

The result file holds ``{"rows": [output rows], "chunks": n, "downloads": m}``: the store's
``chunks`` and ``downloads`` rows left once the call returned.

The API key comes from ``CRASH_JOB_API_KEY``. Exit code 0 when the call returned.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}
"""The model the job calls, per provider."""
SYSTEM = "Answer in one line."
KEY_ENV = "CRASH_JOB_API_KEY"
SUBMITTED_MARK = "-> submitted"
"""Logged (by the orchestrator) when a batch's provider id is committed: the job is polling."""


def main(argv: list[str] | None = None) -> int:
    """Run the job; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="input parquet directory")
    parser.add_argument("--store", required=True, help="store path")
    parser.add_argument("--output", required=True, help="output Delta table path")
    parser.add_argument("--result", required=True, help="where to write the output rows as JSON")
    parser.add_argument("--base-url", required=True, help="the emulator's base URL for --provider")
    parser.add_argument("--provider", choices=tuple(MODELS), default="openai")
    parser.add_argument("--max-requests", type=int, default=10)
    parser.add_argument("--max-in-flight", type=int, default=3)
    parser.add_argument("--transport", choices=("auto", "executors", "driver"), default="auto")
    # The re-run takes over the killed run's batches once its leases expire: a short lease keeps
    # the wait small, yet long enough that a heartbeat on a loaded machine never misses it.
    parser.add_argument("--lease-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)

    import spark_llm_batch
    from spark_llm_batch.config import BatchLimits, PollPolicy

    spark = spark_llm_batch.local_session(
        "spark-llm-batch-crash-job",
        master="local[2]",
        conf={"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4"},
    )
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.read.parquet(args.input)
    out = spark_llm_batch.llm_batch(
        df,
        "prompt",
        model=MODELS[args.provider],
        store=args.store,
        output=args.output,
        id_col="id",
        system=SYSTEM,
        params={"temperature": 0},
        limits=BatchLimits(max_requests=args.max_requests),
        max_in_flight=args.max_in_flight,
        transport=args.transport,
        lease_seconds=args.lease_seconds,
        poll=PollPolicy(initial_seconds=0.1, max_seconds=0.5, progress_seconds=2.0),
        provider_settings={"api_key": os.environ[KEY_ENV], "base_url": args.base_url},
    )
    rows = [row.asDict(recursive=True) for row in out.select("id", "prompt", "llm").collect()]
    left = {
        name: spark.read.format("delta").load(f"{args.store}/{name}").count()
        for name in ("chunks", "downloads")
    }
    result = Path(args.result)
    partial = result.with_name(result.name + ".partial")
    partial.write_text(json.dumps({"rows": rows, **left}, default=str), encoding="utf-8")
    partial.replace(result)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
