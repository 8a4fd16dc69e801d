"""Memory per task stays bounded: ``llm_batch`` on a small heap with one skewed partition.

The job (``tests/small_heap_job.py``) runs in its own JVM with a 512 MiB heap, the smallest Spark
accepts, and sends 100,000 prompts of 2,800 characters (280 MB, two OpenAI batches) gathered into
ONE input partition. Nothing may hold a partition whole: the version that cached the encoded input
died there with ``java.lang.OutOfMemoryError: Java heap space`` (reading the cached partition
back); packing's parts are sized by bytes and its writers hold about one chunk each. The emulator
in this process bills: each request exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tests.pipeline_helpers import billed_counts

if TYPE_CHECKING:
    from spark_llm_batch.emulator import Emulator

REPO = Path(__file__).resolve().parents[1]
ROWS = 100_000
PROMPT_CHARS = 2_800
JOB_TIMEOUT = 900.0
"""Bound of the job (a JVM start and 280 MB through every pass on a 512 MiB heap)."""


def test_one_skewed_partition_on_a_small_heap(emulator: Emulator, tmp_path: Path) -> None:
    emulator.clear_ledger()
    command = [sys.executable, str(REPO / "tests" / "small_heap_job.py"), "--work", str(tmp_path)]
    command += ["--base-url", emulator.openai_base_url, "--rows", str(ROWS)]
    command += ["--prompt-chars", str(PROMPT_CHARS), "--heap", "512m"]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=JOB_TIMEOUT, cwd=REPO, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["partitions"] == 1
    assert report["rows"] == ROWS
    assert report["answered"] == ROWS
    # The Python driver holds batch metadata only: far below the 280 MB of prompts.
    assert report["driver_peak_mb"] < 400, report
    billed = billed_counts(emulator)
    assert len(billed) == ROWS
    assert set(billed.values()) == {1}
