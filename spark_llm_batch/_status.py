"""What a store holds, per job and overall: batches by state, requests, tokens, cost, age.

A job is the output a run writes (``output=``, or the default location under the store): each
batch records the job whose run staged it. Figures come from two small aggregations, so a status
costs the same for 1K rows as for 10M:

- ``batches`` (one row per batch reaches the driver): states, requests in flight, the billed tokens
  of each collected batch (the sum over its answers, which is what the provider bills), the age of
  the oldest batch in flight (since it was staged);
- ``results``, counted per provider batch id in Spark: requests answered and failed for good (the
  latest answer of each request, so a retried request counts once).

Cost is the billed tokens priced by a :class:`~spark_llm_batch._prices.PriceTable` (batch prices).

Example:
    >>> report = status("/lake/llm_store")  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    >>> report.overall.cost  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_llm_batch._prices import PriceTable
from spark_llm_batch._store_tables import Phase

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from spark_llm_batch._store import Store

__all__ = ["JobStatus", "ModelUsage", "StoreStatus", "status"]

UNRECORDED = "(not recorded)"
"""The job of batches staged before the store recorded jobs, and of failures without a batch."""


@dataclass(frozen=True)
class ModelUsage:
    """Billed tokens of one model, and their cost (``None``: the price table lacks the model)."""

    provider: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None


@dataclass(frozen=True)
class JobStatus:
    """One job's figures (or every job's, for the overall line).

    Attributes:
        job: the output the job writes.
        batches: batches per state (every :class:`Phase` listed).
        requests_done: requests answered (the latest answer of each request succeeded).
        requests_failed: requests failed for good (their failure class and message are stored).
        requests_pending: requests in batches still in flight (staged up to ended).
        input_tokens / output_tokens: tokens billed so far (collected batches).
        usage: the billed tokens per model, with their cost.
        cost: the cost so far at batch prices, of the models the price table lists.
        unpriced: models with billed tokens that the price table lacks (not in ``cost``).
        oldest_in_flight_seconds: age of the oldest batch in flight, since it was staged.
    """

    job: str
    batches: dict[str, int] = field(default_factory=dict)
    requests_done: int = 0
    requests_failed: int = 0
    requests_pending: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usage: tuple[ModelUsage, ...] = ()
    cost: float = 0.0
    unpriced: tuple[str, ...] = ()
    oldest_in_flight_seconds: float | None = None

    @property
    def in_flight(self) -> int:
        """Batches not collected nor abandoned."""
        return sum(n for state, n in self.batches.items() if not Phase(state).is_terminal)


@dataclass(frozen=True)
class StoreStatus:
    """A store's figures per job and overall, taken at ``taken_at`` (unix seconds)."""

    store: str
    currency: str
    jobs: tuple[JobStatus, ...]
    overall: JobStatus
    taken_at: float

    def job(self, name: str) -> JobStatus:
        """The figures of job ``name`` (all zero when the store holds none of it yet)."""
        for job in self.jobs:
            if job.job == name:
                return job
        return JobStatus(name, {phase.value: 0 for phase in Phase})

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for ``--json``)."""
        return asdict(self)

    def __str__(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.taken_at))
        lines = [f"store {self.store} at {when}"]
        for job in (*self.jobs, self.overall):
            lines.extend(_describe(job, self.currency))
        return "\n".join(lines)


def _describe(job: JobStatus, currency: str) -> list[str]:
    states = ", ".join(f"{state} {n}" for state, n in job.batches.items() if n) or "none"
    age = job.oldest_in_flight_seconds
    unpriced = f" (no price for {', '.join(job.unpriced)})" if job.unpriced else ""
    return [
        f"{'overall' if job.job == '' else 'job ' + job.job}",
        f"  batches: {states}",
        f"  requests: done {job.requests_done}, failed {job.requests_failed}, "
        f"pending {job.requests_pending}",
        f"  tokens: input {job.input_tokens}, output {job.output_tokens}",
        f"  cost so far: {job.cost:.4f} {currency} at batch prices{unpriced}",
        f"  oldest batch in flight: {_age(age) if age is not None else 'none in flight'}",
    ]


def _age(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def status(
    store: str | Store,
    *,
    spark: SparkSession | None = None,
    prices: str | Path | Iterable[str | Path] | PriceTable | None = None,
) -> StoreStatus:
    """The figures of every job in ``store``, and overall.

    Args:
        store: a store location (a path, or ``catalog.schema``), or an opened store.
        spark: the session (default: the active one, else :func:`spark_llm_batch.get_session`).
        prices: price files layered over ``conf/prices.yaml`` (or a ready table).

    Raises:
        ConfigError: the store cannot be opened, or a price file is bad.
    """
    from spark_llm_batch._store import Store

    table = prices if isinstance(prices, PriceTable) else PriceTable.load(prices)
    if isinstance(store, str):
        store = Store.open(spark or _session(), store, create=False)
    batches = _batch_rows(store)
    answered = _answered_by_batch(store)
    now = time.time()
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in batches:
        by_job[row["job"] or UNRECORDED].append(row)
    job_of = {row["batch_id"]: row["job"] or UNRECORDED for row in batches if row["batch_id"]}
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for batch_id, done, failed in answered:
        counts[job_of.get(batch_id, UNRECORDED)].update(done=done, failed=failed)
    names = sorted(set(by_job) | set(counts))
    jobs = tuple(_job(name, by_job.get(name, []), counts[name], table, now) for name in names)
    every = Counter[str]()
    for name in names:
        every.update(counts[name])
    overall = _job("", batches, every, table, now)
    return StoreStatus(store.location, table.currency, jobs, overall, now)


def _session() -> SparkSession:
    from pyspark.sql import SparkSession

    from spark_llm_batch.session import get_session

    return SparkSession.getActiveSession() or get_session()


def _batch_rows(store: Store) -> list[dict[str, Any]]:
    """One row per batch: its current state, job, model, requests, tokens and staging time."""
    from pyspark.sql import functions as F

    first = store.table("batches").groupBy("key").agg(F.min("updated_at").alias("first_at"))
    current = store.current_batches_df().join(first, "key").select(
        "key", "state", "job", "provider", "model", "requests", "batch_id",
        F.coalesce("input_tokens", F.lit(0)).alias("input_tokens"),
        F.coalesce("output_tokens", F.lit(0)).alias("output_tokens"),
        (F.unix_micros("first_at") / 1e6).alias("first_at"),
    )  # fmt: skip
    return [row.asDict() for row in current.collect()]


def _answered_by_batch(store: Store) -> list[tuple[str | None, int, int]]:
    """Per provider batch id: its requests answered, and failed for good (latest answers)."""
    from pyspark.sql import functions as F

    results = store.table("results")
    final = F.col("final")
    ok = F.col("status") == "succeeded"
    rows = (
        results.groupBy("batch_id")
        .agg(
            F.sum(F.when(final & ok, 1).otherwise(0)).alias("done"),
            F.sum(F.when(final & ~ok, 1).otherwise(0)).alias("failed"),
        )
        .collect()
    )
    return [(row["batch_id"], int(row["done"]), int(row["failed"])) for row in rows]


def _job(
    name: str, rows: list[dict[str, Any]], answered: Counter[str], table: PriceTable, now: float
) -> JobStatus:
    states = Counter(row["state"] for row in rows)
    flying = [row for row in rows if not Phase(row["state"]).is_terminal]
    tokens: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        if row["input_tokens"] or row["output_tokens"]:
            pair = tokens[(row["provider"], row["model"])]
            pair[0] += int(row["input_tokens"])
            pair[1] += int(row["output_tokens"])
    usage = []
    for (provider, model), (inp, out) in sorted(tokens.items()):
        price = table.price(model)
        usage.append(ModelUsage(provider, model, inp, out, price.cost(inp, out) if price else None))
    return JobStatus(
        job=name,
        batches={phase.value: states.get(phase.value, 0) for phase in Phase},
        requests_done=answered["done"],
        requests_failed=answered["failed"],
        requests_pending=sum(int(row["requests"]) for row in flying),
        input_tokens=sum(u.input_tokens for u in usage),
        output_tokens=sum(u.output_tokens for u in usage),
        usage=tuple(usage),
        cost=sum(u.cost for u in usage if u.cost is not None),
        unpriced=tuple(sorted({u.model for u in usage if u.cost is None})),
        oldest_in_flight_seconds=max((now - row["first_at"] for row in flying), default=None),
    )
