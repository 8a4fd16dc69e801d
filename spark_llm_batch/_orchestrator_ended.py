"""The orchestrator's last phase: ended batches become collected (or re-queued).

A mixin of :class:`~spark_llm_batch._orchestrator.Orchestrator`, kept apart so each module stays
small; it reads and writes the orchestrator's state declared below. Order of commits and effects:

- queue full (``failed`` with ``token_limit_exceeded``): members copied to a new key (commit), then
  one append: the old batch ``abandoned`` + the new one ``uploaded`` (same input file); the new one
  is held back and the in-flight cap shrinks.
- otherwise: results read on executors and MERGEd (commit) → open requests re-staged (members, then
  ``staged`` rows of the new batches) → ``collected`` (one append for all) → best-effort cleanup.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from spark_llm_batch import _failpoints
from spark_llm_batch._collect import batch_outcomes, collect_batches, retry_requests
from spark_llm_batch._progress import RunSummary
from spark_llm_batch._store_tables import BatchRecord, Phase
from spark_llm_batch.providers.base import BatchState

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_llm_batch._store import StagedLike, Store
    from spark_llm_batch.config import BatchConfig
    from spark_llm_batch.providers.base import Provider

__all__ = ["QUEUE_FULL", "EndedPhase", "RestageFn"]

log = logging.getLogger("spark_llm_batch")

RestageFn = Callable[["DataFrame"], "StagedLike"]
"""Packs retry requests (``__llm_hash``, ``__llm_line``, ``__llm_bytes``, ``__llm_attempt``) into chunks."""

QUEUE_FULL = "token_limit_exceeded"
"""The provider's batch error code for a full enqueued-token queue."""


class EndedPhase:
    """Ended → collected. Mixed into the orchestrator, which provides the state below."""

    spark: SparkSession
    store: Store
    provider: Provider
    config: BatchConfig
    summary: RunSummary
    _records: dict[str, BatchRecord]
    _requeues: dict[str, int]
    _cap: int
    _queue_full: int
    _restage: RestageFn

    def _in_state(self, *states: Phase) -> list[BatchRecord]:
        raise NotImplementedError

    def _commit(self, events: list[BatchRecord]) -> None:
        raise NotImplementedError

    def _shrink(self) -> None:
        raise NotImplementedError

    def _hold(self, key: str, retry_after: float | None = None) -> None:
        raise NotImplementedError

    def _collect_ended(self) -> bool:
        """Re-queue queue-full batches; collect the others (one job), re-stage retries, commit."""
        ended = self._in_state(Phase.ENDED)
        if not ended:
            return False
        failed_whole: dict[str, str] = {}
        to_collect = []
        for record in ended:
            if record.provider_state == BatchState.FAILED.value:
                if self._requeue(record):
                    continue
                failed_whole[record.key] = (
                    f"batch {record.batch_id or '(not created)'} failed: {record.error or 'no reason given'}"
                )
            to_collect.append(record)
        if to_collect:
            self._collect(to_collect, failed_whole)
        return True

    def _collect(self, records: list[BatchRecord], failed_whole: dict[str, str]) -> None:
        collect_batches(
            self.store, self.provider, records, retry=self.config.retry, failed_whole=failed_whole
        )
        _failpoints.hit("during_collect")
        outcomes = batch_outcomes(self.store, [r.key for r in records])
        needing = [r for r in records if outcomes[r.key][2] > 0]
        if needing:
            self._restage_open(needing)
        events = []
        for record in records:
            ok, bad, retry = outcomes[record.key]
            events.append(record.to(Phase.COLLECTED, completed=ok, failed=bad + retry))
            if record.key in failed_whole:
                self.summary.failed += 1
            else:
                self._cap = min(self.config.max_in_flight, self._cap + 1)
                self._queue_full = 0
        self._commit(events)
        self.summary.collected += len(records)
        self._cleanup(records)

    def _restage_open(self, records: list[BatchRecord]) -> None:
        """Stage the open (retryable) requests of ``records`` as new batches, attempt + 1."""
        staged = self._restage(retry_requests(self.store, records))
        new = self.store.record_staged(
            staged, None, provider=self.provider.name, endpoint=self.config.endpoint
        )
        for record in new:
            self._records[record.key] = record
        self.summary.restaged += len(new)

    def _requeue(self, record: BatchRecord) -> bool:
        """Queue full: move the members to a new key, abandon this one; False when out of tries."""
        if QUEUE_FULL not in (record.error or ""):
            return False
        tries = self._requeues.get(record.key, 0) + 1
        if tries >= self.config.retry.attempts_for("rate_limited"):
            return False
        new_key = uuid.uuid4().hex
        self.store.copy_members(record.key, new_key)
        fresh = BatchRecord(
            key=new_key, seq=0, state=Phase.UPLOADED, provider=record.provider, model=record.model,
            endpoint=record.endpoint, attempt=record.attempt, uri=record.uri, requests=record.requests,
            nbytes=record.nbytes, input_ref=record.input_ref, updated_at=time.time(),
        )  # fmt: skip
        self._commit(
            [
                record.to(
                    Phase.ABANDONED, error=f"queue full, re-queued as {new_key}: {record.error}"
                ),
                fresh,
            ]
        )
        self._requeues[new_key] = tries
        self.summary.requeued += 1
        self._shrink()
        self._hold(new_key)
        return True

    def _cleanup(self, records: list[BatchRecord]) -> None:
        """Best effort: drop provider input files and chunk files of collected batches."""
        import pyarrow.fs as pafs

        for record in records:
            try:
                self.provider.cleanup(record.input_ref)
                fs, path = pafs.FileSystem.from_uri(record.uri)
                fs.delete_file(path)
            except Exception as exc:  # cleanup never fails a run
                log.debug("batch %s: cleanup skipped: %s", record.key, exc)

    def _default_restage(self, frame: DataFrame) -> StagedLike:
        from spark_llm_batch import _pack

        limits = self.config.limits
        return _pack.stage_chunks(
            self.spark,
            frame,
            max_requests=limits.max_requests or self.provider.default_max_requests,
            max_bytes=limits.max_bytes or self.provider.default_max_bytes,
            staging_uri=self.store.staging_uri,
            model=self.config.model_name,
        )
