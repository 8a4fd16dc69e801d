"""Fixed cost: what ``llm_batch`` takes at 10,000 rows beyond the provider's own time.

Run it with ``python -m bench fixed [--rows N] [--repeats R]``; the numbers land in the "Fixed
cost" section of BENCHMARKS.md.

What it does, in one worker process with one warm Spark session (``local[2]``, UI off):

- the emulator runs in a separate process (``processing_seconds=0``: a batch completes as soon as
  it is created), as in :mod:`bench.pipeline_bench`;
- an input Delta table of ``N`` distinct prompts of ~300 characters; one untimed ``llm_batch`` of
  other prompts warms the JVM and the library's code paths up;
- ``R`` times, alternating: ``llm_batch`` on a fresh store (its migrations run), and on a store
  whose migrations ran beforehand (opened untimed: no results in it, so the same requests are
  sent), ``transport="executors"``, the default poll policy. Every output is checked (one row per
  input row, each succeeded with its own answer) and the emulator's ledger too (each request
  billed once per run);
- ``R`` times the provider floor (:mod:`bench.provider_floor`): the emulator alone answering the
  same request file, no Spark; the fixed cost is end to end minus the floor;
- a breakdown of each run by phase (store open, encode + stage, upload/create/poll, collect,
  sweep, output): seconds, Spark jobs (job ids from ``statusTracker()``, this benchmark only) and
  Delta commits (files in each table's ``_delta_log``), from timers wrapped around the library's
  methods and its log lines; and the commits per store table;
- the floor of the fixed cost here: one trivial Spark job, one small read, and one small Delta
  append, MERGE, UPDATE, DELETE and ``CREATE TABLE``, each the median of several, in the same
  session; times :data:`DESIGN_MINIMUM`, the store operations one run must make in this design,
  they give the least a run can cost before it touches a row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.harness import (
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

_SPARK_CONF = {**SPARK_CONF, "spark.driver.memory": "2g"}  # a notebook's driver
_PHASES = (
    "store open",
    "encode + stage",
    "upload, create, poll",
    "collect",
    "sweep",
    "output (join, write, read back)",
)
_STORE_TABLES = ("_migrations", "batches", "chunks", "downloads", "leases", "results")


# ---- worker ---------------------------------------------------------------------------------------


class _Meter:
    """Marks of one run: (seconds, Spark jobs, Delta commits) at each named event, from wrappers
    around the library's methods and from its log lines."""

    def __init__(self, spark: Any) -> None:
        self._tracker = spark.sparkContext.statusTracker()
        self.tables: dict[str, Path] = {}
        self.marks: list[tuple[str, float, int, int]] = []

    def jobs(self) -> int:
        """The highest job id so far (ids are sequential: a difference counts jobs)."""
        ids = self._tracker.getJobIdsForGroup(None)
        return max(ids) if ids else -1

    def versions(self) -> dict[str, int]:
        """Per watched table, the commits in its ``_delta_log``."""
        out = {}
        for name, path in self.tables.items():
            log_dir = path / "_delta_log"
            out[name] = len(list(log_dir.glob("*.json"))) if log_dir.is_dir() else 0
        return out

    def mark(self, name: str) -> None:
        self.marks.append((name, time.perf_counter(), self.jobs(), sum(self.versions().values())))

    def phases(self) -> dict[str, tuple[float, int, int]]:
        """(seconds, jobs, commits) per phase of :data:`_PHASES`, from the marks."""
        out = dict.fromkeys(_PHASES, (0.0, 0, 0))
        marks = self.marks
        previous = marks[0]
        boundary = {"opened": "store open", "staged": "encode + stage",
                    "orchestrated": "upload, create, poll",
                    "end": "output (join, write, read back)"}  # fmt: skip
        inner: dict[str, tuple[str, float, int, int]] = {}
        for mark in marks[1:]:
            name = mark[0]
            if name.endswith(":begin"):
                inner[name.split(":")[0]] = mark
                continue
            if name.endswith(":end"):
                phase = name.split(":")[0]
                began = inner.pop(phase)
                out[phase] = _plus(out[phase], _minus(mark, began))
                continue
            if name in boundary:
                phase = boundary[name]
                out[phase] = _plus(out[phase], _minus(mark, previous))
                previous = mark
        # Collection and the sweep run inside orchestration: carved out of it.
        carved = _plus(out["collect"], out["sweep"])
        out["upload, create, poll"] = _minus3(out["upload, create, poll"], carved)
        return out


def _minus(
    a: tuple[str, float, int, int], b: tuple[str, float, int, int]
) -> tuple[float, int, int]:
    return (a[1] - b[1], a[2] - b[2], a[3] - b[3])


