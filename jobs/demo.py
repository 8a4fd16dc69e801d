"""The main job's demo: a sample table through ``llm_batch`` against the embedded emulator.

Run it with ``make demo``. No provider account is needed: the emulator that ships in the package
stands in for OpenAI and Anthropic, and its billing ledger shows that every request was paid for
exactly once, even though the job runs twice (the second run is answered from the store). Then
the same prompts go to Claude, through Anthropic's Message Batches, with the same call; last, a
template over columns gets structured answers back as typed columns.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections import Counter


def main() -> int:
    """Run the demo; return the process exit code."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("py4j", "httpx", "httpx2", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import spark_llm_batch
    from spark_llm_batch.config import BatchLimits, PollPolicy
    from spark_llm_batch.emulator import Emulator, EmulatorConfig

    spark = spark_llm_batch.local_session(master="local[2]", conf={"spark.ui.enabled": "false"})
    work = tempfile.mkdtemp(prefix="llm-batch-demo-")
    topics = ["Delta Lake", "Apache Spark", "Arrow", "Parquet", "batch APIs", "idempotence"]
    rows = [
        (i, f"In one sentence, why does {topics[i % len(topics)]} matter? (#{i})")
        for i in range(240)
    ]
    df = spark.createDataFrame(rows, "id long, prompt string")

    with Emulator(EmulatorConfig(processing_seconds=2.0)) as emulator:
        os.environ["OPENAI_API_KEY"] = "sk-demo-emulator"
        os.environ["OPENAI_BASE_URL"] = emulator.openai_base_url
        os.environ["ANTHROPIC_API_KEY"] = "sk-ant-demo-emulator"
        os.environ["ANTHROPIC_BASE_URL"] = emulator.anthropic_base_url
        options = {
            "model": "gpt-4o-mini",
            "store": f"{work}/store",
            "id_col": "id",
            "system": "You are terse.",
            "params": {"temperature": 0, "max_tokens": 64},
            # Small batches so the demo shows several provider batches in flight.
            "limits": BatchLimits(max_requests=100),
            "poll": PollPolicy(initial_seconds=0.5, max_seconds=2.0, progress_seconds=2.0),
        }
        started = time.monotonic()
        out = df.llm_batch("prompt", **options)
        first = time.monotonic() - started
        out.select("id", "prompt", "llm.status", "llm.text").orderBy("id").show(5, truncate=60)

        started = time.monotonic()
        again = df.llm_batch("prompt", **options)
        second = time.monotonic() - started

        statuses = Counter(row["status"] for row in out.select("llm.status").collect())
        billed = [e for e in emulator.ledger() if e["provider"] == "openai"]
        print(f"rows in: {df.count()}, rows out: {out.count()}, statuses: {dict(statuses)}")
        print(f"first run {first:.1f} s, re-run {second:.1f} s (answered from the store)")
        print(
            f"requests billed by OpenAI's emulator: {len(billed)} "
            f"(distinct: {len({e['custom_id'] for e in billed})})"
        )

        # The same call to Claude: Anthropic's Message Batches, same store, same guarantees.
        claude = df.llm_batch("prompt", **{**options, "model": "claude-3-5-haiku-latest"})
        claude.select("id", "llm.status", "llm.model", "llm.text").orderBy("id").show(
            3, truncate=60
        )
        claude_billed = [e for e in emulator.ledger() if e["provider"] == "anthropic"]
        claude_ok = Counter(row["status"] for row in claude.select("llm.status").collect())
        print(
            f"Claude: rows out: {claude.count()}, statuses: {dict(claude_ok)}, requests billed "
            f"by Anthropic's emulator: {len(claude_billed)}"
        )
        # Prompts from a template over columns, answers as typed columns (a DDL schema here;
        # a pydantic model class works the same).
        reviews = spark.createDataFrame(
            [(i, topics[i % len(topics)], f"Review {i}: it did what it said.") for i in range(6)],
            "id long, product string, review string",
        )
        typed = reviews.llm_batch(
            template="Classify this review of {product}: {review}",
            response_format="label STRING, stars INT, tags ARRAY<STRING>",
            **{**options, "output": f"{work}/typed"},
        )
        typed.select(
            "id", "product", "llm.parsed.label", "llm.parsed.stars", "llm.parsed.tags"
        ).orderBy("id").show(3, truncate=40)
        typed_ok = typed.where("llm.parsed.stars IS NOT NULL").count()
        print(f"structured answers parsed into typed columns: {typed_ok} of {reviews.count()}")
        print(f"store and output under {work}")
        ok = (
            out.count() == df.count() == again.count() == claude.count()
            and len(billed) == df.count()
            and len(claude_billed) == df.count()
            and typed_ok == reviews.count()
        )
    spark.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
