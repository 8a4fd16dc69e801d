"""Ownership of a shared store: leases, claimed with Delta's conditional commits, kept alive by a
heartbeat, taken over once their holder stopped renewing them.

The store's ``leases`` table holds one row per lease: ``name``, ``holder`` (a run's id),
``expires_at``. Two kinds of names:

- ``stage``: held while a run decides what to send and stages it (first attempts, retries, a
  queue-full batch's members under a new key). The pending requests are computed under it
  (requests in another run's batches are in flight, so skipped), and the new batches are claimed
  and committed before it is released: two runs never stage one request.
- a batch key: the run that drives the batch (uploads, creates, polls, collects it). Claimed
  before the batch's ``staged`` row is committed. Another run leaves a held batch alone and waits
  for its results; once the lease expired (its holder died: no heartbeat for ``ttl`` seconds), a
  run takes it over and resumes it, reconciling a create the dead run may have made.

A claim is one MERGE that takes a name only where it is free, expired, or already ours; Delta
makes two concurrent MERGEs on the table conflict, and :func:`~spark_llm_batch._store_commit.
committing` runs the loser again, which then finds the name held. Who won: every name, when the
MERGE reports a row written for each; else it is read back. A key this run has just made (a new
batch's, before any ``batches`` row names it) cannot be held by anyone: it is claimed with one
blind append instead (``claim_new``), a ninth of a MERGE's Spark jobs.
Times are the Spark driver's clock (``current_timestamp()``); ``ttl`` must exceed any clock skew
between the drivers sharing a store, and the longest pause a heartbeat may suffer.

A run on the same machine as a holder whose process is gone (a crashed driver, re-run on the same
host) takes its leases over at once: holder ids carry the host and the pid.

A renewal extends every lease whose row still names this run, expired or not: a row names another
run only once that run has claimed it (a claim writes its holder), so a row that still names this
run was taken by no one, however late the renewal. A heartbeat can be late: its commit is a Spark
job, and it waits behind the run's own long jobs (a big input's staging job keeps every core busy
for minutes). So before each step that spends or stages (``check``: the orchestrator's rounds, each
create, the commit that puts staged requests in flight), a run whose last renewal is over ``ttl / 2``
old renews in its own thread, once its jobs are done. A run that finds a lease lost (another run
took it over meanwhile) stops: driving its batches on could pay for one twice.

The lease of a finished (collected or abandoned) batch guards nothing: the run stops renewing it
and lets it lapse (``let_lapse``), without a commit. A release deletes the released rows, and with
them every row expired for :data:`FORGET_AFTER_SECONDS`, in one commit: lapsed leases do not pile
up, and no other commit is spent on them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from spark_llm_batch._store_commit import committing
from spark_llm_batch.errors import StoreError

if TYPE_CHECKING:
    from spark_llm_batch._store import Store

__all__ = ["STAGE", "Leases", "died_here"]

log = logging.getLogger("spark_llm_batch")

STAGE = "stage"
"""The lease held while a run stages requests."""

FORGET_AFTER_SECONDS = 24 * 3600.0
"""How long a lapsed lease's row stays in ``leases``; a release deletes the older ones."""


def _owner_id() -> str:
    """A run's id: ``<host>/<pid>/<random>``, so that a run on the same machine can tell that
    the holder died (its process is gone) without waiting for its lease to lapse."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"


def died_here(holder: str) -> bool:
    """Whether ``holder`` is a run of this machine whose process no longer exists. A reused pid
    reads as alive: that run's leases are then waited for, the safe way to be wrong."""
    host, _, rest = holder.partition("/")
    pid = rest.partition("/")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, another user's
        return False
    return False


def _names(names: Iterable[str]) -> str:
    return ", ".join("'" + name.replace("'", "''") + "'" for name in names)


def _rows_written(metrics: list[Any]) -> int:
    """Rows a MERGE or UPDATE reports it wrote (``num_affected_rows``); -1 when it reports none."""
    if not metrics or "num_affected_rows" not in metrics[0].asDict():
        return -1
    return int(metrics[0]["num_affected_rows"])


