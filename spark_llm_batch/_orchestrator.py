"""The driver state machine: every batch of one provider/model/endpoint, from staged to collected.

Provider-neutral: it speaks :class:`~spark_llm_batch.providers.base.Provider` only. Each batch moves
``staged → uploaded → creating → submitted → ended → collected`` (``abandoned`` when re-queued or
unsubmittable), and every transition is committed to the store BEFORE the side effect that depends
on it (write-ahead):

================  =================================================================================
committed         then (side effect)
================  =================================================================================
``staged``        (``Store.record_staged``, after the chunks: members and lines) → upload (through
                  the run's transport, several chunks at once)
``uploaded`` +    one append: the file id and the intent to create → ``provider.create``; a crash
``creating``      before ``submitted`` is reconciled with ``provider.find(chunk, not_before)`` first
``submitted``     the provider batch id → ``provider.retrieve`` (poll with exponential backoff)
(none)            a poll sees the batch ended (result refs and counts) → read results on
                  executors, MERGE into ``results``
(results MERGE)   → retries re-staged (members and ``staged`` rows of new batches)
``ended`` +       one append for every batch collected together → best-effort cleanup of the
``collected``     input file; the chunks' rows are swept once the run's loop ends
                  (``Store.sweep_chunks``). Ends waiting to be collected are committed alone
                  once per ``poll.progress_seconds``; a crash before ``collected`` only means
                  polling again, and collecting again adds nothing
================  =================================================================================

Where requests travel inline (``provider.requests_inline``, Anthropic) there is no upload:
``staged`` → ``creating`` (the intent, alone) → the transport sends the lines in the create call
(``provider.create_inline``) → ``submitted``. A provider whose batches cannot carry our key
(``provider.tags_batches`` false) starts one chunk at a time and commits right after each create,
so that a crash leaves at most one batch unrecorded, which ``find`` recognises by request count
and creation time among the batches no store records; several candidates are told apart by their
first result's ``custom_id`` once they have ended (:mod:`spark_llm_batch._reconcile`), and until
then none is adopted or created again (looked up later).

A batch the provider ``failed`` as a whole: with ``token_limit_exceeded`` (queue full) its members are
copied to a new key, then one append records the old one ``abandoned`` and the new one ``uploaded``
(same input file): it is created again later, with less in flight (the cap halves, then grows back by
one per collected batch). Any other batch failure records every member ``batch_failed`` (final) with
the provider's message. Expired and cancelled batches are collected; their open requests retry per
:class:`~spark_llm_batch.config.RetryPolicy` via ``restage`` (attempt + 1).

Provider traffic goes through a :class:`~spark_llm_batch._transport.Transport` chosen once per run;
the state machine never asks which one it has.

Usage::

    summary = Orchestrator(spark, store, provider, config, transport=transport).run()

Progress: a log line (logger ``spark_llm_batch``) per state change and a summary every
``config.poll.progress_seconds``; ``store.progress()`` gives the same counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from spark_llm_batch import _failpoints
from spark_llm_batch._leases import Leases, died_here
from spark_llm_batch._orchestrator_ended import EndedPhase, RestageFn
from spark_llm_batch._progress import RunSummary, progress_bar, summarize
from spark_llm_batch._reconcile import tell_apart
from spark_llm_batch._store_tables import BatchRecord, Phase
from spark_llm_batch._transport import (
    ChunkMissing,
    CreateOutcome,
    ExecutorTransport,
    Transport,
    UploadOutcome,
)
from spark_llm_batch.errors import AuthenticationError, ProviderError
from spark_llm_batch.providers.base import AmbiguousBatch, BatchState, ProviderBatch

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from spark_llm_batch._store import Store
    from spark_llm_batch.config import BatchConfig
    from spark_llm_batch.providers.base import Provider

__all__ = ["SOON_FRACTION", "Orchestrator", "RestageFn", "RunSummary"]

log = logging.getLogger("spark_llm_batch")

# Statuses meaning "the provider rejected this submission": the batch fails as a whole.
_REJECTED = (400, 404, 413, 422)

SOON_FRACTION = 1 / 3
"""Another batch's end brings a batch's next poll forward, to no less than this fraction of
``poll.max_seconds`` after its last poll (:meth:`Orchestrator._poll_soon`)."""


class Orchestrator(EndedPhase):
    """Drives every non-terminal batch of ``provider``/``config.model_name``/its endpoint.

    Args:
        spark: the session.
        store: the opened store.
        provider: the provider (pickled to executors for collection).
        config: limits, retry and poll policies, ``max_in_flight``.
        transport: moves lines to the provider and results back (default: executors).
        leases: this run's claims on the store (default: fresh ones of ``config.lease_seconds``):
            it drives the batches it holds, takes over those whose holder died, and waits for
            the others.
        restage: packs retry requests; default: :meth:`stage` (``_pack.stage_chunks`` with the
            provider's batch limits).
        job: the job the batches it stages (retries) belong to: the output the run writes.
        sleep / clock: injectable for tests.

    Example:
        >>> summary = Orchestrator(spark, store, provider, config, transport=t).run()  # doctest: +SKIP
    """

    def __init__(
        self,
        spark: SparkSession,
        store: Store,
        provider: Provider,
        config: BatchConfig,
        *,
        transport: Transport | None = None,
        leases: Leases | None = None,
        restage: RestageFn | None = None,
        job: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spark, self.store, self.provider, self.config = spark, store, provider, config
        self.endpoint = provider.endpoint(config)
        self.job = job
        self.transport = transport or ExecutorTransport(store, provider)
        self._own_leases = leases is None  # then its run keeps them alive itself
        self.leases = leases or Leases(store, ttl=config.lease_seconds)
        self._foreign: set[str] = set()  # batches another live run drives: waited for
        self._foreign_due = 0.0
        self._restage = restage or self.stage
        self._sleep, self._clock = sleep, clock
        self._records: dict[str, BatchRecord] = {}
        self._due: dict[str, float] = {}  # key -> clock time of the next poll / earliest retry
        self._interval: dict[str, float] = {}
        self._polled: dict[str, float] = {}  # key -> clock time of its last poll
        self._reconcile: set[str] = set()  # ``creating`` keys whose batch may exist already
        self._requeues: dict[str, int] = {}
        self._ended_since: dict[str, float] = {}  # key -> clock time it was first seen ended
        self._held: list[BatchRecord] = []  # adopted, committed with the next commit
        self._observed_due = 0.0  # clock time from which held events are committed (set by run)
        self._seen_state: dict[str, str] = {}  # key -> provider state last logged
        self._cap = config.max_in_flight
        self._queue_full = 0
        self.summary = RunSummary()

    # ---- the loop ---------------------------------------------------------------------------------

    def run(self, *, wait: bool = True, known: Sequence[BatchRecord] | None = None) -> RunSummary:
        """Drive every batch in scope to a terminal state (or until ``poll.timeout_seconds``).

        With ``wait`` false (a detached run), go as far as the batches allow without waiting:
        stage, upload, create, poll each batch once, collect what has ended; then return, the
        batches still in flight tracked in the store (``summary.detached``).

        ``known``: every batch in scope, as the caller knows them for sure, so that the store's
        batches are not read again: the batches this run has just staged, when its staging (under
        the ``stage`` lease, which every staging holds) found no batch at all in flight. Then no
        other batch can be there to resume, and one staged later by another run holds none of
        this run's requests (they were in flight). ``None``: read the store.
        """
        if not self._own_leases:
            return self._run(wait, known)
        with self.leases.heartbeat():
            return self._run(wait, known)

    def _run(self, wait: bool, known: Sequence[BatchRecord] | None) -> RunSummary:
        if known is None:
            self._load()
        else:
            self._take(list(known))
        policy = self.config.poll
        start = self._clock()
        next_report = start + policy.progress_seconds
        self._observed_due = start + policy.progress_seconds
        with progress_bar(policy.progress_bar if wait else False) as bar:
            while self._active():
                acted = self._step()
                now = self._clock()
                progress = summarize(self._records.values())
                bar(progress)
                if now >= next_report:
                    log.info("progress: %s", progress)
                    next_report = now + policy.progress_seconds
                if acted:
                    continue
                if not wait or (
                    policy.timeout_seconds is not None and now - start >= policy.timeout_seconds
                ):
                    self._collect_ended(force=True)  # what has ended is collected before leaving
                    self._leave(wait, now - start)
                    break
                self._sleep(max(0.0, min(self._next_wake(now), next_report) - now))
        self._flush()  # what is held (in-progress states seen last): the store as seen
        # The lines of what this run collected or abandoned (and of crashed runs).
        self.store.sweep_chunks([r.key for r in self._records.values() if r.state.is_terminal])
        self.summary.progress = summarize(self._records.values())
        log.info("run finished: %s", self.summary.progress)
        return self.summary

    def _leave(self, wait: bool, waited: float) -> None:
        """Stop before every batch has ended: detached, or out of ``poll.timeout_seconds``."""
        if not wait:
            log.info("detached: the batches in flight stay tracked in the store; run the same "
                     "call again to collect them")  # fmt: skip
            self.summary.detached = True
            return
        log.warning("stopped waiting after %.0f s; the batches stay tracked in the store", waited)
        self.summary.timed_out = True

    def _load(self) -> None:
        records = self.store.current_batches(
            provider=self.provider.name, model=self.config.model_name, endpoint=self.endpoint
        )
        self._take(records)

    def _take(self, records: list[BatchRecord]) -> None:
        """Drive the records this run holds or can claim (free or expired leases, or held by a
        run that died on this machine); wait for the others (another live run drives them)."""
        # Leases this run holds are its own (the heartbeat drops any it finds lost): not read.
        holders: dict[str, str | None] = dict.fromkeys(self.leases.mine(), self.leases.owner)
        holders.update(self.leases.holders([r.key for r in records if r.key not in holders]))
        free = [r.key for r in records if died_here(holders[r.key] or "") or not holders[r.key]]
        won = self.leases.claim(free, holders={k: holders[k] for k in free}) if free else set()
        for record in records:
            if record.key not in won and holders[record.key] != self.leases.owner:
                if record.key not in self._foreign:
                    log.info("batch %s: driven by run %s; waiting for its results",
                             record.key, holders[record.key])  # fmt: skip
                self._foreign.add(record.key)
                continue
            self._foreign.discard(record.key)
            self._records[record.key] = record
            if record.state is Phase.CREATING:
                self._reconcile.add(record.key)  # a crash may have hit between create and commit
            log.info("batch %s: resuming from %s", record.key, record.state.value)

    def _watch_foreign(self) -> bool:
        """Now and then, look at the batches other runs drive: drop the finished ones, take over
        those whose run died. True when some were taken over."""
        now = self._clock()
        if not self._foreign or now < self._foreign_due:
            return False
        self._foreign_due = now + max(self.config.poll.max_seconds, 2.0)
        current = {
            r.key: r
            for r in self.store.current_batches(
                provider=self.provider.name,
                model=self.config.model_name,
                endpoint=self.endpoint,
            )
        }
        self._foreign &= set(current)  # collected (or abandoned) by their run: nothing to wait for
        before = len(self._records)
        self._take([current[key] for key in sorted(self._foreign)])
        return len(self._records) > before

    def _active(self) -> bool:
        return bool(self._foreign) or any(not r.state.is_terminal for r in self._records.values())

    def _step(self) -> bool:
        """One round of every kind of work; True when some batch changed state."""
        self.leases.check()  # a run whose claims may have lapsed must not create anything
        acted = self._watch_foreign()
        acted = self._collect_ended() or acted
        acted = self._start_staged() or acted
        acted = self._create_pending() or acted
        return self._poll_due() or acted

    def _in_state(self, *states: Phase) -> list[BatchRecord]:
        return [r for r in self._records.values() if r.state in states]

    def _ready(self, record: BatchRecord, now: float) -> bool:
        return self._due.get(record.key, 0.0) <= now

    def _next_wake(self, now: float) -> float:
        waiting = self._in_state(Phase.SUBMITTED, Phase.CREATING)
        if self._slots():
            waiting += self._in_state(Phase.STAGED, Phase.UPLOADED)
        dues = [self._due.get(r.key, now) for r in waiting]
        dues += [since + self._collect_wait() for since in self._ended_since.values()]
        if self._foreign:
            dues.append(self._foreign_due)
        return min(dues) if dues else now + self.config.poll.initial_seconds

    def _commit(self, events: list[BatchRecord]) -> None:
        """Append the held events and ``events`` in one commit, then adopt and log ``events``.

        No events: no commit (the held ones wait; :meth:`_flush` stores them alone)."""
        if events:
            self._flush(events)
            self._adopt(events)

    def _flush(self, events: list[BatchRecord] | None = None) -> None:
        """Commit the held events (then ``events``, not yet adopted) in one append, if any."""
        rows, self._held = [*self._held, *(events or [])], []
        if rows:
            self.store.append_batches(rows)
            # A finished batch's lease guards nothing now: left to lapse, not released.
            self.leases.let_lapse([r.key for r in rows if r.state.is_terminal])

    def _hold_ends(self, events: list[BatchRecord]) -> None:
        """Adopt ``events`` (ends, in-progress observations) now; commit them with the next commit.

        Nothing depends on an end being stored: a crash before it only means the next run polls
        the batch again and sees it ended. So batches ending over several poll rounds cost one
        commit, not one per round, and the ends go with their ``collected`` rows (one append).
        """
        self._adopt(events)
        self._held += events

    def _adopt(self, events: list[BatchRecord]) -> None:
        for event in events:
            before = self._records.get(event.key)
            self._records[event.key] = event
            detail = f" ({event.provider_state})" if event.provider_state else ""
            log.info(
                "batch %s: %s -> %s%s%s",
                event.key,
                before.state.value if before else "-",
                event.state.value,
                detail,
                f" id {event.batch_id}" if event.batch_id else "",
            )

    def _schedule(self, key: str, *, reset: bool = False) -> None:
        """Next poll of ``key``: exponential backoff within ``config.poll``."""
        policy = self.config.poll
        previous = self._interval.get(key)
        interval = (
            policy.initial_seconds if reset or previous is None else previous * policy.multiplier
        )
        self._interval[key] = min(interval, policy.max_seconds)
        self._due[key] = self._clock() + self._interval[key]

    # ---- staged / uploaded -> creating -> submitted -----------------------------------------------

    def _start_staged(self) -> bool:
        """Start up to the free slots: upload, then commit ``uploaded`` + ``creating`` in one
        append; where requests travel inline, commit ``creating`` (the intent) alone: the create
        sends the lines (:meth:`_create_pending`). A provider that cannot tag batches starts one
        chunk at a time, once no other is ``creating``."""
        now = self._clock()
        ready = [r for r in self._in_state(Phase.UPLOADED, Phase.STAGED) if self._ready(r, now)][
            : self._slots()
        ]
        inline = self.provider.requests_inline
        staged = [r for r in ready if r.state is Phase.STAGED]
        uploads = dict(
            zip([r.key for r in staged], self.transport.upload([r.chunk for r in staged]), strict=True)
        ) if staged and not inline else {}  # fmt: skip
        events: list[BatchRecord] = []
        for record in ready:
            current: BatchRecord | None = record
            if record.state is Phase.STAGED and not inline:
                current = self._uploaded(record, uploads[record.key], events)
            if current is not None:
                events.append(current.to(Phase.CREATING))
        if uploads:
            _failpoints.hit("after_upload")
        self._commit(events)
        return bool(events)

    def _slots(self) -> int:
        """How many ``staged`` or ``uploaded`` batches may start now: what the in-flight cap
        leaves room for; for a provider that cannot tag batches, one, and only while none is
        ``creating`` (its intent is committed right before its create, so a crash leaves at most
        one chunk whose batch ``find`` must recognise by count and time)."""
        slots = self._cap - len(self._in_state(Phase.CREATING, Phase.SUBMITTED))
        if self._one_at_a_time:
            slots = 0 if self._in_state(Phase.CREATING) else min(slots, 1)
        return max(slots, 0)

    @property
    def _one_at_a_time(self) -> bool:
        """Whether batches are created one by one, each committed before the next starts: the
        lines travel in the create call and the batch cannot carry our key."""
        return self.provider.requests_inline and not self.provider.tags_batches

    def _uploaded(
        self, record: BatchRecord, outcome: UploadOutcome, events: list[BatchRecord]
    ) -> BatchRecord | None:
        """Append ``record``'s next event(s) after its upload to ``events``; the uploaded record."""
        if isinstance(outcome, BaseException):
            failed = self._send_failed(record, outcome)
            if failed is not None:
                events.append(failed)
            return None
        uploaded = record.to(Phase.UPLOADED, input_ref=outcome)
        events.append(uploaded)
        return uploaded

    def _send_failed(self, record: BatchRecord, exc: BaseException) -> BatchRecord | None:
        """The event after a failed upload or create, if any (else the batch is held)."""
        if isinstance(exc, ChunkMissing):
            # The chunk's lines are gone: nothing to submit. Its members fall back to pending.
            return record.to(Phase.ABANDONED, error=f"chunk missing: {exc}")
        if isinstance(exc, ProviderError):
            return self._submit_failed(record, exc)
        raise exc

    def _create_pending(self) -> bool:
        """Create (or adopt via ``find``) every due ``creating`` batch, then commit.

        Batches created from uploaded files are committed together. Where requests travel inline
        the transport sends each chunk in its create call; a provider that cannot tag a batch
        with our key creates one batch at a time and commits right after each create, so that a
        crash leaves at most one created batch unrecorded, the one ``find`` must recognise by
        request count and time alone.
        """
        now = self._clock()
        events: list[BatchRecord] = []
        to_create: list[BatchRecord] = []
        owned: frozenset[str] | None = None  # read once per round, when some lookup needs it
        for record in self._in_state(Phase.CREATING):
            if not self._ready(record, now):
                continue
            if record.key in self._reconcile:
                owned = self._owned() if owned is None else owned
                decided, found = self._find(record, owned)
                if found is not None:
                    events.append(found)
                    owned |= {found.batch_id or ""}  # adopted: never again for another chunk
                if found is not None or not decided:
                    continue
            to_create.append(record)
        self._commit(events)
        one_by_one = self._one_at_a_time
        for group in [[r] for r in to_create] if one_by_one else [to_create] if to_create else []:
            self.leases.check()  # the round's earlier work may have run long
            created = [e for r, o in zip(group, self._create(group), strict=True)
                       if (e := self._created(r, o)) is not None]  # fmt: skip
            self._commit(created)
            events += created
        return bool(events)

    def _create(self, records: list[BatchRecord]) -> list[CreateOutcome]:
        """Create the batches of ``records``: from their uploaded files, or with their lines."""
        if self.provider.requests_inline:
            outcomes = self.transport.create_inline([r.chunk for r in records], self.config)
            if any(isinstance(o, ProviderBatch) for o in outcomes):
                _failpoints.hit("after_create")
            return outcomes
        outcomes = []
        for record in records:
            try:
                outcomes.append(
                    self.provider.create(record.chunk, record.input_ref or "", self.config)
                )
            except ProviderError as exc:
                outcomes.append(exc)
                continue
            _failpoints.hit("after_create")
        return outcomes

    def _created(self, record: BatchRecord, outcome: CreateOutcome) -> BatchRecord | None:
        if isinstance(outcome, BaseException):
            if isinstance(outcome, ProviderError):
                self._reconcile.add(record.key)  # a failed call may still have created it
            return self._send_failed(record, outcome)
        self.summary.created += 1
        return self._submitted(record, outcome)

    def _find(self, record: BatchRecord, owned: frozenset[str]) -> tuple[bool, BatchRecord | None]:
        """Look for a batch a crash (or a failed call) left unrecorded for ``record``, among
        those whose ids are not in ``owned``.

        Returns whether the lookup decided, and the ``submitted`` event of the batch it found
        (``(True, None)``: none exists, create it). Undecided (the lookup failed, or saw several
        candidates), ``record`` is held and looked up again later: never created meanwhile.
        """
        try:
            found = self._lookup(record, owned)
        except AuthenticationError:
            raise
        except (AmbiguousBatch, ProviderError) as exc:
            log.warning("batch %s: not created again until the provider's batches are looked "
                        "up: %s", record.key, exc)  # fmt: skip
            self._hold(record.key, getattr(exc, "retry_after", None))
            return False, None
        if found is None:
            return True, None
        self.summary.adopted += 1
        log.info("batch %s: found %s at the provider, adopted (not created again)",
                 record.key, found.batch_id)  # fmt: skip
        return True, self._submitted(record, found)

    def _lookup(self, record: BatchRecord, owned: frozenset[str]) -> ProviderBatch | None:
        """``provider.find``; where batches carry no key, what it matched on count and time is
        checked against the ids of its results (:func:`tell_apart`)."""
        try:
            # Our clock at the ``creating`` commit: the provider widens it by its own clock slack.
            found = self.provider.find(record.chunk, record.updated_at, owned)
        except AmbiguousBatch as exc:
            candidates = exc.candidates
            log.info("batch %s: %d candidates at the provider (%s), telling them apart by their "
                     "results", record.key, len(candidates),
                     ", ".join(c.batch_id for c in candidates))  # fmt: skip
        else:
            if found is None or self.provider.tags_batches:
                return found
            candidates = (found,)  # matched on count and time only: its results may say otherwise
        hashes = self.store.members_of([record.key]).select("hash").collect()
        return tell_apart(self.provider, candidates, (row["hash"] for row in hashes))

    def _submitted(self, record: BatchRecord, batch: ProviderBatch) -> BatchRecord:
        self._reconcile.discard(record.key)
        self._schedule(record.key, reset=True)
        return record.to(Phase.SUBMITTED, **_observed(batch))

    def _owned(self) -> frozenset[str]:
        """Every provider batch id the store records (any run, provider or model): never adopted
        for another chunk. Where batches carry our key, none: a key names one chunk, so ``find``
        cannot match another's batch (and the store is not read)."""
        if self.provider.tags_batches:
            return frozenset()
        stored = self.store.current_batches(include_terminal=True)
        return frozenset(r.batch_id for r in [*stored, *self._records.values()] if r.batch_id)

    def _submit_failed(self, record: BatchRecord, exc: ProviderError) -> BatchRecord | None:
        """A failed upload/create: rejected → ``ended`` failed; queue full → hold and shrink; else hold."""
        if isinstance(exc, AuthenticationError):
            raise exc
        if exc.status in _REJECTED:
            return record.to(Phase.ENDED, provider_state=BatchState.FAILED.value, error=exc.message)
        if exc.status == 429:
            self._shrink()
        log.warning(
            "batch %s: submission failed (status %s), retrying later: %s",
            record.key,
            exc.status,
            exc.message,
        )
        self._hold(record.key, exc.retry_after)
        return None

    def _hold(self, key: str, retry_after: float | None = None) -> None:
        policy = self.config.poll
        backoff = policy.initial_seconds * policy.multiplier ** max(self._queue_full, 1)
        self._due[key] = self._clock() + max(min(backoff, policy.max_seconds), retry_after or 0.0)

    def _shrink(self) -> None:
        self._queue_full += 1
        self._cap = max(
            1, min(self._cap, len(self._in_state(Phase.CREATING, Phase.SUBMITTED))) // 2
        )
        log.warning("provider queue full: at most %d batch(es) in flight for now", self._cap)

    # ---- polling ----------------------------------------------------------------------------------

    def _poll_due(self) -> bool:
        """Retrieve every due ``submitted`` batch; adopt what changed and hold it for a commit.

        An end is adopted at once and committed with the next commit: at the latest with its
        batch's ``collected`` row, or once ``poll.progress_seconds`` have passed since the last
        such commit, so that the store's progress stays that fresh. A change of the provider's
        in-progress state (``validating`` -> ``in_progress`` ...) only feeds progress: it is logged
        at once, held with an end or once per ``poll.progress_seconds``, and otherwise observed
        again later. Each commit costs a Delta write; batches ending over several poll rounds
        share one.
        """
        now = self._clock()
        due = [r for r in self._in_state(Phase.SUBMITTED) if self._ready(r, now)]
        ends = []
        observed = []
        for record in due:
            self._polled[record.key] = now
            try:
                batch = self.provider.retrieve(record.batch_id or "")
            except AuthenticationError:
                raise
            except ProviderError as exc:
                log.warning(
                    "batch %s: poll failed (status %s): %s", record.key, exc.status, exc.message
                )
                self._schedule(record.key)
                continue
            if batch.state.is_terminal:
                ends.append(record.to(Phase.ENDED, **_observed(batch)))
                continue
            self._schedule(record.key)
            if batch.state.value != record.provider_state:
                observed.append(record.to(Phase.SUBMITTED, **_observed(batch)))
                if self._seen_state.get(record.key) != batch.state.value:
                    self._seen_state[record.key] = batch.state.value
                    log.info("batch %s: provider state %s", record.key, batch.state.value)
        if due:
            _failpoints.hit("while_polling")
        progress_due = now >= self._observed_due
        self._hold_ends(ends + (observed if ends or progress_due else []))
        if self._held and progress_due:
            self._flush()
            self._observed_due = now + self.config.poll.progress_seconds
        if ends:
            self._poll_soon(now)
        return bool(ends)

    def _poll_soon(self, now: float) -> None:
        """Some batch ended: bring the others' next poll forward.

        Batches submitted together tend to end together: polled soon rather than after their
        grown backoff, ended batches are collected in one round. Soon is ``poll.initial_seconds``
        from now, but never closer than :data:`SOON_FRACTION` of ``poll.max_seconds`` to a batch's
        last poll, and its backoff is kept: however often batches end, a batch is polled at most
        once per ``max_seconds / 3`` once its own backoff is past that (36 times an hour with the
        default policy; about 12 when nothing ends), never in a storm of resets.
        """
        policy = self.config.poll
        for record in self._in_state(Phase.SUBMITTED):
            last = self._polled.get(record.key, now)
            soon = max(now + policy.initial_seconds, last + policy.max_seconds * SOON_FRACTION)
            self._due[record.key] = min(self._due.get(record.key, soon), soon)


def _observed(batch: ProviderBatch) -> dict[str, object]:
    """The record fields a provider observation sets."""
    errors = "; ".join(f"{code}: {message}" for code, message in batch.errors) or None
    return {
        "batch_id": batch.batch_id,
        "provider_state": batch.state.value,
        "result_refs": tuple(batch.result_refs),
        "total": batch.total,
        "completed": batch.completed,
        "failed": batch.failed,
        "error": errors,
    }
