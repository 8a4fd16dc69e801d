"""Daily runs cost what changed: ``llm_batch_table`` over a growing Delta table.

The second run must read only the rows inserted since the first: the test moves the first
version's data files out of the table before it, so a run that read them would fail; and it
counts the rows the changed-rows pass answered through the emulator's ledger (only the new ones are
billed). An update or delete in the input, or a table without the change data feed, makes the run
read the whole table again, and the output still holds one row per input row.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import spark_llm_batch
from spark_llm_batch._incremental import MARK_PREFIX
from tests.pipeline_helpers import billed_counts, pipeline_options

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_llm_batch.emulator import Emulator


def _rows(spark: SparkSession, first: int, last: int) -> DataFrame:
    return spark.createDataFrame(
        [(i, f"Incremental prompt number {i}") for i in range(first, last)],
        "id BIGINT, prompt STRING",
    )


def _answers(out: DataFrame) -> dict[int, str]:
    """id -> answer text, every row succeeded and answering its own prompt."""
    rows = out.select("id", "prompt", "llm.status", "llm.text").collect()
    for row in rows:
        assert row["status"] == "succeeded", row
        assert row["prompt"] in row["text"], row
    return {row["id"]: row["text"] for row in rows}


def _data_files(table: Path) -> set[Path]:
    return set(table.glob("*.parquet"))


def _marks(spark: SparkSession, output: Path) -> list[dict[str, object]]:
    history = spark.sql(f"DESCRIBE HISTORY delta.`{output}`").orderBy("version").collect()
    notes = [row["userMetadata"] for row in history]
    return [json.loads(n[len(MARK_PREFIX) :]) for n in notes if n and n.startswith(MARK_PREFIX)]


def test_a_grown_table_reads_only_its_new_rows(
    spark: SparkSession, emulator: Emulator, tmp_path: Path
) -> None:
    table, output = tmp_path / "reviews", tmp_path / "answers"
    spark.sql(
        f"CREATE TABLE delta.`{table}` (id BIGINT, prompt STRING) USING DELTA "
        "TBLPROPERTIES (delta.enableChangeDataFeed = true)"
    )
    _rows(spark, 0, 30).write.format("delta").mode("append").save(str(table))
    options = pipeline_options(emulator, tmp_path / "store", max_requests=8, output=str(output))
    emulator.clear_ledger()

    first = spark_llm_batch.llm_batch_table(spark, str(table), "prompt", **options)
    assert set(_answers(first)) == set(range(30))
    assert len(billed_counts(emulator)) == 30

    old_files = _data_files(table)
    _rows(spark, 30, 35).write.format("delta").mode("append").save(str(table))
    aside = tmp_path / "aside"
    aside.mkdir()
    for path in old_files:  # a run that read the first 30 rows again would fail now
        shutil.move(path, aside / path.name)
    emulator.clear_ledger()
    second = spark_llm_batch.llm_batch_table(spark, str(table), "prompt", **options)
    assert set(_answers(second)) == set(range(35))
    assert second.count() == 35
    billed = billed_counts(emulator)
    assert len(billed) == 5  # the changed rows alone went through the pass
    assert set(billed.values()) == {1}
    assert [m["version"] for m in _marks(spark, output)] == [1, 2]

    emulator.clear_ledger()  # nothing changed: nothing read, nothing billed
    third = spark_llm_batch.llm_batch_table(spark, str(table), "prompt", **options)
    assert third.count() == 35
    assert billed_counts(emulator) == {}

    for path in aside.iterdir():
        shutil.move(path, table / path.name)
    spark.sql(f"DELETE FROM delta.`{table}` WHERE id < 3")  # a delete: the whole table again
    fourth = spark_llm_batch.llm_batch_table(spark, str(table), "prompt", **options)
    assert set(_answers(fourth)) == set(range(3, 35))
    assert billed_counts(emulator) == {}  # every answer came from the store
    assert [m["version"] for m in _marks(spark, output)][-1] == 3


def test_without_the_change_feed_the_whole_table_is_read(
    spark: SparkSession, emulator: Emulator, tmp_path: Path
) -> None:
    table, output = tmp_path / "reviews", tmp_path / "answers"
    _rows(spark, 0, 6).write.format("delta").save(str(table))
    options = pipeline_options(emulator, tmp_path / "store", max_requests=8, output=str(output))
    spark_llm_batch.llm_batch_table(spark, str(table), "prompt", **options)
    _rows(spark, 6, 9).write.format("delta").mode("append").save(str(table))
    emulator.clear_ledger()
    out = spark_llm_batch.llm_batch_table(spark, str(table), "prompt", **options)
    assert set(_answers(out)) == set(range(9))
    assert len(billed_counts(emulator)) == 3
    assert [m["version"] for m in _marks(spark, output)] == [0, 1]  # each run marks a full read
