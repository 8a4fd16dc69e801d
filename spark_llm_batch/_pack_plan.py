"""Packing's plan: the chunks and parts of every attempt group, from measured statistics alone.

Arithmetic on the driver, no Spark: ``_pack`` measures the groups (:class:`_Group`), plans with
:func:`_plan`, deals every part's rows to the planned chunks in its write job and checks the
written chunks against :func:`_dealt`.

Within one attempt group of ``N`` requests and ``T`` bytes, ``K`` starts at
``K0 = max(ceil(N/max_requests), ceil(T/max_bytes))``. The :data:`FINE_PARTS` fine parts are folded
into ``P`` parts (``fine % P``): enough that no part holds more than :data:`PART_BYTES` of lines
(a part is one task's sort and window, so this bounds a task's memory whatever the input's
partitioning), at least the shuffle parallelism when there are that many chunks, and no more than
the byte room allows (below). Each part's rows are
ranked by ``(size desc, hash)`` after the rows of the parts before it, so ranks ``0..N-1`` are a
bijection fixed by the data alone; rank ``r`` goes to chunk ``snake(r)`` (``0..K-1``, then
``K-1..0``, ...). Every chunk then holds ``floor(N/K)`` or ``ceil(N/K)`` requests, and at most
``T/K + (2P - 1) * s_max`` bytes (``s_max``: the largest line): a chunk gets one line per round of
``K`` ranks, no larger than the previous round's average inside a descending run, and each of the
``P - 1`` run boundaries can break that for two rounds. ``P`` is the largest value (up to the
shuffle parallelism) for which that bound fits at ``K0`` or ``K0 + 1``; ``K`` grows only when even
``P = 1`` does not fit.

Guarantee: both limits always hold, and a group uses at most ``K0 + 1`` chunks whenever
``s_max <= max_bytes - T/(K0 + 1)`` (true for any line under 9 MB for a 20-batch job at OpenAI's
200 MB), for any input partitioning. No packer can promise ``K0 + 1`` for arbitrary sizes (100 lines
of 51 bytes under a 100-byte limit need 100 chunks, not 52); there the count grows as needed.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from spark_llm_batch.errors import SparkLLMBatchError

__all__ = ["FINE_PARTS", "PART_BYTES"]

FINE_PARTS = 1024
"""Fine parts measured per attempt group; packing folds them into at most this many parts."""

PART_BYTES = 32 << 20
"""The most bytes of lines a part should hold (its task sorts and numbers them): 32 MiB, so that a
default 1 GiB heap shared by a few tasks never needs more than a spill's worth per task."""


@dataclass
class _Group:
    """One attempt value's requests: the unit that is packed."""

    attempt: int
    n: int
    total: int
    largest: int
    fine: dict[int, int]  # rows per fine part

    def first_k(self, max_requests: int, max_bytes: int) -> int:
        return max(1, math.ceil(self.n / max_requests), math.ceil(self.total / max_bytes))

    def next_k(self, k: int, max_requests: int, max_bytes: int) -> int:
        if k == self.first_k(max_requests, max_bytes):
            return min(self.n, k + 1)
        room = max_bytes - self.largest
        safe = math.ceil(self.total / room) if room > 0 else self.n
        return min(self.n, safe if safe > k else 2 * k)

    def fits(self, k: int, parts: int, max_requests: int, max_bytes: int) -> bool:
        """Whether ``k`` chunks dealt over ``parts`` runs are sure to respect both limits."""
        per_chunk = math.ceil(self.n / k)
        worst = min(self.total / k + (2 * parts - 1) * self.largest, per_chunk * self.largest)
        return per_chunk <= max_requests and worst <= max_bytes


@dataclass(frozen=True)
class _Plan:
    """What every writer task needs: parts, and per group its chunks and rank offsets."""

    parts: int
    ks: dict[int, int]  # attempt -> chunks
    bases: dict[int, int]  # attempt -> global index of its first chunk
    offsets: dict[int, list[int]]  # attempt -> rank of the first row of each part
    keys: tuple[str, ...]  # chunk keys, by global chunk index

    @property
    def size(self) -> int:
        return len(self.keys)


def _plan(groups: list[_Group], max_requests: int, max_bytes: int, parallelism: int) -> _Plan:
    """Chunks per group and the number of parts (see the module docstring)."""
    chunks = sum(g.first_k(max_requests, max_bytes) for g in groups)
    by_size = math.ceil(sum(g.total for g in groups) / PART_BYTES)
    parts = max(1, min(FINE_PARTS, max(min(parallelism, chunks), by_size)))

    def fits_soon(group: _Group, p: int) -> bool:
        k0 = group.first_k(max_requests, max_bytes)
        return any(group.fits(k, p, max_requests, max_bytes) for k in (k0, min(group.n, k0 + 1)))

    while parts > 1 and not all(fits_soon(g, parts) for g in groups):
        parts //= 2
    ks, bases, offsets, base = {}, {}, {}, 0
    for group in groups:
        k = group.first_k(max_requests, max_bytes)
        while not group.fits(k, parts, max_requests, max_bytes):
            if k >= group.n:
                raise SparkLLMBatchError(
                    f"cannot pack attempt {group.attempt}: a line exceeds max_bytes"
                )
            k = group.next_k(k, max_requests, max_bytes)
        ks[group.attempt], bases[group.attempt] = k, base
        base += k
        per_part = [0] * parts
        for fine, n in group.fine.items():
            per_part[fine % parts] += n
        offsets[group.attempt] = [sum(per_part[:i]) for i in range(parts)]
    return _Plan(parts, ks, bases, offsets, tuple(uuid.uuid4().hex for _ in range(base)))


def _dealt(n: int, k: int, i: int) -> int:
    """How many of ``n`` ranks the snake deal gives chunk ``i`` of ``k``."""
    rounds, rest = divmod(n, k)
    last_forward = rounds % 2 == 0  # the partial last round runs 0.. when even, K-1.. when odd
    extra = i < rest if last_forward else i >= k - rest
    return rounds + (1 if extra else 0)
