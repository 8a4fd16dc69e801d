"""Collection benchmark: ``collect_batches`` + the per-batch outcomes, old path vs new, same session.

Run it with ``python -m bench.collect_bench [--rows N] [--repeats R] [--fault-rate F]``; it prints
a Markdown summary (it does not touch BENCHMARKS.md).

What it does:

- starts the emulator as a separate process (``processing_seconds=0``, OpenAI's real limits:
  50,000 requests per batch), optionally failing a fraction ``F`` of the requests with a server
  error (retryable: those rows stay open for another attempt);
- runs the real pipeline (``llm_batch`` on ``N`` distinct prompts of ~300 characters) up to the
  moment the orchestrator would collect: every batch has ended and its ``ended`` record is
  committed. The orchestrator's ``_collect`` is replaced by a hook that keeps the records and stops
  the run, and collection waits until no batch is in flight, so all ``N / 50,000`` batches are
  collected together, as in the pipeline benchmark (not timed);
- then alternates, ``R`` times each, the old path (:mod:`bench._collect_baseline`, a frozen copy
  of the code before the rewrite, its OpenAI line parser included: parse, shuffle-join with the
  members, group by hash, MERGE, then ``batch_outcomes`` joining members with results again) and
  the new one (``_collect.collect_batches``, which returns the outcomes), each on a fresh copy of
  the store as it was before collection (``results`` empty; the other tables shared read-only),
  timing collection + outcomes: wall seconds, and CPU-seconds of this process tree (the Spark
  driver, its JVM and Python workers; not the emulator);
- checks that both paths leave the same ``results`` rows (every column but ``updated_at``) and the
  same per-batch outcomes; and times a second collection of the same batches into the new path's
  store (a resume after a crash during collection: everything matches, nothing may change).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench._proc import children_of, process_table
from bench.pipeline_bench import _MASTER, _SPARK_CONF, _load, _write_input, start_emulator

__all__ = ["run"]

_MODEL = "gpt-4o-mini"
Outcomes = dict[str, tuple[int, int, int]]


class _Captured(Exception):
    """Raised by the hook in place of the orchestrator's collection."""


