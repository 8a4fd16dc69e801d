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

A third scenario makes the lookup ambiguous on purpose: after every kill, before the resume, a
rival (another job, on another store) creates an Anthropic batch of the same size as the one the
killed run created, through the SDK. The resumed run then sees two unrecorded batches of the chunk's size created
since its intent; it must neither create again nor adopt the rival's, and tell them apart by
their results' ids once they end. The rival's batches and requests are left out of the counts.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spark_llm_batch.emulator import Emulator, EmulatorConfig
from tests import crash_job
from tests.test_crash_resume import (
    API_KEY,
    PROCESSING,
    _make_job,
    _provider_batches,
    kill_after_every_create,
)

__all__ = ["run"]

RIVALLED = "anthropic, a rival's batch of the same size after every kill"
SCENARIOS = ("openai", "anthropic", RIVALLED)


_RIVAL = "rival"
"""The custom_id prefix of the rival's requests (no request hash of ours starts so)."""


def _rival(emu: Emulator) -> Callable[[], None]:
    """Create, on each call, one Anthropic batch with other requests, of the size of the batch
    the killed run created last (so that it matches that batch's chunk on count)."""
    import anthropic

    client = anthropic.Anthropic(base_url=emu.anthropic_base_url, api_key=API_KEY, max_retries=0)
    made: list[str] = []

    def create() -> None:
        n = len(made)
        latest = next(iter(client.messages.batches.list(limit=1)))
        counts = latest.request_counts
        size = counts.processing + counts.succeeded + counts.errored + counts.canceled
        size += counts.expired
        requests: Any = [
            {
                "custom_id": f"{_RIVAL}{n:03d}x{i:03d}",
                "params": {
                    "model": crash_job.MODELS["anthropic"],
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"rival question {n}.{i}"}],
                },
            }
            for i in range(size)
        ]
        made.append(client.messages.batches.create(requests=requests).id)

    return create


def _round(scenario: str) -> dict[str, float]:
    """One job killed after every create; what the ledger and the batch list say."""
    provider = "openai" if scenario == "openai" else "anthropic"
    with (
        tempfile.TemporaryDirectory(prefix="bench-reconcile-") as root,
        Emulator(EmulatorConfig(processing_seconds=PROCESSING, clock_speed=1.0)) as emu,
    ):
        job = _make_job(Path(root), emu, "executors", provider)
        started = time.monotonic()
        killed = kill_after_every_create(job, _rival(emu) if scenario == RIVALLED else None)
        seconds = time.monotonic() - started
        rows = json.loads(job.result.read_text(encoding="utf-8"))["rows"]
        billed = Counter(
            e["custom_id"]
            for e in emu.ledger()
            if e["batch_id"] and not e["custom_id"].startswith(_RIVAL)
        )
        logs = "".join(p.read_text(errors="replace") for p in Path(root).rglob("run-*.log"))
        used = {r["llm"]["batch_id"] for r in rows}
        rivals = {e["batch_id"] for e in emu.ledger() if e["custom_id"].startswith(_RIVAL)}
        created = [b for b in _provider_batches(emu, provider) if b.id not in rivals]
        return {
            "killed": killed,
            "batches": len(created),
            "unused": sum(1 for b in created if b.id not in used),
            "billed": len(billed),
            "twice": sum(1 for n in billed.values() if n > 1),
            "answered": sum(1 for r in rows if r["llm"]["status"] == "succeeded"),
            "rows": len(rows),
            "seconds": seconds,
            # Lookups that saw several unrecorded candidates of the chunk's size.
            "ambiguous": logs.count("candidates at the provider"),
            # ... and held the chunk, none of them having results yet.
            "held": logs.count("adopting none, creating none"),
            # Candidates a lookup told apart by a result id (the chunk's, or another's).
            "told": logs.count("holds the chunk's requests") + logs.count("holds other requests"),
        }


def run(repeats: int = 3) -> str:
    """Run ``repeats`` rounds per scenario; a Markdown table of the outcomes."""
    lines = [
        f"{repeats} rounds per scenario; each round SIGKILLs the job right after every create "
        "(one kill per run) until a run has nothing left to create. In the third, a rival's "
        "batch of the chunk's size is created after every kill (not counted below).",
        "",
        "| scenario | rounds | kills per round | batches created | created in vain | requests "
        "billed twice | rows answered | lookups with several candidates | of which held | "
        "candidates told apart by results | seconds per round (median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in SCENARIOS:
        rounds = [_round(scenario) for _ in range(repeats)]
        total = {key: sum(r[key] for r in rounds) for key in rounds[0]}
        lines.append(
            f"| {scenario} | {repeats} | {total['killed'] / repeats:.1f} | {int(total['batches'])} "
            f"| {int(total['unused'])} | {int(total['twice'])} of {int(total['billed'])} | "
            f"{int(total['answered'])} of {int(total['rows'])} | {int(total['ambiguous'])} | "
            f"{int(total['held'])} | "
            f"{int(total['told'])} | "
            f"{statistics.median(r['seconds'] for r in rounds):.0f} |"
        )
    return "\n".join(lines)
