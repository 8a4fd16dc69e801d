"""Pipeline benchmark: ``llm_batch`` end to end over 1M prompts vs a plain Delta copy of the input.

Run it with ``python -m bench pipeline [--rows N] [--repeats R] [--memory-rows N,...]``; the numbers
land in the "Pipeline" section of BENCHMARKS.md.

What it does:

- starts the emulator as a separate process (``python -m spark_llm_batch.emulator``,
  ``processing_seconds=0``: a batch completes as soon as it is created), with OpenAI's real limits
  (50,000 requests / 200 MB per batch);
- for each size, starts a fresh worker process (``python -m bench.pipeline_bench worker``) with its
  own Spark session (``local[2]``, ``spark.driver.memory=6g``, UI off). The worker writes an input
  Delta table of ``N`` distinct prompts of ~300 characters, warms the JVM up with one plain copy
  and one ``llm_batch`` of 50,000 other prompts (not timed: the first plain copy in a fresh JVM
  takes about five times as long as the next, which would flatter the ratio), then alternates,
  ``R`` times: the plain job (read the input table, write it as a new Delta table) and
  ``llm_batch`` on the same input (a fresh store each time, input → output Delta table, default
  poll policy). It checks every output row (one per input row, succeeded, and the emulator's
  answer echoes the row's own prompt) and the emulator's billing ledger (every request billed
  exactly once per run), and reports the medians, a phase breakdown from the library's log lines,
  the emulator's CPU per run, and at its end the peak RSS (``VmHWM``) of its own Python process
  (the Spark driver) and of the JVM;
- at the main size, also times the provider floor (:mod:`bench.provider_floor`): the emulator
  alone taking the same request files through upload, create, wait and download, no Spark.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._proc import cpu_seconds, java_pid, vm_hwm_mb
from bench.harness import (
    INPUT_PARTITIONS,
    MASTER,
    MODEL,
    SPARK_CONF,
    check_ledger,
    check_output,
    clear_ledger,
    load_average,
    machine_line,
    run_worker,
    settings_line,
    start_emulator,
    worker_parser,
    write_input,
)
from bench.provider_floor import provider_floor

__all__ = ["run"]

_WARM_ROWS = 50_000
_PHASES = (  # (log message prefix, phase that ends there)
    ("staged ", "encode + stage"),
    ("orchestration finished", "orchestrate (upload, create, poll, collect)"),
)


# ---- worker (one fresh process per size) --------------------------------------------------------


class _PhaseClock(logging.Handler):
    """Remembers when the library logged the messages that end each phase."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.marks: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for prefix, phase in _PHASES:
            if message.startswith(prefix):
                self.marks[phase] = time.perf_counter()


def _plain(spark: Any, source: str, target: str) -> float:
    start = time.perf_counter()
    spark.read.format("delta").load(source).write.format("delta").mode("overwrite").save(target)
    return time.perf_counter() - start


def _ours(
    spark: Any, source: str, store: str, output: str, clock: _PhaseClock, transport: str
) -> dict[str, Any]:
    import spark_llm_batch

    clock.marks.clear()
    start = time.perf_counter()
    df = spark.read.format("delta").load(source)
    spark_llm_batch.llm_batch(
        df, "prompt", model=MODEL, store=store, output=output, transport=transport
    )
    total = time.perf_counter() - start
    phases, previous = {}, start
    for _, phase in _PHASES:
        at = clock.marks.get(phase, previous)
        phases[phase] = at - previous
        previous = at
    phases["join + write output"] = start + total - previous
    return {"total": total, "phases": phases}


def _warm_up(spark: Any, work: Path, rows: int, base_url: str, transports: list[str]) -> None:
    """Untimed: one plain copy and one ``llm_batch`` per transport of a small table of other
    prompts, so that no timed job pays for the JVM's first use of its code (class loading, JIT:
    the first plain copy in a fresh JVM takes about five times as long as the next); the ledger
    is cleared."""
    import spark_llm_batch

    source = str(work / "warm_input")
    write_input(spark, source, min(rows, _WARM_ROWS), first_id=rows)
    _plain(spark, source, str(work / "warm_plain"))
    df = spark.read.format("delta").load(source)
    for transport in transports:
        store, output = str(work / f"warm_store_{transport}"), str(work / f"warm_out_{transport}")
        spark_llm_batch.llm_batch(
            df, "prompt", model=MODEL, store=store, output=output, transport=transport
        )
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(output, ignore_errors=True)
    clear_ledger(base_url)
    for name in ("warm_input", "warm_plain"):
        shutil.rmtree(work / name, ignore_errors=True)


