"""Control-plane calls: what ``llm_batch`` asks of the provider per batch, and how often it polls.

Run it with ``python -m bench control_plane``; the numbers land in the "Control-plane calls"
section of BENCHMARKS.md. The target: at most 4 calls per batch besides polls, and at most 60
polls per batch-hour.

What it does, in one worker process (``python -m bench.control_plane_bench worker``, its own
Spark session, ``local[2]``) against an emulator in this process:

- end to end, per provider: ``llm_batch`` over :data:`ROWS` distinct prompts in batches of
  :data:`MAX_REQUESTS` on a fresh store, the default poll policy, batches in progress for
  :data:`PROCESSING` seconds of a real-time clock (so they are polled a while); the emulator's
  call count (``GET /_emulator/calls``, reset before each run) says what each kind of call cost;
- the poll schedule on a fake clock: the orchestrator itself, with the default poll policy, over
  in-memory batches that run for hours (``tests/orchestrator_fakes.run_on_fake_clock``), in two
  shapes: all ending together after 3 h, and two running 3 h while six others end one at a time
  in the first minutes (each end brings the others' next poll forward). Polls per batch-hour are
  over the batches that ran an hour or more; the busiest hour is the most polls any batch got
  within one hour.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["run"]

ROWS = 40
MAX_REQUESTS = 10
PROCESSING = 5.0
PROVIDERS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}
POLL = "batch_retrieve"
HOUR = 3600.0
SCHEDULES = {
    "6 batches, all ending after 3 h": [3 * HOUR] * 6,
    "2 batches of 3 h; 6 ending one at a time, every 100 s": [
        3 * HOUR,
        3 * HOUR,
        *(100.0 * i for i in range(1, 7)),
    ],
}
_SPARK_CONF = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "4",
}


# ---- worker ---------------------------------------------------------------------------------------


def _control(root: str, method: str, path: str) -> Any:
    request = urllib.request.Request(root + path, method=method)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def _end_to_end(spark: Any, root: str, work: Path, provider: str) -> dict[str, Any]:
    """One ``llm_batch`` run on ``provider``; its calls by kind, batches and answered rows."""
    import spark_llm_batch
    from spark_llm_batch.config import BatchLimits, PollPolicy

    df = spark.createDataFrame(
        [(i, f"Control-plane question {i}") for i in range(ROWS)], "id long, prompt string"
    )
    _control(root, "DELETE", "/_emulator/calls")
    started = time.perf_counter()
    out = spark_llm_batch.llm_batch(
        df,
        "prompt",
        model=PROVIDERS[provider],
        store=str(work / f"store_{provider}"),
        limits=BatchLimits(max_requests=MAX_REQUESTS),
        poll=PollPolicy(progress_bar=False),
        provider_settings={
            "api_key": "sk-bench-emulator",
            "base_url": root + "/v1" if provider == "openai" else root,
        },
    )
    seconds = time.perf_counter() - started
    calls = _control(root, "GET", "/_emulator/calls")[provider]
    rows = out.select("llm.status", "llm.batch_id").collect()
    return {
        "calls": calls,
        "batches": len({r["batch_id"] for r in rows}),
        "answered": sum(1 for r in rows if r["status"] == "succeeded"),
        "rows": len(rows),
        "seconds": seconds,
    }


def _schedules(spark: Any, work: Path) -> dict[str, dict[str, float]]:
    from spark_llm_batch.config import PollPolicy
    from tests.orchestrator_fakes import polls_per_hour, run_on_fake_clock

    out = {}
    for i, (name, seconds) in enumerate(SCHEDULES.items()):
        fake = run_on_fake_clock(
            spark, work / f"fake_{i}", seconds, poll=PollPolicy(progress_bar=False)
        )
        rate, busiest = polls_per_hour(fake)
        long = [b for b, (start, end) in fake.spans.items() if end - start >= HOUR]
        out[name] = {
            "batches": len(seconds),
            "long": len(long),
            "polls": sum(len(fake.polled[b]) for b in long),
            "hours": sum(fake.spans[b][1] - fake.spans[b][0] for b in long) / HOUR,
            "rate": rate,
            "busiest": busiest,
        }
    return out


def worker(args: argparse.Namespace) -> None:
    """Both providers end to end, then the fake-clock schedules; print JSON."""
    import spark_llm_batch

    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    spark = spark_llm_batch.local_session(
        "spark-llm-batch-bench", master="local[2]", conf=_SPARK_CONF
    )
    spark.sparkContext.setLogLevel("ERROR")
    result = {
        "runs": {p: _end_to_end(spark, args.emulator, work, p) for p in PROVIDERS},
        "schedules": _schedules(spark, work),
    }
    spark.stop()
    print(json.dumps(result), flush=True)


# ---- parent ---------------------------------------------------------------------------------------


def _measure() -> dict[str, Any]:
    import subprocess

    from spark_llm_batch.emulator import Emulator

    with (
        tempfile.TemporaryDirectory(prefix="bench-control-plane-") as work,
        Emulator(processing_seconds=PROCESSING, clock_speed=1.0) as emu,
    ):
        command = [sys.executable, "-m", "bench.control_plane_bench", "worker"]
        command += ["--emulator", emu.url, "--work", work]
        done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def run() -> str:
    """Measure; a Markdown body with both tables."""
    started = time.perf_counter()
    result = _measure()
    lines = [
        f"End to end: {ROWS} distinct prompts, {MAX_REQUESTS} per batch, the default poll "
        f"policy, batches in progress for {PROCESSING:g} s (real-time clock); calls counted by "
        "the emulator.",
        "",
        "| provider | batches | rows answered | calls per kind | non-poll calls per batch | "
        "polls | polls per batch | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for provider, r in result["runs"].items():
        calls = r["calls"]
        polls = calls.get(POLL, 0)
        batches = max(r["batches"], 1)
        kinds = ", ".join(f"{kind} {n}" for kind, n in calls.items())
        lines.append(
            f"| {provider} | {r['batches']} | {r['answered']} of {r['rows']} | {kinds} | "
            f"{(sum(calls.values()) - polls) / batches:.2f} | {polls} | {polls / batches:.1f} | "
            f"{r['seconds']:.0f} |"
        )
    lines += [
        "",
        "Poll schedule on a fake clock (the orchestrator and the default poll policy over "
        "in-memory batches); rates over the batches that ran an hour or more.",
        "",
        "| batches | of which ran >= 1 h | their polls | their batch-hours | polls per batch-hour | "
        "most polls of one batch in any hour |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in result["schedules"].items():
        lines.append(
            f"| {name} | {s['long']} | {s['polls']} | {s['hours']:.1f} | {s['rate']:.1f} | "
            f"{s['busiest']} |"
        )
    lines += ["", f"Whole benchmark: {time.perf_counter() - started:.0f} s."]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.control_plane_bench")
    sub = parser.add_subparsers(dest="command", required=True)
    work = sub.add_parser("worker", help="run the measurements in this process (internal)")
    work.add_argument("--emulator", required=True, help="the emulator's root URL")
    work.add_argument("--work", required=True, help="a scratch directory")
    args = parser.parse_args(argv)
    worker(args)


if __name__ == "__main__":
    main(sys.argv[1:])