class Leases:
    """This run's leases on ``store``.

    Args:
        store: the store.
        ttl: seconds a lease lives without renewal; the heartbeat renews every ``ttl / 4``.
        owner: this run's id (default: a fresh uuid4 hex).

    Example:
        >>> leases = Leases(store, ttl=120.0)  # doctest: +SKIP
        >>> with leases.heartbeat(), leases.holding(STAGE):  # doctest: +SKIP
        ...     ...
    """

    def __init__(self, store: Store, *, ttl: float, owner: str | None = None) -> None:
        self.store, self.ttl = store, ttl
        self.owner = owner or _owner_id()
        self.held: set[str] = set()
        self.lost: set[str] = set()  # held once, then found claimed by another run
        self._renewed = time.monotonic()
        self._lock = threading.Lock()

    # ---- claims -----------------------------------------------------------------------------------

    def claim(
        self, names: Sequence[str], *, holders: dict[str, str | None] | None = None
    ) -> set[str]:
        """Take every name of ``names`` that is free, expired, ours, or held by a run that died
        on this machine; return those now ours.

        ``holders``: what the caller just read with :meth:`holders` (or knows: nobody holds a key
        made a moment ago), so that it is not read again to find the dead ones.
        """
        if not names:
            return set()
        values = ", ".join(f"({_names([n])})" for n in names)
        if holders is None:
            holders = self.holders(names)
        dead = sorted({h for h in holders.values() if h and died_here(h)})
        or_dead = f" OR t.holder IN ({_names(dead)})" if dead else ""
        if dead:
            log.info("runs %s died on this machine: their leases are taken over now", dead)
        statement = (
            f"MERGE INTO {self.store.table_ref('leases')} t USING (SELECT name, "
            f"'{self.owner}' AS holder, current_timestamp() + make_interval(0, 0, 0, 0, 0, 0, "
            f"{self.ttl}) AS expires_at FROM VALUES {values} AS v(name)) s ON t.name = s.name "
            "WHEN MATCHED AND (t.holder = s.holder OR t.expires_at < current_timestamp()"
            f"{or_dead}) THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
        )
        metrics = self._commit("claiming leases", statement)
        if _rows_written(metrics) == len(set(names)):  # every name's row is now ours
            won = set(names)
        else:  # some were held (or no metrics): ours if the row names us, even if it already
            # lapsed (a tiny ttl under a slow commit)
            found = self.holders(names, live=False)
            won = {n for n, holder in found.items() if holder == self.owner}
        with self._lock:
            self.held |= won
        return won

    def claim_new(self, names: Sequence[str]) -> None:
        """Take ``names`` that no run can hold: keys this run has just made, that no ``batches``
        row names yet (so no other run knows them). One blind append: there is no row for a
        MERGE to weigh, and an append never conflicts with other runs' claims.

        Example:
            >>> leases.claim_new([uuid.uuid4().hex])  # doctest: +SKIP
        """
        if not names:
            return
        values = ", ".join(f"({_names([n])})" for n in names)
        statement = (
            f"INSERT INTO {self.store.table_ref('leases')} SELECT name, '{self.owner}', "
            f"current_timestamp() + make_interval(0, 0, 0, 0, 0, 0, {self.ttl}) "
            f"FROM VALUES {values} AS v(name)"
        )
        self._commit("claiming new leases", statement)  # retried, two rows naming us: one lease
        with self._lock:
            self.held |= set(names)

    def holders(self, names: Sequence[str], *, live: bool = True) -> dict[str, str | None]:
        """Per name: the holder of its live lease, or ``None`` (free or expired); with ``live``
        false, whoever the row names, expired or not."""
        if not names:
            return {}
        alive = " AND expires_at >= current_timestamp()" if live else ""
        rows = self.store.spark.sql(
            f"SELECT name, holder FROM {self.store.table_ref('leases')} WHERE name IN "
            f"({_names(names)}){alive}"
        ).collect()
        found = {row["name"]: row["holder"] for row in rows}
        return {name: found.get(name) for name in names}

    def let_lapse(self, names: Iterable[str]) -> None:
        """Stop renewing ``names`` (still ours until they expire); no commit. For the leases of
        finished batches, which no run needs: releasing them would cost a commit for nothing."""
        with self._lock:
            self.held -= set(names)

    def mine(self) -> set[str]:
        """The names this run holds (a copy: the heartbeat drops lost ones meanwhile)."""
        with self._lock:
            return set(self.held)

    def release(self, names: Sequence[str]) -> None:
        """Give up ``names`` now (their rows deleted: another run may take them), and forget
        every lease expired for :data:`FORGET_AFTER_SECONDS`, in one commit."""
        with self._lock:  # no longer held before the rows go: a renewal meanwhile skips them
            names = [n for n in names if n in self.held]
            self.held -= set(names)
        if not names:
            return
        statement = (
            f"DELETE FROM {self.store.table_ref('leases')} WHERE (holder = '{self.owner}' AND "
            f"name IN ({_names(names)})) OR expires_at < current_timestamp() - "
            f"make_interval(0, 0, 0, 0, 0, 0, {FORGET_AFTER_SECONDS})"
        )
        self._commit("releasing leases", statement)

    @contextmanager
    def holding(self, name: str, *, poll: float = 1.0) -> Iterator[None]:
        """Hold ``name`` for the block, waiting (and saying so) while another run holds it.

        The first try claims at once (no read first: a lease is free most of the time, and a
        held one is read back by the claim); after that, only what looks free is claimed."""
        waited = False
        holder: str | None = None  # not read yet: the first try claims at once
        while True:
            # After that, claim only what looks free (a read, not a commit): waiting runs do
            # not keep racing the holder's heartbeat.
            if self._looks_free(holder) and name in self.claim([name], holders={name: holder}):
                break
            holder = self.holders([name])[name]
            if self._looks_free(holder):
                continue  # freed meanwhile, or its holder died: claim at once
            if not waited:
                log.info("store %s: lease %r is held by run %s; waiting for it",
                         self.store.location, name, holder)  # fmt: skip
                waited = True
            time.sleep(poll)
        try:
            yield
        finally:
            self.release([name])

    def _commit(self, what: str, statement: str) -> list[Any]:
        """Run one statement on ``leases`` (a commit), retried on races; its metrics rows."""
        rows: list[Any] = committing(what, lambda: self.store.spark.sql(statement).collect())
        return rows

    def _looks_free(self, holder: str | None) -> bool:
        """Whether a lease with this live holder (``None``: none) may be claimed."""
        return holder in (None, self.owner) or died_here(holder or "")

    # ---- the heartbeat ----------------------------------------------------------------------------

    def renew(self) -> None:
        """Extend by ``ttl`` every held lease whose row still names this run, lapsed or not (see
        the module docstring); a lease whose row names another run, or is gone, is lost: dropped
        from ``held``, added to ``lost``."""
        started = time.monotonic()
        with self._lock:
            names = sorted(self.held)
        if not names:
            self._renewed = max(self._renewed, started)
            return
        statement = (
            f"UPDATE {self.store.table_ref('leases')} SET expires_at = current_timestamp() + "
            f"make_interval(0, 0, 0, 0, 0, 0, {self.ttl}) WHERE holder = '{self.owner}' AND "
            f"name IN ({_names(names)})"
        )
        metrics = self._commit("renewing leases", statement)
        if _rows_written(metrics) == len(names):  # every one extended
            kept = set(names)
        else:
            found = self.holders(names, live=False)
            kept = {n for n, holder in found.items() if holder == self.owner}
        with self._lock:
            lost = (set(names) & self.held) - kept  # not the ones released meanwhile
            self.held -= lost
            self.lost |= lost
            self._renewed = max(self._renewed, started)
        if lost:
            log.warning("run %s lost its lease on %s to another run", self.owner, sorted(lost))

    def check(self) -> None:
        """Before a step that spends or stages: make sure this run still holds its leases. When
        the last renewal is over ``ttl / 2`` old (a heartbeat held up behind long Spark jobs, a
        paused driver), renew now, in the calling thread.

        Raises:
            StoreError: a lease was lost to another run; or renewing now failed and no renewal
                has succeeded for ``ttl`` seconds.
        """
        silent = time.monotonic() - self._renewed
        if silent > self.ttl / 2:
            try:
                self.renew()
            except Exception as exc:
                if time.monotonic() - self._renewed > self.ttl:
                    raise StoreError(
                        f"run {self.owner} could not renew its leases on the store "
                        f"{self.store.location!r} for {silent:.0f} s (lease_seconds="
                        f"{self.ttl:.0f}): {exc}; it stops rather than risk paying twice; run "
                        "the same call again to resume"
                    ) from exc
                log.warning("run %s: lease renewal failed: %s", self.owner, exc)
            if silent > self.ttl and not self.lost:
                log.warning("run %s renewed its leases %.0f s after the last renewal (past "
                            "lease_seconds=%.0f; long Spark jobs hold the heartbeat up): no other "
                            "run took them meanwhile, so it goes on", self.owner, silent,
                            self.ttl)  # fmt: skip
        if self.lost:
            raise StoreError(
                f"run {self.owner} lost its lease(s) on {sorted(self.lost)} in the store "
                f"{self.store.location!r}: another run took them over while this run's renewals "
                f"were late (lease_seconds={self.ttl:.0f}); it stops rather than risk paying "
                "twice; run the same call again to resume"
            )

    @contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Renew the held leases every ``ttl / 4`` seconds in a daemon thread, for the block;
        release them all at its end."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.ttl / 4):
                try:
                    self.renew()
                except Exception as exc:  # the run's check() stops it once ttl has passed
                    log.warning("run %s: lease renewal failed: %s", self.owner, exc)

        thread = threading.Thread(target=beat, name="spark-llm-batch-heartbeat", daemon=True)
        self._renewed = time.monotonic()
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=self.ttl)
            try:
                self.release(sorted(self.held))
            except Exception as exc:  # they expire by themselves
                log.info("run %s: leases not released: %s", self.owner, exc)