def _plus(a: tuple[float, int, int], b: tuple[float, int, int]) -> tuple[float, int, int]:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _minus3(a: tuple[float, int, int], b: tuple[float, int, int]) -> tuple[float, int, int]:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


class _LogMarks(logging.Handler):
    """Marks the meter at the library's log lines that end a phase."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.meter: _Meter | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.meter is None:
            return
        message = record.getMessage()
        if message.startswith("staged "):
            self.meter.mark("staged")
        elif message.startswith("orchestration finished"):
            self.meter.mark("orchestrated")


@contextlib.contextmanager
def _wrapped(meter_of: Callable[[], _Meter | None]) -> Iterator[None]:
    """Wrap the library's methods that bound or carve out phases; unwrap at the end."""
    from spark_llm_batch._orchestrator_ended import EndedPhase
    from spark_llm_batch._store import Store

    original_open = Store.__dict__["open"]
    original_collect = EndedPhase._collect
    original_sweep = Store.sweep_chunks

    def open_(cls: type[Store], *args: Any, **kwargs: Any) -> Store:
        store = original_open.__func__(cls, *args, **kwargs)
        meter = meter_of()
        if meter is not None:
            meter.mark("opened")
        return store

    def carved(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def inner(*args: Any, **kwargs: Any) -> Any:
            meter = meter_of()
            if meter is not None:
                meter.mark(f"{name}:begin")
            try:
                return fn(*args, **kwargs)
            finally:
                if meter is not None:
                    meter.mark(f"{name}:end")

        return inner

    Store.open = classmethod(open_)  # type: ignore[method-assign,assignment]
    EndedPhase._collect = carved("collect", original_collect)  # type: ignore[method-assign]
    Store.sweep_chunks = carved("sweep", original_sweep)  # type: ignore[method-assign]
    try:
        yield
    finally:
        Store.open = original_open  # type: ignore[method-assign]
        EndedPhase._collect = original_collect  # type: ignore[method-assign]
        Store.sweep_chunks = original_sweep  # type: ignore[method-assign]


def _timed_run(
    spark: Any, source: str, store: str, output: str, handler: _LogMarks, current: list[_Meter]
) -> dict[str, Any]:
    """One ``llm_batch``: total seconds, the phases, and the commits per table."""
    import spark_llm_batch

    meter = _Meter(spark)
    meter.tables = {name: Path(store) / name for name in _STORE_TABLES}
    meter.tables["(output)"] = Path(output)
    before = meter.versions()
    current[:] = [meter]
    handler.meter = meter
    meter.mark("start")
    start = time.perf_counter()
    try:
        df = spark.read.format("delta").load(source)
        spark_llm_batch.llm_batch(
            df, "prompt", model=MODEL, store=store, output=output, transport="executors"
        )
        total = time.perf_counter() - start
        meter.mark("end")
    finally:
        handler.meter = None
        current[:] = []
    after = meter.versions()
    return {
        "total": total,
        "jobs": meter.marks[-1][2] - meter.marks[0][2],
        "phases": {k: list(v) for k, v in meter.phases().items()},
        "commits": {name: after[name] - before[name] for name in after},
    }


def _median_of(fn: Callable[[int], None], times: int) -> float:
    seconds = []
    for i in range(times):
        start = time.perf_counter()
        fn(i)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


_JOB = "trivial Spark job (`spark.range(1).collect()`)"
_READ = "read of a small Delta table (`SELECT ... WHERE`, collected)"
_APPEND = "append of one row to a Delta table (one file, one commit)"
_MERGE = "MERGE of one row into a small Delta table (one commit)"
_UPDATE = "UPDATE of one row of a small Delta table (one commit)"
_DELETE = "DELETE of one row of a small Delta table (one commit)"
_CREATE = "`CREATE TABLE IF NOT EXISTS` of a new Delta table (one commit)"

DESIGN_MINIMUM = (
    (_APPEND, 7, "chunks, the batch's lease, `staged`, `uploaded`+`creating`, `submitted`, "
     "`ended`+`collected`, the output (the two with data counted as one-row appends)"),
    (_MERGE, 2, "the stage lease (a conditional commit), `results`"),
    (_DELETE, 2, "the stage lease's release, the collected batch's lines"),
    (_READ, 8, "`_migrations`; `results`, `batches`, `chunks` for the pending requests; chunk "
     "sizes; outcomes; `results` for the output; the upload's scan"),
)  # fmt: skip
"""What one run on a migrated store, one batch, must do against the store in this design
(write-ahead, shared-store claims, exactly-once collection): (operation, times, which)."""


def _floors(spark: Any, work: Path) -> dict[str, float]:
    """Seconds of the smallest operations the design is made of, each a median."""
    table = str(work / "floor_table")
    ref = f"delta.`{table}`"
    schema = "name STRING, holder STRING, expires_at TIMESTAMP"
    spark.sql(f"CREATE TABLE {ref} ({schema}) USING DELTA")
    # As the store appends the driver's rows: one task, one file.
    row = spark.createDataFrame([("a", "b", None)], schema).coalesce(1)
    deleted: list[float] = []

    def append(_: int) -> None:
        row.write.format("delta").mode("append").save(table)

    def update(i: int) -> None:
        spark.sql(f"UPDATE {ref} SET holder = 'h{i}' WHERE name = 'k0'").collect()

    def delete(i: int) -> None:
        doomed = spark.createDataFrame([(f"d{i}", "b", None)], schema).coalesce(1)
        doomed.write.format("delta").mode("append").save(table)
        start = time.perf_counter()
        spark.sql(f"DELETE FROM {ref} WHERE name = 'd{i}'").collect()
        deleted.append(time.perf_counter() - start)

    def merge(i: int) -> None:
        spark.sql(
            f"MERGE INTO {ref} t USING (SELECT 'k{i % 2}' AS name, 'me' AS holder, "
            "current_timestamp() AS expires_at) s ON t.name = s.name WHEN MATCHED THEN "
            "UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
        ).collect()

    def create(_: int) -> None:
        fresh = f"delta.`{work / ('floor_' + uuid.uuid4().hex)}`"
        spark.sql(f"CREATE TABLE IF NOT EXISTS {fresh} (a STRING, b INT) USING DELTA")

    floors = {
        _JOB: _median_of(lambda _: spark.range(1).collect(), 9),
        _READ: _median_of(
            lambda _: spark.sql(f"SELECT name FROM {ref} WHERE name = 'a'").collect(), 9
        ),
        _APPEND: _median_of(append, 5),
        _MERGE: _median_of(merge, 5),
        _UPDATE: _median_of(update, 3),
        _CREATE: _median_of(create, 3),
    }
    for i in range(3):
        delete(i)
    floors[_DELETE] = statistics.median(deleted)
    return floors


def worker(args: argparse.Namespace) -> None:
    """Warm up, time the runs and the floors; print JSON."""
    import spark_llm_batch
    from spark_llm_batch._store import Store

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    lib_log = logging.getLogger("spark_llm_batch")
    lib_log.setLevel(logging.INFO)
    lib_log.propagate = args.verbose
    handler = _LogMarks()
    lib_log.addHandler(handler)
    os.environ["OPENAI_API_KEY"] = "sk-bench-emulator"
    os.environ["OPENAI_BASE_URL"] = args.base_url
    work = Path(args.work)
    spark = spark_llm_batch.local_session("spark-llm-batch-fixed", master=MASTER, conf=_SPARK_CONF)
    spark.sparkContext.setLogLevel("ERROR")
    source, warm = str(work / "input"), str(work / "warm_input")
    write_input(spark, source, args.rows)
    write_input(spark, warm, args.rows, first_id=args.rows)
    warm_df = spark.read.format("delta").load(warm)
    # Untimed: the first run in a JVM loads classes and compiles code.
    spark_llm_batch.llm_batch(
        warm_df, "prompt", model=MODEL, store=str(work / "warm_store"),
        output=str(work / "warm_out"), transport="executors",
    )  # fmt: skip
    clear_ledger(args.base_url)
    runs: dict[str, list[dict[str, Any]]] = {"fresh": [], "migrated": []}
    current: list[_Meter] = []
    with _wrapped(lambda: current[0] if current else None):
        for i in range(args.repeats):
            for kind in ("fresh", "migrated"):
                store, output = str(work / f"store_{kind}_{i}"), str(work / f"out_{kind}_{i}")
                if kind == "migrated":
                    Store.open(spark, store)  # untimed
                result = _timed_run(spark, source, store, output, handler, current)
                runs[kind].append(result)
                print(f"[{kind} {i + 1}] {result['total']:.2f} s, {result['jobs']} jobs, "
                      f"commits {result['commits']}", file=sys.stderr, flush=True)  # fmt: skip
                check_output(spark, source, output)
                shutil.rmtree(store, ignore_errors=True)
                shutil.rmtree(output, ignore_errors=True)
    check_ledger(args.base_url, args.rows, 2 * args.repeats)
    floor = []
    for _ in range(args.repeats):
        floor.append(provider_floor(spark, source, work, MODEL)["seconds"])
        shutil.rmtree(work / "floor", ignore_errors=True)
    clear_ledger(args.base_url)
    result = {"rows": args.rows, "runs": runs, "floor": floor, "floors": _floors(spark, work)}
    spark.stop()
    print(json.dumps(result), flush=True)


# ---- parent ---------------------------------------------------------------------------------------


def measure(rows: int, repeats: int, *, verbose: bool = False) -> dict[str, Any]:
    """Start the emulator and one worker; the worker's JSON."""
    emulator, base_url = start_emulator()
    try:
        with tempfile.TemporaryDirectory(prefix="llm-fixed-") as tmp:
            args = ["--rows", str(rows), "--repeats", str(repeats), "--base-url", base_url]
            args += ["--work", tmp] + (["--verbose"] if verbose else [])
            return run_worker("bench.fixed_cost_bench", *args)
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)


