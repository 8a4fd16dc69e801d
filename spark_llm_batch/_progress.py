"""Progress counts, computed the same way by the orchestrator's log and by ``Store.progress()``.

Counts come from the batches' current rows only (metadata: no scan of request-level tables), so a
summary costs nothing per row. Requests are counted per submission: a request retried in a second
batch counts in both, which is what "requests done / total" of the provider's work means.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from spark_llm_batch._store_tables import BatchRecord, Phase

__all__ = ["Progress", "RunSummary", "summarize"]


@dataclass(frozen=True)
class Progress:
    """A snapshot of a store's (or one run's) batches.

    Attributes:
        batches: number of batches per current state (``Phase`` value), every state listed.
        requests_total: requests in batches that are not abandoned.
        requests_done: requests in collected batches.
        succeeded / failed: requests the provider reported completed / failed in collected batches.
    """

    batches: dict[str, int] = field(default_factory=dict)
    requests_total: int = 0
    requests_done: int = 0
    succeeded: int = 0
    failed: int = 0

    def __str__(self) -> str:
        states = ", ".join(f"{name} {count}" for name, count in self.batches.items() if count)
        return (
            f"batches: {states or 'none'}; requests done {self.requests_done}/{self.requests_total}"
            f" (succeeded {self.succeeded}, failed {self.failed})"
        )


def summarize(records: Iterable[BatchRecord]) -> Progress:
    """Progress of the given current batch records.

    Example:
        >>> str(summarize([]))
        'batches: none; requests done 0/0 (succeeded 0, failed 0)'
    """
    states: Counter[str] = Counter()
    total = done = succeeded = failed = 0
    for record in records:
        states[record.state.value] += 1
        if record.state is Phase.ABANDONED:
            continue
        total += record.requests
        if record.state is Phase.COLLECTED:
            done += record.requests
            succeeded += record.completed
            failed += record.failed
    ordered = {phase.value: states.get(phase.value, 0) for phase in Phase}
    return Progress(ordered, total, done, succeeded, failed)


@dataclass
class RunSummary:
    """What one orchestrator run did.

    Attributes:
        created / adopted: provider batches created, and found at the provider after a crash.
        collected: batches collected (including ``failed``, those that failed as a whole).
        requeued: batches re-queued as new ones because the provider's queue was full.
        restaged: new batches staged for retries.
        timed_out: the run stopped at ``poll.timeout_seconds`` with batches still in flight.
        progress: the run's batches at the end.
    """

    created: int = 0
    adopted: int = 0
    collected: int = 0
    failed: int = 0
    requeued: int = 0
    restaged: int = 0
    timed_out: bool = False
    progress: Progress = field(default_factory=Progress)
