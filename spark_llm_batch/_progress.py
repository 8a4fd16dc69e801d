"""Progress counts, computed the same way by the orchestrator's log and by ``Store.progress()``.

Counts come from the batches' current rows only (metadata: no scan of request-level tables), so a
summary costs nothing per row. Requests are counted per submission: a request retried in a second
batch counts in both, which is what "requests done / total" of the provider's work means.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from spark_llm_batch._store_tables import BatchRecord, Phase

__all__ = ["Progress", "RunSummary", "progress_bar", "summarize"]


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
        detached: the run was told not to wait, and left batches in flight.
        progress: the run's batches at the end.
    """

    created: int = 0
    adopted: int = 0
    collected: int = 0
    failed: int = 0
    requeued: int = 0
    restaged: int = 0
    timed_out: bool = False
    detached: bool = False
    progress: Progress = field(default_factory=Progress)


def _interactive() -> bool:
    """In a notebook kernel (Jupyter, Databricks) or on a terminal: where a bar is read."""
    return "ipykernel" in sys.modules or sys.stderr.isatty()


@contextmanager
def progress_bar(enabled: bool | None) -> Iterator[Callable[[Progress], None]]:
    """A progress bar of requests done (``tqdm``: a widget in notebooks, text on a terminal) for
    the block; yields the function that shows a new :class:`Progress`. ``None``: shown where it
    is read (:func:`_interactive`); off elsewhere (a job's log has the periodic line instead)."""
    if not (_interactive() if enabled is None else enabled):
        yield lambda progress: None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=0, unit="req", desc="llm_batch", dynamic_ncols=True)

    def show(progress: Progress) -> None:
        if (bar.total, bar.n) == (progress.requests_total, progress.requests_done):
            return
        bar.total = progress.requests_total
        bar.n = progress.requests_done
        states = {k: v for k, v in progress.batches.items() if v}
        bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in states.items()), refresh=False)
        bar.refresh()

    try:
        yield show
    finally:
        bar.close()
