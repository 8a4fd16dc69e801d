"""The orchestrator's last phase: ended batches become collected (or re-queued).

A mixin of :class:`~spark_llm_batch._orchestrator.Orchestrator`, kept apart so each module stays
small; it reads and writes the orchestrator's state declared below. Order of commits and effects:

- queue full (``failed`` with ``token_limit_exceeded``): members copied to a new key (commit), then
  one append: the old batch ``abandoned`` + the new one ``uploaded`` (same input file); the new one
  is held back and the in-flight cap shrinks.
- otherwise: results read on executors and MERGEd (commit; the per-batch outcomes come from the
  same pass) → open requests re-staged (members, then ``staged`` rows of the new batches) →
  ``collected`` (one append for all) → best-effort cleanup.

Collection has a fixed cost (a Spark job, a MERGE, a few commits) whatever the number of batches, so
ended batches are collected together: as soon as no other batch is in flight, or once the first of
them has waited ``poll.max_seconds`` (the longest a poll would make it wait anyway).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from spark_llm_batch import _failpoints
from spark_llm_batch._chunk_files import delete_chunk
from spark_llm_batch._collect import collect_batches
from spark_llm_batch._progress import RunSummary
from spark_llm_batch._retry_lines import retry_requests
from spark_llm_batch._store_tables import BatchRecord, Phase
from spark_llm_batch.providers.base import BatchState

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_llm_batch._pack import StagedChunks
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
    _ended_since: dict[str, float]
    _resumed_ended: set[str]
    _clock: Callable[[], float]
    _cap: int
    _queue_full: int
    _restage: RestageFn

    def _in_state(self, *states: Phase) -> list[BatchRecord]:
        raise NotImplementedError

    def _commit(self, events: list[BatchRecord]) -> None:
        raise NotImplementedError

    def _flush(self, events: list[BatchRecord] | None = None) -> None:
        raise NotImplementedError

    def _shrink(self) -> None:
        raise NotImplementedError

    def _hold(self, key: str, retry_after: float | None = None) -> None:
        raise NotImplementedError

    def _collect_ended(self, *, force: bool = False) -> bool:
        """Re-queue queue-full batches; collect the others (one job), re-stage retries, commit.

        Collection waits for more batches to end (see the module docstring) unless ``force``.
        True when something was re-queued or collected.
        """
        ended = self._in_state(Phase.ENDED)
        if not ended:
            return False
        failed_whole: dict[str, str] = {}
        to_collect = []
        requeued = False
        for record in ended:
            if record.provider_state == BatchState.FAILED.value:
                if self._requeue(record):
                    requeued = True
                    continue
                failed_whole[record.key] = (
                    f"batch {record.batch_id or '(not created)'} failed: {record.error or 'no reason given'}"
                )
            to_collect.append(record)
        if not to_collect or not (force or self._collect_due(to_collect)):
            return requeued
        self._flush()  # write-ahead: the held ends are stored before their collection
        self._collect(to_collect, failed_whole)
        for record in to_collect:
            self._ended_since.pop(record.key, None)
        return True

    def _collect_wait(self) -> float:
        """How long an ended batch may wait for others to end before it is collected."""
        return self.config.poll.max_seconds

    def _collect_due(self, records: list[BatchRecord]) -> bool:
        """Collect now: nothing else is in flight, or the first of ``records`` waited long enough."""
        now = self._clock()
        for record in records:
            self._ended_since.setdefault(record.key, now)
        if not self._in_state(Phase.STAGED, Phase.UPLOADED, Phase.CREATING, Phase.SUBMITTED):
            return True
        oldest = min(self._ended_since[r.key] for r in records)
        return now - oldest >= self._collect_wait()

    def _collect(self, records: list[BatchRecord], failed_whole: dict[str, str]) -> None:
        outcomes = collect_batches(
            self.store,
            self.provider,
            records,
            retry=self.config.retry,
            failed_whole=failed_whole,
            resumed=any(r.key in self._resumed_ended for r in records),
        )
        _failpoints.hit("during_collect")
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
        staged = self._restage(retry_requests(self.store, self.provider, records))
        new = self.store.record_staged(
            staged, provider=self.provider.name, endpoint=self.config.endpoint
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
        for record in records:
            try:
                self.provider.cleanup(record.input_ref)
                delete_chunk(record.uri)
            except Exception as exc:  # cleanup never fails a run
                log.debug("batch %s: cleanup skipped: %s", record.key, exc)

    def stage(self, frame: DataFrame) -> StagedChunks:
        """Pack ``frame``'s requests (first attempts and retries alike) into chunk files."""
        from spark_llm_batch import _pack

        max_requests, max_bytes = self.provider.batch_limits(self.config)
        return _pack.stage_chunks(
            self.spark,
            frame,
            max_requests=max_requests,
            max_bytes=max_bytes,
            staging_uri=self.store.staging_uri,
            model=self.config.model_name,
            record_members=self.store.append_members,
        )
