"""Detached runs: ``run --no-wait`` advanced by three separate processes to completion.

Each process is a new Python and a new JVM (nothing survives between them but the store), as when
a job scheduled every hour finds the cluster gone. The emulator's clock moves only when the test
moves it, so what each process finds is known: the first submits what the in-flight cap allows,
the second collects those and submits the rest, the third collects the rest and writes the output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from tests.pipeline_helpers import MODELS, SYSTEM, base_url, billed_counts

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import SparkSession

    from spark_llm_batch.emulator import Emulator

REPO = Path(__file__).resolve().parents[1]


def _advance(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "spark_llm_batch", "run", "--config", str(config), "--no-wait"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.mark.slow  # three JVMs; test_job.py runs a detached job twice in the default suite
def test_a_detached_run_is_advanced_by_three_processes_with_no_double_billing(
    spark: SparkSession, fresh_emulator: Callable[..., Emulator], tmp_path: Path
) -> None:
    import spark_llm_batch
    from spark_llm_batch.emulator import _answers

    emu = fresh_emulator(processing_seconds=100.0, clock_speed=0.001)  # ends only when advanced
    rows = [(i, f"Detached question {i}") for i in range(30)]
    spark.createDataFrame(rows, "id long, prompt string").write.format("delta").save(
        str(tmp_path / "input")
    )
    store, output = tmp_path / "store", tmp_path / "answers"
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": str(tmp_path / "input"),
                "prompt_col": "prompt",
                "batch": {
                    "model": MODELS["openai"],
                    "store": str(store),
                    "output": str(output),
                    "id_col": "id",
                    "system": SYSTEM,
                    "limits": {"max_requests": 10},
                    "max_in_flight": 2,  # the first process submits 2 of the 3 batches
                    "poll": {"initial_seconds": 0.05, "max_seconds": 0.2},
                },
            }
        )
    )
    env = {
        **os.environ,
        "OPENAI_API_KEY": "sk-test-emulator",
        "OPENAI_BASE_URL": base_url(emu, "openai"),
    }

    first = _advance(config, env)
    assert "in flight" in first.stdout
    now = spark_llm_batch.status(str(store), spark=spark).job(str(output))
    assert (now.batches["submitted"], now.batches["staged"]) == (2, 1)
    assert now.requests_pending == 30
    assert not output.exists()
    assert emu.ledger() == []

    emu.advance(101)  # the two submitted batches end
    second = _advance(config, env)
    assert "in flight" in second.stdout
    now = spark_llm_batch.status(str(store), spark=spark).job(str(output))
    assert (now.batches["collected"], now.batches["submitted"]) == (2, 1)
    assert (now.requests_done, now.requests_pending) == (20, 10)
    assert not output.exists()

    emu.advance(101)  # the third ends
    third = _advance(config, env)
    assert "in flight" not in third.stdout
    assert "rows: 30 (succeeded 30)" in third.stdout
    now = spark_llm_batch.status(str(store), spark=spark).job(str(output))
    assert now.batches["collected"] == 3
    assert now.in_flight == 0
    assert now.requests_done == 30

    out = spark.read.format("delta").load(str(output))
    got = {r["id"]: (r["status"], r["text"]) for r in out.select("id", "llm.*").collect()}
    assert len(got) == 30
    assert out.count() == 30
    for i, prompt in rows:
        expected = _answers.expected_text(prompt, model=MODELS["openai"], system=SYSTEM)
        assert got[i] == ("succeeded", expected)
    billed = billed_counts(emu)
    assert len(billed) == 30
    assert set(billed.values()) == {1}
