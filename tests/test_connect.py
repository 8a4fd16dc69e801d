"""Invariant 6: the pipeline runs over Spark Connect, pinned by ``tests/connect_cases.py``.

A process is either classic or Connect (``tests/connect_fixtures.py`` says why), and this one runs
the classic ``spark`` fixture, so the Connect cases run in a pytest process of their own: a pure
Connect client, with the Connect server (Delta, ``local[2]``) in a third process that has its own
mount namespace and a private ``/tmp``, so that nothing passes because client and server share a
disk. It runs in the default suite (a JVM start and two pipeline runs, 1-2 minutes) so that CI
pins invariant 6.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = Path(__file__).resolve().with_name("connect_cases.py")


def test_pipeline_runs_end_to_end_on_spark_connect() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(CASES), "-p", "no:cacheprovider", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, f"Connect cases failed:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert " skipped" not in run.stdout, run.stdout[-3000:]
