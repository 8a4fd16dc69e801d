"""Retries: the open requests of collected batches, with their lines read back from ``chunks``.

A batch's rows in the store's ``chunks`` table hold the exact line of every member, and they stay
until the batch is collected (the sweep runs after the retries are staged), so a retry re-sends the
same bytes without keeping a second copy of every request in the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from spark_llm_batch import _columns as C

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from spark_llm_batch._store import Store
    from spark_llm_batch._store_tables import BatchRecord

__all__ = ["retry_requests"]


def retry_requests(store: Store, records: Sequence[BatchRecord]) -> DataFrame:
    """Requests of ``records`` whose result is open for a retry and that are not in flight elsewhere.

    Columns ``__llm_hash``, ``__llm_line``, ``__llm_bytes``, ``__llm_attempt`` (= attempt + 1):
    what ``_pack.stage_chunks`` takes. Requests refused for credentials (``auth``) are left for the
    next run. The anti-join makes re-staging idempotent: after a crash between re-staging and
    ``collected``, collecting again stages nothing twice.
    """
    from pyspark.sql import functions as F

    keys = [r.key for r in records]
    open_results = (
        store.table("results")
        .where(~F.col("final") & ~F.coalesce(F.col("error_class") == "auth", F.lit(False)))
        .select("hash", F.col("attempt").alias("r_attempt"))
    )
    candidates = store.chunk_lines(keys).join(open_results, "hash")
    candidates = candidates.where(F.col("r_attempt") == F.col("attempt")).select(
        F.col("hash").alias(C.HASH),
        F.col("line").alias(C.LINE),
        F.col("nbytes").alias(C.NBYTES),
        (F.col("attempt") + 1).alias(C.ATTEMPT),
    )
    return candidates.join(store.inflight_hashes(exclude_keys=keys), C.HASH, "left_anti")
