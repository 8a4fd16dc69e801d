"""Scale benchmark: a big table on a default local session, then a daily run after 1 % growth.

Run it with ``python -m bench scale [--rows N] [--partitions 2,400]`` (default: 10,000,000 rows,
both partitionings below); the numbers land in the "Scale" section of BENCHMARKS.md.

For each input partitioning (2 partitions of ``N/2`` rows: the skewed case; and 400 small ones),
a fresh worker process starts a Spark session the way a new user does: ``local[2]``, no memory
settings (the default 1 GiB heap runs driver and executors), UI off. It writes ``N`` distinct
prompts of ~300 characters as a Delta table with the change data feed on, then times:

1. the first ``llm_batch_table`` run (everything is new: all ``N`` requests are sent);
2. ``N/100`` rows appended, the daily run (``incremental``, the default): only the new rows;
3. ``N/100`` more rows appended, the same call with ``incremental=False``: what a daily run cost
   before (the whole table read and hashed; the new rows sent).

For each: wall time, and the bytes the JVM read (``rchar`` of ``/proc/<jvm>/io``: input, store,
shuffle and spill reads together). At the end: the peak RSS of the Python driver and of the JVM.
Every run is checked: one output row per input row, all succeeded with an answer to its own
prompt, and the emulator's ledger bills each request once over the three runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._proc import java_pid, vm_hwm_mb
from bench.harness import (
    MODEL,
    check_output,
    clear_ledger,
    ledger_counts,
    load_average,
    run_worker,
    start_emulator,
    worker_parser,
    write_input,
)

__all__ = ["run"]

_PARTITIONINGS = (2, 400)


def _rchar(pid: int | None) -> int:
    if pid is None:
        return 0
    with open(f"/proc/{pid}/io", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def _timed(java: int | None, call: Any) -> dict[str, float]:
    before, start = _rchar(java), time.perf_counter()
    call()
    return {"seconds": time.perf_counter() - start, "read_mb": (_rchar(java) - before) / 2**20}


def worker(args: argparse.Namespace) -> None:
    """Write the input, time the three runs, print one JSON line."""
    import spark_llm_batch

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("spark_llm_batch").setLevel(logging.INFO)
    os.environ["OPENAI_API_KEY"] = "sk-bench-emulator"
    os.environ["OPENAI_BASE_URL"] = args.base_url
    work = Path(args.work)
    spark = spark_llm_batch.local_session(
        "spark-llm-batch-scale", master="local[2]", conf={"spark.ui.enabled": "false"}
    )
    spark.sparkContext.setLogLevel("ERROR")
    java = java_pid()
    source, output = str(work / "input"), str(work / "output")
    spark.sql(
        f"CREATE TABLE delta.`{source}` (id BIGINT, prompt STRING) USING DELTA "
        "TBLPROPERTIES (delta.enableChangeDataFeed = true)"
    )
    write_input(spark, source, args.rows, partitions=args.partitions, mode="append")
    options = {"model": MODEL, "store": str(work / "store"), "output": output}

    def call(**extra: Any) -> None:
        spark_llm_batch.llm_batch_table(spark, source, "prompt", **options, **extra)

    first = _timed(java, call)
    check_output(spark, source, output)
    growth = max(1, args.rows // 100)
    write_input(spark, source, growth, first_id=args.rows, partitions=2, mode="append")
    daily = _timed(java, call)
    check_output(spark, source, output)
    # The baseline grows by as much again, so that it too sends its new rows.
    write_input(spark, source, growth, first_id=args.rows + growth, partitions=2, mode="append")
    whole = _timed(java, lambda: call(incremental=False))
    check_output(spark, source, output)
    driver_peak, jvm_peak = vm_hwm_mb(), vm_hwm_mb(java) if java else float("nan")
    billed = ledger_counts(args.base_url)
    if len(billed) != args.rows + 2 * growth or set(billed.values()) != {1}:
        raise SystemExit(f"ledger: {len(billed)} requests billed, counts {set(billed.values())}")
    spark.stop()
    result = {"first": first, "daily": daily, "whole": whole, "growth": growth,
              "driver_peak_mb": driver_peak, "jvm_peak_mb": jvm_peak}  # fmt: skip
    print(json.dumps(result), flush=True)


def run(rows: int = 10_000_000, partitionings: tuple[int, ...] = _PARTITIONINGS) -> str:
    """Each partitioning (default: both) in a fresh worker; return the Markdown section body."""
    emulator, base_url = start_emulator()
    results: dict[int, dict[str, Any]] = {}
    loads = [load_average()]
    try:
        for partitions in partitionings:
            clear_ledger(base_url)
            with tempfile.TemporaryDirectory(prefix="llm-scale-") as tmp:
                args = ["--rows", str(rows), "--partitions", str(partitions)]
                args += ["--base-url", base_url, "--work", tmp]
                results[partitions] = run_worker("bench.scale_bench", *args)
            loads.append(load_average())
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
    return _report(rows, results, loads)


def _report(rows: int, results: dict[int, dict[str, Any]], loads: list[str]) -> str:
    lines = [
        f"{rows:,} distinct prompts of ~300 characters in a Delta table with the change data "
        "feed on, through `llm_batch_table` against the emulator in a separate process "
        "(`processing_seconds=0`, OpenAI limits), on a session with no memory settings "
        "(`local[2]`, default 1 GiB heap, UI off); then 1 % more rows appended and the daily "
        "run, beside a run after as much growth again that reads the whole table "
        "(`incremental=False`, what a daily run cost before). See "
        "`bench/scale_bench.py`.",
        "",
        "| input partitions | first run | daily run (+1 %) | whole-table run | daily / first: "
        "time, bytes read | daily / whole: time, bytes read | peak RSS: Python driver / JVM |",
        "|---|---|---|---|---|---|---|",
    ]
    for partitions, r in results.items():
        first, daily, whole = r["first"], r["daily"], r["whole"]
        cells = [
            f"{partitions} ({rows // partitions:,} rows each)",
            f"{first['seconds']:.0f} s, read {first['read_mb']:,.0f} MB",
            f"{daily['seconds']:.1f} s, read {daily['read_mb']:,.0f} MB",
            f"{whole['seconds']:.1f} s, read {whole['read_mb']:,.0f} MB",
            _ratio(daily, first),
            _ratio(daily, whole),
            f"{r['driver_peak_mb']:.0f} MB / {r['jvm_peak_mb']:.0f} MB",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Bytes read: `rchar` of the JVM process (input, store tables, shuffle and spill reads). "
        "Every run checked (one output row per input row, each answering its own prompt) and "
        "the ledger billed each request once over the three runs. Machine: 2 cores, shared "
        f"(load average before/after each partitioning: {' → '.join(loads)}).",
    ]
    return "\n".join(lines)


def _ratio(run: dict[str, float], baseline: dict[str, float]) -> str:
    seconds = run["seconds"] / baseline["seconds"]
    return f"{seconds:.2f}x, {run['read_mb'] / max(baseline['read_mb'], 1e-9):.3f}x"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = worker_parser("python -m bench.scale_bench")
    parser.add_argument("--partitions", type=int, required=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    worker(_parse(sys.argv[1:]))