def worker(args: argparse.Namespace) -> None:
    """Warm up, then time ``args.repeats`` alternations of plain copy and ``llm_batch``; print JSON."""
    import spark_llm_batch

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    lib_log = logging.getLogger("spark_llm_batch")
    lib_log.setLevel(logging.INFO)
    clock = _PhaseClock()
    lib_log.addHandler(clock)
    os.environ["OPENAI_API_KEY"] = "sk-bench-emulator"
    os.environ["OPENAI_BASE_URL"] = args.base_url
    work = Path(args.work)
    spark = spark_llm_batch.local_session("spark-llm-batch-bench", master=MASTER, conf=SPARK_CONF)
    spark.sparkContext.setLogLevel("ERROR")
    source = str(work / "input")
    write_input(spark, source, args.rows)
    transports = args.transports.split(",")
    _warm_up(spark, work, args.rows, args.base_url, transports)
    plain: list[float] = []
    ours: dict[str, list[dict[str, Any]]] = {t: [] for t in transports}
    emulator_cpu: dict[str, list[float]] = {t: [] for t in transports}
    for i in range(args.repeats):
        plain.append(_plain(spark, source, str(work / f"plain_{i}")))
        for transport in transports:
            cpu = cpu_seconds(args.emulator_pid)
            store, output = str(work / f"store_{transport}_{i}"), str(work / f"out_{transport}_{i}")
            run = _ours(spark, source, store, output, clock, transport)
            emulator_cpu[transport].append(cpu_seconds(args.emulator_pid) - cpu)
            ours[transport].append(run)
            print(
                f"[{args.rows} rows, repeat {i + 1}, {transport}] plain {plain[-1]:.1f} s, "
                f"llm_batch {run['total']:.1f} s ({run['total'] / plain[-1]:.2f}x) "
                + ", ".join(f"{k} {v:.1f} s" for k, v in run["phases"].items()),
                file=sys.stderr,
                flush=True,
            )
            check_output(spark, source, output)
            shutil.rmtree(work / f"store_{transport}_{i}", ignore_errors=True)
            shutil.rmtree(work / f"out_{transport}_{i}", ignore_errors=True)
        shutil.rmtree(work / f"plain_{i}", ignore_errors=True)
    java = java_pid()
    # Peaks first: the ledger check and the floor below hold far more in this process than
    # llm_batch's driver does.
    driver_peak, jvm_peak = vm_hwm_mb(), vm_hwm_mb(java) if java else float("nan")
    check_ledger(args.base_url, args.rows, args.repeats * len(transports))
    floor = None
    if args.floor:
        floor = provider_floor(spark, source, work, MODEL)
        clear_ledger(args.base_url)
    result = {
        "rows": args.rows,
        "plain": plain,
        "transports": {
            t: {
                "ours": [r["total"] for r in runs],
                "ratios": [r["total"] / p for r, p in zip(runs, plain, strict=True)],
                "phases": {
                    k: statistics.median(r["phases"][k] for r in runs) for k in runs[0]["phases"]
                },
                "emulator_cpu_per_run": statistics.median(emulator_cpu[t]),
            }
            for t, runs in ours.items()
        },
        "floor": floor,
        "driver_peak_mb": driver_peak,
        "jvm_peak_mb": jvm_peak,
        "input_mb": sum(f.stat().st_size for f in Path(source).glob("*.parquet")) / 2**20,
    }
    spark.stop()
    print(json.dumps(result), flush=True)


# ---- parent ---------------------------------------------------------------------------------------


def _measure(
    rows: int, repeats: int, base_url: str, work: Path, emulator: int, *, floor: bool
) -> dict[str, Any]:
    args = ["--rows", str(rows), "--repeats", str(repeats), "--base-url", base_url]
    args += ["--work", str(work), "--emulator-pid", str(emulator)] + (["--floor"] if floor else [])
    return run_worker("bench.pipeline_bench", *args)


