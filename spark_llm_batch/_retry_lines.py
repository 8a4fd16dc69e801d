"""Retries: the open requests of collected batches, with their lines read back from the chunk files.

A batch's staged chunk file holds the exact line of every member, and it stays in the staging area
until the batch is collected (cleanup runs after the retries are staged), so a retry re-sends the
same bytes without keeping a second copy of every request in the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from spark_llm_batch import _columns as C
from spark_llm_batch._chunk_files import spark_path
from spark_llm_batch.errors import StoreError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from spark_llm_batch._store import Store
    from spark_llm_batch._store_tables import BatchRecord
    from spark_llm_batch.providers.base import Provider

__all__ = ["retry_requests"]


def retry_requests(store: Store, provider: Provider, records: Sequence[BatchRecord]) -> DataFrame:
    """Requests of ``records`` whose result is not final and that are not in flight elsewhere.

    Columns ``__llm_hash``, ``__llm_line``, ``__llm_bytes``, ``__llm_attempt`` (= attempt + 1):
    what ``_pack.stage_chunks`` takes. The anti-join makes re-staging idempotent: after a crash
    between re-staging and ``collected``, collecting again stages nothing twice.

    Raises:
        StoreError: a chunk file of ``records`` is gone, so its open requests cannot be re-sent.
    """
    from pyspark.sql import functions as F

    keys = [r.key for r in records]
    open_results = (
        store.table("results")
        .where(~F.col("final"))
        .select("hash", F.col("attempt").alias("r_attempt"))
    )
    candidates = store.members_of(keys).join(open_results, "hash")
    candidates = candidates.where(F.col("r_attempt") == F.col("attempt"))
    candidates = candidates.select(
        F.col("hash").alias(C.HASH), (F.col("attempt") + 1).alias(C.ATTEMPT)
    )
    candidates = candidates.join(store.inflight_hashes(exclude_keys=keys), C.HASH, "left_anti")
    return candidates.join(_chunk_lines(store, provider, records), C.HASH).select(
        C.HASH, C.LINE, C.NBYTES, C.ATTEMPT
    )


def _chunk_lines(store: Store, provider: Provider, records: Sequence[BatchRecord]) -> DataFrame:
    """``__llm_hash``, ``__llm_line``, ``__llm_bytes`` of every line in the records' chunk files."""
    from pyspark.sql import functions as F

    paths = [spark_path(r.uri) for r in records]
    try:
        text = store.spark.read.option("lineSep", "\n").text(paths)
    except Exception as exc:  # Spark names the missing path in its own message
        raise StoreError(
            f"cannot read the chunk files of batches {[r.key for r in records]} to re-send their "
            f"open requests: {str(exc).strip().splitlines()[0]}"
        ) from None
    line = F.col("value")
    return text.where(F.length(line) > 0).select(
        F.get_json_object(line, provider.line_id_path).alias(C.HASH),
        line.alias(C.LINE),
        (F.octet_length(line) + 1).cast("long").alias(C.NBYTES),
    )
