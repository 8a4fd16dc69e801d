"""Crash reconciliation: a job SIGKILLed right after every create, resumed each time, per provider.

Run it with ``python -m bench reconcile [--repeats R]``; the numbers land in the "Crash
reconciliation" section of BENCHMARKS.md.

For each provider and each of ``R`` rounds: a fresh emulator (real-time clock, batches of a few
seconds), the crash-and-resume tests' job (``tests/crash_job.py``: 40 rows, 36 distinct prompts,
10 requests per batch), run with the ``after_create`` failpoint again and again: each run resumes
the one before, creates the next batch and is SIGKILLed right after that create returned, before
the store records it, until a run finds nothing left to create and finishes. Then the emulator's
ledger says how many requests were billed more than once, and its batch list how many batches were
created that no output row came from. OpenAI tags each batch with our key, so its unrecorded
create is found by key; Anthropic's batches carry no metadata, so by request count and time (one
create at a time, committed right after it): the question this measures is what that guarantees.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from spark_llm_batch.emulator import Emulator, EmulatorConfig
from tests.test_crash_resume import (
    PROCESSING,
    _make_job,
    _provider_batches,
    kill_after_every_create,
)

__all__ = ["run"]

PROVIDERS = ("openai", "anthropic")


def _round(provider: str) -> dict[str, float]:
    """One job killed after every create; what the ledger and the batch list say."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-reconcile-") as root,
        Emulator(EmulatorConfig(processing_seconds=PROCESSING, clock_speed=1.0)) as emu,
    ):
        job = _make_job(Path(root), emu, "executors", provider)
        started = time.monotonic()
        killed = kill_after_every_create(job)
        seconds = time.monotonic() - started
        rows = json.loads(job.result.read_text(encoding="utf-8"))["rows"]
        billed = Counter(e["custom_id"] for e in emu.ledger() if e["batch_id"])
        used = {r["llm"]["batch_id"] for r in rows}
        created = _provider_batches(emu, provider)
        return {
            "killed": killed,
            "batches": len(created),
            "unused": sum(1 for b in created if b.id not in used),
            "billed": len(billed),
            "twice": sum(1 for n in billed.values() if n > 1),
            "answered": sum(1 for r in rows if r["llm"]["status"] == "succeeded"),
            "rows": len(rows),
            "seconds": seconds,
        }


def run(repeats: int = 3) -> str:
    """Run ``repeats`` rounds per provider; a Markdown table of the outcomes."""
    lines = [
        f"{repeats} rounds per provider; each round SIGKILLs the job right after every create "
        "(one kill per run) until a run has nothing left to create.",
        "",
        "| provider | rounds | kills per round | batches created | created in vain | requests "
        "billed twice | rows answered | seconds per round (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for provider in PROVIDERS:
        rounds = [_round(provider) for _ in range(repeats)]
        total = {key: sum(r[key] for r in rounds) for key in rounds[0]}
        lines.append(
            f"| {provider} | {repeats} | {total['killed'] / repeats:.1f} | {int(total['batches'])} "
            f"| {int(total['unused'])} | {int(total['twice'])} of {int(total['billed'])} | "
            f"{int(total['answered'])} of {int(total['rows'])} | "
            f"{statistics.median(r['seconds'] for r in rounds):.0f} |"
        )
    return "\n".join(lines)
