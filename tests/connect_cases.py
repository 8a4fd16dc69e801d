"""The pipeline over Spark Connect (invariant 6): run by ``tests/test_connect.py`` in its own process.

Not collected by a plain ``pytest`` run (the name does not start with ``test_``): a process is
either classic or Connect (see ``tests/connect_fixtures.py``). Run it alone with
``pytest tests/connect_cases.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import spark_llm_batch
from spark_llm_batch.emulator import _answers
from tests.pipeline_helpers import MODEL, SYSTEM, billed_counts, pipeline_options

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import SparkSession

    from spark_llm_batch.emulator import Emulator


def _options(emu: Emulator, store: Path) -> dict[str, Any]:
    return pipeline_options(emu, store, max_requests=15)


def test_dataframes_get_llm_batch_and_get_session_finds_the_connect_session(
    connect_spark: SparkSession,
) -> None:
    from pyspark.sql import DataFrame
    from pyspark.sql.connect.dataframe import DataFrame as ConnectDataFrame
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    assert isinstance(connect_spark, ConnectSession)
    assert isinstance(connect_spark.range(1), ConnectDataFrame)
    assert ConnectDataFrame.llm_batch is DataFrame.llm_batch
    assert spark_llm_batch.get_session() is connect_spark
    # Another thread has no active session of its own: it gets the default one, not a new one.
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(spark_llm_batch.get_session).result() is connect_spark


def test_get_session_connects_to_spark_remote_without_local_settings(connect_url: str) -> None:
    # A fresh client process with SPARK_REMOTE set and no session yet: get_session connects to the
    # server as it is (local_session would push shuffle partitions 8 and its other defaults).
    probe = (
        "import spark_llm_batch; s = spark_llm_batch.get_session(); "
        "print(type(s).__module__, s.conf.get('spark.sql.shuffle.partitions'))"
    )
    env = {**os.environ, "SPARK_REMOTE": connect_url}
    env.pop("SPARK_CONNECT_MODE_ENABLED", None)
    run = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["pyspark.sql.connect.session", "4"]


def test_llm_batch_on_connect_answers_every_row_once_and_reruns_for_free(
    connect_spark: SparkSession, fresh_emulator: Callable[..., Emulator], tmp_path: Path
) -> None:
    emu = fresh_emulator(processing_seconds=1.0, clock_speed=50.0)
    options = _options(emu, tmp_path / "store")
    rows = [(i, f"Summarise item number {i}") for i in range(40)]
    df = connect_spark.createDataFrame(rows, "id long, prompt string").repartition(3)

    out = df.llm_batch("prompt", id_col="id", **options)

    got = {r["id"]: r for r in out.select("id", "prompt", "llm.*").collect()}
    assert len(got) == out.count() == len(rows)
    for i, prompt in rows:
        assert got[i]["status"] == "succeeded", got[i]
        assert got[i]["text"] == _answers.expected_text(prompt, model=MODEL, system=SYSTEM)
        assert got[i]["attempts"] == 1
    assert len({r["batch_id"] for r in got.values()}) >= 3  # 40 requests, 15 per batch
    billed = billed_counts(emu)
    assert len(billed) == len(rows)
    assert set(billed.values()) == {1}

    # df.transform composes, and a re-run of the same call submits nothing.
    again = df.transform(lambda d: d.llm_batch("prompt", id_col="id", **options))
    assert {r["id"]: r["text"] for r in again.select("id", "llm.text").collect()} == {
        i: row["text"] for i, row in got.items()
    }
    assert len(emu.ledger()) == len(rows)
