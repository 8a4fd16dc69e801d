"""``notebooks/classify_reviews.py``: Databricks source format, and it runs top to bottom.

The notebook runs as a plain Python file (its ``# MAGIC`` cells are comments) in a subprocess, in
a temporary working directory (its warehouse and metastore land there), with the key and base
URL of the emulator in this process: there is no ``dbutils``, so it reads the environment, builds
its own Spark session and writes its own sample input table.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.pipeline_helpers import billed_counts

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import SparkSession

    from spark_llm_batch.emulator import Emulator

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks/classify_reviews.py"
SEPARATOR = "\n# COMMAND ----------\n"
RUN_TIMEOUT = 600.0
WAREHOUSE = Path("spark-warehouse/llm_demo.db")
"""Where the notebook's tables land, under its working directory (the session's default)."""


def _cells() -> list[str]:
    return NOTEBOOK.read_text().split(SEPARATOR)


def test_the_notebook_is_databricks_source_and_every_cell_compiles() -> None:
    text = NOTEBOOK.read_text()
    assert text.startswith("# Databricks notebook source\n")
    cells = _cells()
    assert len(cells) >= 8
    for i, cell in enumerate(cells):
        compile(cell, f"{NOTEBOOK.name} cell {i}", "exec")
        lines = [
            line for line in cell.strip().splitlines() if line != "# Databricks notebook source"
        ]
        if lines and lines[0].startswith("# MAGIC"):  # a magic cell (%md, %pip) is MAGIC lines only
            assert all(line.startswith("# MAGIC") for line in lines), f"cell {i}"
    assert "dbutils.secrets.get(" in text  # the key: a secret on Databricks, else OPENAI_API_KEY


def _run(cwd: Path, emu: Emulator) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env |= {
        "OPENAI_API_KEY": "sk-test-emulator",
        "OPENAI_BASE_URL": emu.openai_base_url,
        "PYSPARK_PYTHON": sys.executable,
    }
    done = subprocess.run(
        [sys.executable, str(NOTEBOOK)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


@pytest.mark.timeout(RUN_TIMEOUT + 120)
def test_the_notebook_runs_top_to_bottom_and_answers_every_row_once(
    spark: SparkSession, fresh_emulator: Callable[..., Emulator], tmp_path: Path
) -> None:
    emu = fresh_emulator(processing_seconds=1.0, clock_speed=100.0)
    done = _run(tmp_path, emu)
    assert "12 of 12 reviews answered" in done.stdout

    # The tables are read by path: the notebook's catalog is its own (a metastore in tmp_path).
    reviews = spark.read.format("delta").load(str(tmp_path / WAREHOUSE / "reviews"))
    out = spark.read.format("delta").load(str(tmp_path / WAREHOUSE / "reviews_classified"))
    rows = out.select("review_id", "review_text", "llm.*").collect()
    assert sorted(r["review_id"] for r in rows) == sorted(
        r["review_id"] for r in reviews.select("review_id").collect()
    )
    assert len(rows) == 12
    for row in rows:
        assert row["status"] == "succeeded", row
        assert row["parsed"]["label"] in {"positive", "negative", "mixed"}
    # Two reviews appear twice: one request each, and each request billed once.
    hashes = {r["request_hash"] for r in rows}
    assert len(hashes) == len({r["review_text"] for r in rows}) == 10
    billed = billed_counts(emu)
    assert len(billed) == 10
    assert set(billed.values()) == {1}


@pytest.mark.slow
@pytest.mark.timeout(2 * RUN_TIMEOUT + 120)
def test_the_notebook_runs_again_in_its_directory_and_sends_nothing(
    fresh_emulator: Callable[..., Emulator], tmp_path: Path
) -> None:
    emu = fresh_emulator(processing_seconds=1.0, clock_speed=100.0)
    _run(tmp_path, emu)
    billed = billed_counts(emu)
    again = _run(tmp_path, emu)  # its tables and store are found in its metastore
    assert "12 of 12 reviews answered" in again.stdout
    assert billed_counts(emu) == billed
