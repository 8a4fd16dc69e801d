"""The store and the output as catalog tables ('schema' / 'schema.table') instead of paths."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from spark_llm_batch.config import BatchLimits, PollPolicy

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from spark_llm_batch.emulator import Emulator


def test_store_in_a_catalog_schema_and_output_as_a_table(
    spark: SparkSession, fresh_emulator: Callable[..., Emulator]
) -> None:
    emu = fresh_emulator(processing_seconds=1.0, clock_speed=50.0)
    spark.sql("CREATE SCHEMA IF NOT EXISTS llm_store_test")
    try:
        df = spark.createDataFrame(
            [(i, f"catalog {i}") for i in range(25)], "id long, prompt string"
        )
        options = {
            "model": "gpt-4o-mini",
            "store": "llm_store_test",
            "output": "llm_store_test.answers",
            "limits": BatchLimits(max_requests=10),
            "poll": PollPolicy(initial_seconds=0.05, max_seconds=0.2),
            "provider_settings": {"api_key": "sk-test", "base_url": emu.openai_base_url},
        }
        out = df.llm_batch("prompt", **options)
        assert out.count() == 25
        assert {r["status"] for r in out.select("llm.status").collect()} == {"succeeded"}
        tables = {t.name for t in spark.catalog.listTables("llm_store_test")}
        assert {"answers", "batches", "chunks", "downloads", "results"} <= tables
        assert "members" not in tables
        # Every batch was collected: the run swept their staged lines.
        assert spark.table("llm_store_test.chunks").count() == 0
        again = df.llm_batch("prompt", **options)
        assert again.count() == 25
        billed = Counter(e["custom_id"] for e in emu.ledger())
        assert len(billed) == 25
        assert set(billed.values()) == {1}
    finally:
        spark.sql("DROP SCHEMA IF EXISTS llm_store_test CASCADE")
