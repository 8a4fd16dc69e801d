"""The orchestrator's last phase: ended batches become collected (or re-queued).

A mixin of :class:`~spark_llm_batch._orchestrator.Orchestrator`, kept apart so each module stays
small; it reads and writes the orchestrator's state declared below. Order of commits and effects:

- queue full (``failed`` with ``token_limit_exceeded``): under the ``stage`` lease, members copied
  to a new key (commit), then one append: the old batch ``abandoned`` + the new one ``uploaded``
  (same input file); the new one is held back and the in-flight cap shrinks.
- otherwise: results read through the transport and MERGEd (commit) → open requests re-staged
  under the ``stage`` lease, as every staging is (chunks, then ``staged`` rows of the new
  batches; another run staging meanwhile still sees them in flight) → ``collected`` (one append
  for all) →
  best-effort cleanup of the provider's input files. When some request was refused for
  credentials, permission or billing (class ``auth``), nothing is re-staged: the batches are
  recorded ``collected`` and the run stops with :class:`~spark_llm_batch.errors.AuthenticationError`
  (those requests stay open, and the next run sends them again).

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
from spark_llm_batch._collect import collect_batches
from spark_llm_batch._leases import STAGE
from spark_llm_batch._progress import RunSummary
from spark_llm_batch._retry_lines import retry_requests
from spark_llm_batch._schema import structured_of
from spark_llm_batch._store_tables import BatchRecord, Phase
from spark_llm_batch.errors import AuthenticationError
from spark_llm_batch.providers.base import BatchState

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_llm_batch._leases import Leases
    from spark_llm_batch._pack import StagedChunks
    from spark_llm_batch._store import StagedLike, Store
    from spark_llm_batch._transport import Transport
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
    endpoint: str
    job: str | None
    transport: Transport
    leases: Leases
    summary: RunSummary
    _records: dict[str, BatchRecord]
    _requeues: dict[str, int]
    _ended_since: dict[str, float]
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
        # The held ends are committed with ``collected``: nothing needs them stored before, since
        # a crash during collection leaves the batches ``submitted``, and polling again finds
        # them ended (collecting twice adds nothing: the MERGE and re-staging are idempotent).
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
            self.transport,
            records,
            retry=self.config.retry,
            failed_whole=failed_whole,
            structured=structured_of(self.config),
        )
        _failpoints.hit("during_collect")
        refused = sum(o.auth for o in outcomes.values())
        needing = [r for r in records if outcomes[r.key].retry > 0]
        if needing and not refused:
            self._restage_open(needing)
        events = []
        for record in records:
            outcome = outcomes[record.key]
            events.append(
                record.to(
                    Phase.COLLECTED,
                    completed=outcome.succeeded,
                    failed=outcome.failed + outcome.retry + outcome.auth,
                    input_tokens=outcome.input_tokens,
                    output_tokens=outcome.output_tokens,
                )
            )
            if record.key in failed_whole:
                self.summary.failed += 1
            else:
                self._cap = min(self.config.max_in_flight, self._cap + 1)
                self._queue_full = 0
        self._commit(events)
        self.summary.collected += len(records)
        self._cleanup(records)
        if refused:
            raise AuthenticationError(
                f"the provider refused {refused} request(s) for credentials, permission or "
                "billing (class 'auth'); they are not recorded as answers: fix the API key or the "
                "account, then run the same call again to send them"
            )

    def _restage_open(self, records: list[BatchRecord]) -> None:
        """Stage the open (retryable) requests of ``records`` as new batches, attempt + 1.

        Under the ``stage`` lease: a run staging now computes its pending requests from what is
        in flight, and ``records`` stay in flight (not collected, their members in ``chunks``)
        until their retries are; without the lease, a run that read ``batches`` before this
        commit and ``chunks`` after the sweep would find those requests unsent and send them too.
        """
        with self.leases.holding(STAGE):
            new = self.stage_and_record(retry_requests(self.store, records))
        for record in new:
            self._records[record.key] = record
        self.summary.restaged += len(new)

    def stage_and_record(self, frame: DataFrame) -> list[BatchRecord]:
        """Pack ``frame``'s requests into chunks, claim them for this run, record them ``staged``.

        Write-ahead: the chunks (members and lines), then this run's leases on their keys, then
        the ``staged`` rows that put their requests in flight.
        """
        staged = self._restage(frame)
        if not staged.chunks:
            return []
        self.leases.claim_new([c.key for c in staged.chunks])  # keys made just now: unheld
        self.leases.check()  # the stage lease is still ours (staging a big input takes a while)
        return self.store.record_staged(
            staged, provider=self.provider.name, endpoint=self.endpoint, job=self.job
        )

    def _requeue(self, record: BatchRecord) -> bool:
        """Queue full: move the members to a new key, abandon this one; False when out of tries."""
        if QUEUE_FULL not in (record.error or ""):
            return False
        tries = self._requeues.get(record.key, 0) + 1
        if tries >= self.config.retry.attempts_for("rate_limited"):
            return False
        new_key = uuid.uuid4().hex
        fresh = BatchRecord(
            key=new_key, seq=0, state=Phase.UPLOADED, provider=record.provider, model=record.model,
            endpoint=record.endpoint, attempt=record.attempt, uri=new_key, requests=record.requests,
            nbytes=record.nbytes, input_ref=record.input_ref, updated_at=time.time(), job=record.job,
        )  # fmt: skip
        abandoned = record.to(
            Phase.ABANDONED, error=f"queue full, re-queued as {new_key}: {record.error}"
        )
        # Under the stage lease, as every staging: a run staging now read the batches in flight
        # before this commit, and reads their members later; without the lease, it could find
        # the old key abandoned and its lines swept, miss the new key, and send its requests too.
        with self.leases.holding(STAGE):
            self.store.copy_chunk(record.key, new_key)
            self.leases.claim_new([new_key])  # before the row that makes it a batch
            self._commit([abandoned, fresh])
        self._requeues[new_key] = tries
        self.summary.requeued += 1
        self._shrink()
        self._hold(new_key)
        return True

    def _cleanup(self, records: list[BatchRecord]) -> None:
        """Best effort: drop the provider's input files of collected batches."""
        for record in records:
            try:
                self.provider.cleanup(record.input_ref)
            except Exception as exc:  # cleanup never fails a run
                log.debug("batch %s: cleanup skipped: %s", record.key, exc)

    def stage(self, frame: DataFrame) -> StagedChunks:
        """Pack ``frame``'s requests (first attempts and retries alike) into chunks in the store."""
        from spark_llm_batch import _pack

        max_requests, max_bytes = self.provider.batch_limits(self.config)
        return _pack.stage_chunks(
            self.spark,
            frame,
            max_requests=max_requests,
            max_bytes=max_bytes,
            model=self.config.model_name,
            sink=self.store,
        )
