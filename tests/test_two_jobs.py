"""Invariant 8: two jobs started together on one fresh store never submit a request twice.

Each job is ``tests/crash_job.py`` in its own process (its own JVM, as two ``spark-submit`` jobs
would be), on overlapping inputs, with outputs of their own; one uses each transport. They race
to create the store, then to stage (one stages the shared requests, the other finds them in
flight and waits for their results). The emulator, in this process, bills each request once. It
runs for both providers: Anthropic's batches carry no key, so each job creates one batch at a time
and commits after each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from spark_llm_batch.emulator import _answers
from tests import crash_job
from tests.pipeline_helpers import OPENAI_FIRST, base_url, billed_counts

if TYPE_CHECKING:
    from collections.abc import Callable

    from spark_llm_batch.emulator import Emulator

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 600.0


def _input(root: Path, ids: range) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / f"input-{ids.start}-{ids.stop}"
    folder.mkdir(parents=True)
    prompts = [f"Shared-store question {i}" for i in ids]
    pq.write_table(
        pa.table({"id": pa.array(list(ids), pa.int64()), "prompt": pa.array(prompts)}),
        folder / "part-0.parquet",
    )
    return folder


def _start(
    root: Path, name: str, inputs: Path, emu: Emulator, transport: str, provider: str
) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env |= {"PYSPARK_PYTHON": sys.executable, crash_job.KEY_ENV: "sk-test-emulator"}
    argv = [
        sys.executable, crash_job.__file__, "--input", str(inputs), "--store", str(root / "store"),
        "--output", str(root / f"out-{name}"), "--result", str(root / f"{name}.json"),
        "--base-url", base_url(emu, provider), "--provider", provider, "--max-requests", "15",
        "--transport", transport,
        # Neither job dies: no takeover to wait for. A long lease keeps a heartbeat whose Spark
        # job queues behind the other job's on a loaded machine from stopping its run.
        "--lease-seconds", "120",
    ]  # fmt: skip
    log = (root / f"{name}.log").open("wb")
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log


@pytest.mark.timeout(900)
@pytest.mark.parametrize("provider", OPENAI_FIRST)
def test_two_jobs_on_one_fresh_store_pay_once_and_both_complete(
    fresh_emulator: Callable[..., Emulator], tmp_path: Path, provider: str
) -> None:
    emu = fresh_emulator(processing_seconds=3.0)  # real time: the second job finds them in flight
    a, b = range(0, 60), range(30, 90)  # 30 prompts in common
    jobs = {
        "a": _start(tmp_path, "a", _input(tmp_path, a), emu, "executors", provider),
        "b": _start(tmp_path, "b", _input(tmp_path, b), emu, "driver", provider),
    }
    for name, (proc, log) in jobs.items():
        try:
            rc = proc.wait(timeout=RUN_TIMEOUT)
        finally:
            proc.kill()
            log.close()
        tail = (tmp_path / f"{name}.log").read_text(errors="replace")[-4000:]
        assert rc == 0, f"job {name} failed:\n{tail}"
    for name, ids in (("a", a), ("b", b)):
        rows = json.loads((tmp_path / f"{name}.json").read_text())["rows"]
        assert sorted(r["id"] for r in rows) == list(ids)
        for row in rows:
            assert row["llm"]["status"] == "succeeded", row
            assert row["llm"]["text"] == _answers.expected_text(
                row["prompt"], model=crash_job.MODELS[provider], system=crash_job.SYSTEM
            )
    billed = billed_counts(emu)
    assert len(billed) == 90  # the union of both inputs
    assert set(billed.values()) == {1}, {k: v for k, v in billed.items() if v > 1}
    logs = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    assert "waiting for its results" in logs or "is held by run" in logs  # they did meet
