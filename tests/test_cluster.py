"""Invariant 6 on a cluster: standalone Spark, S3 storage, no executor egress (``cluster_cases.py``).

A process is one SparkContext or none (``tests/cluster_fixtures.py`` says why), and this one may
run the local ``spark`` fixture, so the cluster cases run in a pytest process of their own: the
smoke cases (the infrastructure: S3 through Spark settings only, tasks in executors on both
workers, no egress from tasks), the pipeline on the cluster with its store and output on S3, and
the pipeline on workers without egress (``transport="auto"`` takes the driver), each for both
providers. They need root and iproute2 (a network namespace); the first run downloads hadoop-aws and the
AWS SDK bundle (~750 MB, into ``~/.ivy2.5.2``); later runs take ~2 minutes for the smoke cases.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster_fixtures import aws_variables, clean_env

REPO = Path(__file__).resolve().parents[1]
CASES = Path(__file__).resolve().with_name("cluster_cases.py")
RUN_TIMEOUT = 1300.0  # the cases' own timeout is 1200 s each (a first start downloads jars)
INTERRUPT_GRACE = 90.0  # after Ctrl-C the cases stop their clusters and remove the namespace
CASE_COUNT = (
    8  # the smoke cases (4), the pipeline on S3 and the one without egress (2 x 2 providers)
)


def _run_cases(selection: str) -> tuple[int, str]:
    """Run the cases selected by ``-k selection``; return the exit code and the output."""
    env = clean_env()
    assert not aws_variables(env)
    command = [sys.executable, "-m", "pytest", str(CASES), "-p", "no:cacheprovider", "-q"]
    if selection:
        command += ["-k", selection]
    with subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as run:
        try:
            output, _ = run.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            # Ctrl-C, not SIGKILL: pytest then runs the fixtures' teardown (clusters, namespace).
            run.send_signal(signal.SIGINT)
            try:
                output, _ = run.communicate(timeout=INTERRUPT_GRACE)
            except subprocess.TimeoutExpired:
                run.kill()
                output, _ = run.communicate()
            pytest.fail(f"the cluster cases ran over {RUN_TIMEOUT:.0f} s:\n{output[-6000:]}")
    return run.returncode, output


def _summary(output: str) -> str:
    """pytest's last line, e.g. ``4 passed, 1 deselected in 95.12s (0:01:35)``."""
    lines = output.rstrip().splitlines()
    return lines[-1] if lines else ""


@pytest.mark.slow  # ~12 min on 2 cores: run by make test-slow, not within CI's time
@pytest.mark.timeout(RUN_TIMEOUT + INTERRUPT_GRACE + 60)
def test_the_library_runs_on_a_cluster_with_s3_and_without_egress() -> None:
    returncode, output = _run_cases("")
    assert returncode == 0, f"the cluster cases failed:\n{output[-8000:]}"
    assert " skipped" not in output, output[-3000:]
    assert _summary(output).startswith(f"{CASE_COUNT} passed"), output[-3000:]
