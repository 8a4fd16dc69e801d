"""Telling apart the batches that may be a lost create's, for providers that cannot tag batches.

After a crash between a create and the commit that records it, ``Provider.find`` looks for the
chunk's batch among those no store records. Without our key on the batch (Anthropic), it can only
match on request count and creation time, and when several batches match it raises
:class:`~spark_llm_batch.providers.base.AmbiguousBatch` with them. The results then decide: a
batch holds the requests of one chunk only, and every request's ``custom_id`` is its hash, so the
first result line of an ended candidate says whose it is.

=======================================  ===========================================================
candidates                               decision
=======================================  ===========================================================
one ended with a result of the chunk's   that one is the chunk's: adopted
the others ended with other ids, one     the one left is the only one that can be the chunk's:
has no results yet                       adopted (as when ``find`` matches exactly one)
all ended, none with the chunk's ids     the create never arrived: ``None`` (create it)
several without results yet              still ambiguous: neither adopted nor created, asked later
=======================================  ===========================================================

Only the first result of each ended candidate is read (one streamed line, then the stream is
closed), on the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from spark_llm_batch.providers.base import AmbiguousBatch, Provider, ProviderBatch

__all__ = ["tell_apart"]

log = logging.getLogger("spark_llm_batch")


def tell_apart(
    provider: Provider, candidates: Sequence[ProviderBatch], members: Iterable[str]
) -> ProviderBatch | None:
    """The candidate that holds the chunk whose request hashes are ``members``, if it can be told.

    Returns:
        The chunk's batch, or ``None`` when every candidate ended holding other requests.

    Raises:
        AmbiguousBatch: more than one candidate has no results yet (nothing to tell them apart).
        ProviderError: reading a candidate's results failed.
    """
    mine = frozenset(members)
    undecided: list[ProviderBatch] = []
    for batch in candidates:
        first = _first_result_id(provider, batch)
        if first is None:
            undecided.append(batch)
        elif first in mine:
            log.info("batch %s holds the chunk's requests (result %s)", batch.batch_id, first)
            return batch
        else:
            log.info("batch %s holds other requests (result %s): not the chunk's",
                     batch.batch_id, first)  # fmt: skip
    if len(undecided) > 1:
        raise AmbiguousBatch(
            f"batches {', '.join(b.batch_id for b in undecided)} may each be the chunk's and have "
            "no results yet: adopting none, creating none",
            candidates=undecided,
        )
    return undecided[0] if undecided else None


def _first_result_id(provider: Provider, batch: ProviderBatch) -> str | None:
    """The ``custom_id`` of the batch's first result, or ``None`` while it has none to read."""
    if not (batch.state.is_terminal and batch.result_refs):
        return None
    rows = provider.iter_result_rows(batch)
    try:
        first = next(rows, None)
    finally:
        close = getattr(rows, "close", None)  # a generator: closing it closes the download
        if close is not None:
            close()
    return None if first is None else str(first[0])
