"""The job the bounded-memory test runs in its own JVM: a small heap and one skewed partition.

It starts a local Spark session with ``spark.driver.memory`` as given (the driver's heap runs the
executors too in local mode), writes an input of ``--rows`` prompts of ``--prompt-chars``
characters, gathers them into ONE partition (``coalesce(1)``), runs ``llm_batch`` against the
emulator of the TEST process, and prints one JSON line: the output's row count, how many rows
succeeded with an answer echoing their own prompt, and the peak RSS of this Python process (the
Spark driver's Python side). Exit code 0 when the call returned.

Usage::

    python tests/small_heap_job.py --work DIR --base-url URL --rows N --prompt-chars C --heap 512m
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Run the job; print its JSON line; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="a fresh directory for input, store, output")
    parser.add_argument("--base-url", required=True, help="the emulator's OpenAI base URL")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--prompt-chars", type=int, required=True)
    parser.add_argument("--heap", required=True, help="spark.driver.memory, e.g. 512m")
    args = parser.parse_args(argv)
    os.environ["OPENAI_API_KEY"] = "sk-test-emulator"
    os.environ["OPENAI_BASE_URL"] = args.base_url
    logging.basicConfig(level=logging.WARNING)

    from pyspark.sql import functions as F

    import spark_llm_batch

    conf = {"spark.ui.enabled": "false", "spark.driver.memory": args.heap}
    spark = spark_llm_batch.local_session("small-heap", master="local[2]", conf=conf)
    spark.sparkContext.setLogLevel("ERROR")
    work = Path(args.work)
    idx = F.col("id").cast("string")
    # Distinct prompts (each starts with its id), padded with hex digits to the wanted size.
    pad = F.repeat(F.sha2(idx, 512), args.prompt_chars // 128 + 1)
    prompt = F.substring(F.concat(F.lit("Row "), idx, F.lit(": "), pad), 1, args.prompt_chars)
    spark.range(0, args.rows, 1, 8).select("id", prompt.alias("prompt")).write.format("delta").save(
        str(work / "input")
    )
    skewed = spark.read.format("delta").load(str(work / "input")).coalesce(1)
    out = spark_llm_batch.llm_batch(
        skewed, "prompt", model="gpt-4o-mini", store=str(work / "store"),
        output=str(work / "output"), id_col="id",
    )  # fmt: skip
    echo = F.col("llm.text").contains(F.concat(F.lit("Row "), idx, F.lit(":")))
    counts = out.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(((F.col("llm.status") == "succeeded") & echo).cast("int")).alias("answered"),
    ).first()
    assert counts is not None
    print(json.dumps({"partitions": skewed.rdd.getNumPartitions(), "rows": counts["rows"],
                      "answered": counts["answered"], "driver_peak_mb": _peak_mb()}))  # fmt: skip
    spark.stop()
    return 0


def _peak_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    sys.exit(main())