def run(rows: int = 1_000_000, repeats: int = 2, memory_rows: tuple[int, ...] = (100_000,)) -> str:
    """Measure every size (a fresh worker each); return the Markdown section body."""
    emulator, base_url = start_emulator()
    results: dict[int, dict[str, Any]] = {}
    loads = [load_average()]
    try:
        for size in sorted({*memory_rows, rows}):
            with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
                count = repeats if size == rows else 1
                results[size] = _measure(
                    size, count, base_url, Path(tmp), emulator.pid, floor=size == rows
                )
            loads.append(load_average())
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
    return _report(rows, repeats, results, loads)


def _report(rows: int, repeats: int, results: dict[int, dict[str, Any]], loads: list[str]) -> str:
    main = results[rows]
    plain = statistics.median(main["plain"])
    lines = [
        f"{rows:,} distinct prompts of ~300 characters ({main['input_mb']:.0f} MB input as Delta/Parquet, "
        f"{INPUT_PARTITIONS} files) through `llm_batch` against the emulator in a separate process "
        "(`processing_seconds=0`, OpenAI limits 50,000 requests / 200 MB per batch → "
        f"{-(-rows // 50_000)} batches, default poll policy), input Delta table → output Delta table, "
        "with each transport; vs the plain Spark job reading the same input and writing it as a "
        f"Delta table, alternated in the same session, {repeats} time(s), after an untimed warm-up "
        "(see `bench/pipeline_bench.py`).",
        "",
        "| measure | result |",
        "|---|---|",
        f"| plain copy (read Delta, write Delta), median | {plain:.1f} s |",
    ]
    for transport, t in main["transports"].items():
        runs = ", ".join(
            f"{o:.1f} s / {p:.1f} s = {r:.2f}x"
            for o, p, r in zip(t["ours"], main["plain"], t["ratios"], strict=True)
        )
        lines += [
            f'| `llm_batch`, `transport="{transport}"`, median | {statistics.median(t["ours"]):.1f} s |',
            f"| ratio ours / plain, `{transport}`, median of per-pair ratios | **{statistics.median(t['ratios']):.2f}x** |",
            f"| each pair, `{transport}` (ours / plain) | {runs} |",
        ]
    floor = main.get("floor")
    if floor:
        lines.append(
            f"| provider floor: the emulator alone answers the same {floor['files']:.0f} request "
            f"files (upload, create, wait, download {floor['output_mb']:.0f} MB; no Spark), one run "
            f"| {floor['seconds']:.1f} s = **{floor['seconds'] / plain:.2f}x** the plain copy |"
        )
    for size in sorted(results):
        r = results[size]
        lines.append(
            f"| peak RSS at {size:,} rows (all runs of that size): Python driver / JVM | "
            f"{r['driver_peak_mb']:.0f} MB / {r['jvm_peak_mb']:.0f} MB |"
        )
    for size in sorted(results):
        if size != rows:
            r = results[size]
            per = ", ".join(f"`{t}` {v['ours'][0]:.1f} s" for t, v in r["transports"].items())
            lines.append(f"| {size:,} rows, one run: plain {r['plain'][0]:.1f} s | {per} |")
    for transport, t in main["transports"].items():
        lines += [
            "",
            f"Where the time goes at {rows:,} rows, `{transport}` (median of the runs):",
            "",
        ]
        lines += [f"- {phase}: {seconds:.1f} s" for phase, seconds in t["phases"].items()]
        lines += [
            f'- the emulator process (the "provider": validating, answering, writing result files) '
            f"used {t['emulator_cpu_per_run']:.0f} CPU-seconds per run on the same 2 cores."
        ]
    lines += [
        "",
        settings_line(MASTER, SPARK_CONF)
        + " Each size runs in a fresh worker process; peak RSS is `VmHWM` from `/proc` read at "
        "its end (the Python driver: the worker process itself; the JVM runs the executors too "
        "in local mode). Every run is checked: one output row per input row, all `succeeded`, each "
        "answer echoing its own prompt, and the emulator's ledger bills each request once per run.",
        machine_line(loads),
    ]
    return "\n".join(lines)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = worker_parser("python -m bench.pipeline_bench")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--emulator-pid", type=int, required=True)
    parser.add_argument("--floor", action="store_true")
    parser.add_argument("--transports", default="executors,driver")
    return parser.parse_args(argv)


if __name__ == "__main__":
    worker(_parse(sys.argv[1:]))