def _prepare(spark: Any, work: Path, rows: int) -> tuple[Any, Any, list[Any], dict[str, str]]:
    """Run the pipeline until collection; return (config, provider, ended records, failed_whole)."""
    import spark_llm_batch
    from spark_llm_batch._orchestrator_ended import EndedPhase
    from spark_llm_batch.config import BatchConfig
    from spark_llm_batch.providers import get_provider

    source = str(work / "input")
    _write_input(spark, source, rows)
    captured: dict[str, Any] = {}

    def hook(self: Any, records: list[Any], failed_whole: dict[str, str]) -> None:
        captured["records"], captured["failed_whole"] = list(records), dict(failed_whole)
        raise _Captured

    originals = (EndedPhase._collect, EndedPhase._collect_wait)
    EndedPhase._collect = hook  # type: ignore[method-assign]
    EndedPhase._collect_wait = lambda self: float("inf")  # type: ignore[method-assign]
    batches = -(-rows // 50_000)
    config = BatchConfig(model=_MODEL, store=str(work / "store"), max_in_flight=max(batches, 1))
    try:
        df = spark.read.format("delta").load(source)
        spark_llm_batch.llm_batch(df, "prompt", config=config, output=str(work / "output"))
        raise RuntimeError("the pipeline finished without collecting")
    except _Captured:
        pass
    finally:
        EndedPhase._collect, EndedPhase._collect_wait = originals  # type: ignore[method-assign]
    records = captured["records"]
    if len(records) != batches:
        raise RuntimeError(f"{len(records)} batches ended together, expected {batches}")
    return config, get_provider(config), records, captured["failed_whole"]


def _fresh_store(spark: Any, work: Path, name: str) -> Any:
    """A copy of the prepared store: ``results`` copied (empty), the other tables linked."""
    from spark_llm_batch._store import Store

    base, target = work / "store", work / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for table in base.iterdir():
        if table.name not in ("results", "staging") and (table / "_delta_log").is_dir():
            (target / table.name).symlink_to(table)
    shutil.copytree(base / "results", target / "results")
    return Store(spark, str(target))


def _old(
    store: Any, provider: Any, records: Sequence[Any], config: Any, failed: dict[str, str]
) -> Outcomes:
    from bench import _collect_baseline as old

    old.collect_batches(
        store,
        provider,
        records,
        retry=config.retry,
        failed_whole=failed,
        parse=old.old_openai_results,  # the parser as it was, too
    )
    return old.batch_outcomes(store, [r.key for r in records])


def _new(
    store: Any,
    provider: Any,
    records: Sequence[Any],
    config: Any,
    failed: dict[str, str],
    resumed: bool = False,
) -> Outcomes:
    from spark_llm_batch import _collect

    return _collect.collect_batches(
        store, provider, records, retry=config.retry, failed_whole=failed, resumed=resumed
    )


def _tree_cpu(skip: int | None = None) -> float:
    """CPU-seconds used so far by this process and its descendants (the JVM, Python workers),
    but not by process ``skip`` and its own (the emulator: the provider's work, the same for
    both paths)."""
    table = process_table()
    children = children_of(table)
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid == skip:
            continue
        total += table[pid][2] if pid in table else 0.0
        todo += children.get(pid, [])
    return total


def _timed(fn: Callable[[], Outcomes], skip: int | None) -> tuple[float, float, Outcomes]:
    """Wall seconds, CPU-seconds (driver, JVM, Python workers), result."""
    cpu, start = _tree_cpu(skip), time.perf_counter()
    out = fn()
    return time.perf_counter() - start, _tree_cpu(skip) - cpu, out


def _same_results(spark: Any, a: Any, b: Any) -> None:
    """Both stores hold the same result rows (all columns but ``updated_at``)."""
    left = a.table("results").drop("updated_at")
    right = b.table("results").drop("updated_at")
    extra, lacking = left.exceptAll(right).count(), right.exceptAll(left).count()
    if extra or lacking:
        raise SystemExit(f"results differ: {extra} rows only in old, {lacking} only in new")


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare the ended batches once, then alternate old and new; return the timings."""
    from pyspark import cloudpickle

    import spark_llm_batch
    from bench import _collect_baseline

    cloudpickle.register_pickle_by_value(_collect_baseline)  # executors need not import bench
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ["OPENAI_API_KEY"] = "sk-bench-emulator"
    os.environ["OPENAI_BASE_URL"] = args.base_url
    work = Path(args.work)
    spark = spark_llm_batch.local_session("collect-bench", master=_MASTER, conf=_SPARK_CONF)
    spark.sparkContext.setLogLevel("ERROR")
    start = time.perf_counter()
    config, provider, records, failed = _prepare(spark, work, args.rows)
    print(
        f"prepared {len(records)} ended batches in {time.perf_counter() - start:.0f} s",
        file=sys.stderr,
    )
    impls = {"old": _old, "new": _new}
    times: dict[str, list[float]] = {"old": [], "new": []}
    cpus: dict[str, list[float]] = {"old": [], "new": []}
    outcomes: dict[str, Outcomes] = {}
    stores: dict[str, Any] = {}
    for i in range(args.repeats):
        order = ["old", "new"] if i % 2 == 0 else ["new", "old"]
        for name in order:
            store = _fresh_store(spark, work, f"{name}_{i}")
            run = functools.partial(impls[name], store, provider, records, config, failed)
            seconds, cpu, out = _timed(run, args.emulator_pid)
            times[name].append(seconds)
            cpus[name].append(cpu)
            if name in outcomes and outcomes[name] != out:
                raise SystemExit(f"{name}: outcomes changed between repeats")
            outcomes[name] = out
            if i == 0:
                stores[name] = store
            else:
                shutil.rmtree(work / f"{name}_{i}", ignore_errors=True)
            print(
                f"[repeat {i + 1}] {name}: {seconds:.1f} s, {cpu:.1f} CPU-s",
                file=sys.stderr,
                flush=True,
            )
    if outcomes["old"] != outcomes["new"]:
        raise SystemExit(f"outcomes differ: old {outcomes['old']} new {outcomes['new']}")
    _same_results(spark, stores["old"], stores["new"])
    before = stores["new"].table("results").drop("updated_at").cache()
    before.count()
    again: dict[bool, float] = {}
    for resumed in (False, True):  # the orchestrator passes True for batches ended at its start
        again[resumed], _, out = _timed(
            functools.partial(_new, stores["new"], provider, records, config, failed, resumed),
            args.emulator_pid,
        )
        if out != outcomes["new"]:
            raise SystemExit(f"re-collection changed the outcomes: {out}")
        after = stores["new"].table("results").drop("updated_at")
        if before.exceptAll(after).count() or after.exceptAll(before).count():
            raise SystemExit("re-collection changed the results table")
    totals = [sum(v) for v in outcomes["new"].values()]
    spark.stop()
    return {
        "rows": args.rows,
        "batches": len(records),
        "times": times,
        "cpus": cpus,
        "recollect": again[False],
        "recollect_resumed": again[True],
        "outcome_rows": sum(totals),
        "succeeded": sum(v[0] for v in outcomes["new"].values()),
        "to_retry": sum(v[2] for v in outcomes["new"].values()),
    }


def run(rows: int = 200_000, repeats: int = 3, fault_rate: float = 0.0) -> str:
    """Start the emulator, run the worker, return a Markdown summary."""
    faults = {"request_fault_rates": {"server_error": fault_rate}}
    emulator, base_url = start_emulator(
        *(["--config-json", json.dumps(faults)] if fault_rate else [])
    )
    load_before = _load()
    try:
        with tempfile.TemporaryDirectory(prefix="llm-collect-bench-") as tmp:
            args = argparse.Namespace(
                rows=rows, repeats=repeats, base_url=base_url, work=tmp, emulator_pid=emulator.pid
            )
            result = worker(args)
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
    old, new = result["times"]["old"], result["times"]["new"]
    old_cpu, new_cpu = result["cpus"]["old"], result["cpus"]["new"]
    ratios = [o / n for o, n in zip(old, new, strict=True)]
    lines = [
        f"{rows:,} rows, {result['batches']} ended batches collected together "
        f"({result['succeeded']:,} succeeded, {result['to_retry']:,} to retry; "
        f"server-error fault rate {fault_rate}); collect + outcomes, {repeats} alternating pairs:",
        "",
        "| path | runs (s) | median | CPU-seconds (driver + JVM + Python workers), median |",
        "|---|---|---|---|",
        f"| old | {', '.join(f'{t:.1f}' for t in old)} | {statistics.median(old):.1f} s "
        f"| {statistics.median(old_cpu):.1f} |",
        f"| new | {', '.join(f'{t:.1f}' for t in new)} | {statistics.median(new):.1f} s "
        f"| {statistics.median(new_cpu):.1f} |",
        "",
        f"Speed-up old / new: median of per-pair ratios **{statistics.median(ratios):.2f}x** "
        f"(ratio of medians {statistics.median(old) / statistics.median(new):.2f}x). "
        "Re-collecting the same batches (new path, a crash after the MERGE commit): "
        f"{result['recollect_resumed']:.1f} s as the orchestrator does it (`resumed`: one full "
        f"MERGE), {result['recollect']:.1f} s without the hint (insert-only MERGE, then the full "
        "one); results unchanged both times.",
        f"Settings: `{_MASTER}`, "
        + ", ".join(f"`{k}={v}`" for k, v in _SPARK_CONF.items())
        + f"; load average before / after: {load_before} / {_load()}.",
    ]
    return "\n".join(lines)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.collect_bench")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = _parse(sys.argv[1:])
    print(run(options.rows, options.repeats, options.fault_rate))