def run(rows: int = 10_000, repeats: int = 3) -> str:
    """Measure; return the Markdown section body."""
    loads = [load_average()]
    result = measure(rows, repeats)
    loads.append(load_average())
    return report(result, loads)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(result: dict[str, Any], loads: list[str]) -> str:
    """The Markdown body for ``result`` (the worker's JSON)."""
    rows, runs = result["rows"], result["runs"]
    floor = _median(result["floor"])
    repeats = len(runs["fresh"])
    lines = [
        f"{rows:,} distinct prompts of ~300 characters through `llm_batch` "
        '(`transport="executors"`, default poll policy) against the emulator in a separate '
        "process (`processing_seconds=0`: it answers as soon as a batch is created), in one warm "
        "Spark session (an untimed run of other prompts first), alternating a fresh store and "
        f"one whose migrations ran beforehand, {repeats} time(s) each; the provider floor is the "
        "emulator alone answering the same request file (`bench/provider_floor.py`, no Spark). "
        "See `bench/fixed_cost_bench.py`.",
        "",
        "| measure | fresh store | migrated store |",
        "|---|---|---|",
    ]
    totals = {k: [r["total"] for r in v] for k, v in runs.items()}
    lines += [
        "| end to end, median (each run) | "
        + " | ".join(
            f"{_median(t):.2f} s ({', '.join(f'{x:.2f}' for x in t)})" for t in totals.values()
        )
        + " |",
        f"| provider floor, median of {len(result['floor'])} | {floor:.2f} s | {floor:.2f} s |",
        "| **fixed cost: end to end minus the floor** | "
        + " | ".join(f"**{_median(t) - floor:.2f} s**" for t in totals.values())
        + " |",
        "| Spark jobs per run, median | "
        + " | ".join(f"{_median([r['jobs'] for r in v]):.0f}" for v in runs.values())
        + " |",
        "| Delta commits per run, median | "
        + " | ".join(
            f"{_median([sum(r['commits'].values()) for r in v]):.0f}" for v in runs.values()
        )
        + " |",
        "",
        "Per phase (medians; seconds / Spark jobs / Delta commits):",
        "",
        "| phase | fresh store | migrated store |",
        "|---|---|---|",
    ]
    for phase in _PHASES:
        cells = []
        for v in runs.values():
            s, j, c = (_median([r["phases"][phase][i] for r in v]) for i in range(3))
            cells.append(f"{s:.2f} s / {j:.0f} / {c:.0f}")
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    lines += ["", "Delta commits per table, per run (median):", "", "| table | fresh store | migrated store |",
              "|---|---|---|"]  # fmt: skip
    for name in runs["fresh"][0]["commits"]:
        cells = [f"{_median([r['commits'][name] for r in v]):.0f}" for v in runs.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "The floor of the fixed cost in this session (medians):", "",
              "| operation | seconds |", "|---|---|"]  # fmt: skip
    floors = result["floors"]
    lines += [f"| {name} | {s:.3f} |" for name, s in floors.items()]
    least = sum(floors[name] * times for name, times, _ in DESIGN_MINIMUM)
    lines += [
        "",
        "What a run on a migrated store (one batch) must do against the store in this design, "
        f"at those costs: **at least {least:.1f} s**, before any row is encoded, packed, "
        "uploaded, parsed or joined:",
        "",
        "| operation | times | which | seconds |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {times} | {which} | {floors[name] * times:.2f} |"
        for name, times, which in DESIGN_MINIMUM
    ]
    beyond = _median(totals["migrated"]) - floor - least
    lines += [
        "",
        f"**Beyond that floor, a run on a migrated store spends {beyond:.1f} s** (its fixed cost "
        "minus the design floor, both from this session): encoding, packing, uploading, parsing "
        "and joining the rows, and the Spark jobs around the store's operations.",
    ]
    lines += [
        "",
        settings_line(MASTER, _SPARK_CONF)
        + " Phases come from timers the benchmark wraps around `Store.open`, collection and "
        "the sweep, and from the library's log lines (`staged ...`, `orchestration finished`); "
        "jobs from `statusTracker()` job ids; commits from the files in each table's `_delta_log`.",
        machine_line(loads),
    ]
    return "\n".join(lines)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = worker_parser("python -m bench.fixed_cost_bench")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--verbose", action="store_true", help="print the library's log lines")
    return parser.parse_args(argv)


if __name__ == "__main__":
    worker(_parse(sys.argv[1:]))
