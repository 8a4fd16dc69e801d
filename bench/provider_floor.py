"""The provider floor: what the emulator alone takes to answer the pipeline benchmark's requests.

No client can go below it on this machine: the same request lines ``llm_batch`` sends (built with
the library's encoder, written as one JSONL file per 50,000 requests, not timed) are uploaded with
the OpenAI SDK, one batch is created per file, the batches are polled every 50 ms, and each output
file is downloaded (streamed and discarded, or kept on disk when asked) as soon as its batch has
completed. No Spark job runs while it is timed: the time is the provider's work (validating,
answering, writing result files) plus the transfers, on the same 2 cores as the pipeline.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

__all__ = ["REQUESTS_PER_FILE", "provider_floor", "request_encoder"]

REQUESTS_PER_FILE = 50_000
"""OpenAI's request limit per batch, as the pipeline packs: one request file per batch."""
_POLL_SECONDS = 0.05


def request_encoder(spark: Any, model: str, work: Path) -> Any:
    """The library's request encoder for ``model`` (its line and hash expressions)."""
    from spark_llm_batch import _encode
    from spark_llm_batch.config import BatchConfig
    from spark_llm_batch.providers import get_provider

    config = BatchConfig.build({"model": model, "store": str(work / "unused_store")})
    return _encode.RequestEncoder.build(spark, get_provider(config), config)


def _write_request_files(spark: Any, source: str, target: Path, model: str) -> list[Path]:
    """The pipeline's request lines for every row of ``source``, one file per batch."""
    from pyspark.sql import functions as F

    encoder = request_encoder(spark, model, target)
    df = spark.read.format("delta").load(source)
    prompt = F.col("prompt")
    lines = df.select(encoder.line_column(prompt, encoder.hash_column(prompt)).alias("value"))
    files = max(1, math.ceil(df.count() / REQUESTS_PER_FILE))
    lines.repartition(files).write.mode("overwrite").text(str(target / "requests"))
    return sorted((target / "requests").glob("part-*.txt"))


def provider_floor(
    spark: Any, source: str, work: Path, model: str, keep: Path | None = None
) -> dict[str, float]:
    """Seconds from the first upload to the last downloaded byte; the number of files and bytes.

    ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` must point at the emulator. With ``keep``, each
    output file is written there as ``<batch id>.jsonl`` (inside the timed span) instead of being
    discarded.
    """
    import openai

    paths = _write_request_files(spark, source, work / "floor", model)
    client = openai.OpenAI()
    start = time.perf_counter()
    waiting: dict[str, str] = {}
    for path in paths:
        with path.open("rb") as fh:
            uploaded = client.files.create(file=(f"{path.stem}.jsonl", fh), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        waiting[batch.id] = path.name
    downloaded = 0
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    while waiting:
        for batch_id in list(waiting):
            batch = client.batches.retrieve(batch_id)
            if batch.status in ("failed", "expired", "cancelled"):
                raise RuntimeError(f"floor batch {batch_id} ended {batch.status}")
            if batch.status != "completed":
                continue
            del waiting[batch_id]
            with (
                client.files.with_streaming_response.content(batch.output_file_id) as response,
                (keep / f"{batch_id}.jsonl").open("wb")
                if keep
                else contextlib.nullcontext() as out,
            ):
                for block in response.iter_bytes(1 << 20):
                    downloaded += len(block)
                    if out is not None:
                        out.write(block)
        if waiting:
            time.sleep(_POLL_SECONDS)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "files": float(len(paths)), "output_mb": downloaded / 2**20}
