"""The store's table layouts, its migrations, and the batch record the driver keeps in memory.

Tables (Delta; under the store path, or in the store's catalog schema):

- ``_migrations(name, ordinal, applied_at)``: which migrations of :data:`MIGRATIONS` ran. A fresh
  store gets every table in its final shape at once (:func:`fresh_tables`), all migrations
  recorded as applied.
- ``batches``: an append-only event log, one row per transition of a batch. The current state of a
  batch is its row with the highest ``seq``. Columns: see :data:`BATCH_COLUMNS`.
- ``chunks``: the staged request lines, one row per request of every batch not yet collected (which
  request is in which batch, at which attempt, and its exact line), partitioned by ``batch_key``;
  see :data:`CHUNK_COLUMNS`. A batch's rows are deleted once it is collected.
- ``results``: one row per request hash (MERGE), see :data:`RESULT_COLUMNS`.
- ``leases(name, holder, expires_at)``: which run stages now, and which run drives each batch
  (``spark_llm_batch._leases``).
- ``downloads``: with ``transport="driver"``, the parsed result lines of a collection on their way
  into ``results`` (:data:`DOWNLOAD_COLUMNS`); dropped once merged.

Rows of ``batches`` and ``results`` carry ``format_version``; a reader meeting a version newer than
:data:`FORMAT_VERSION` refuses to guess and raises :class:`~spark_llm_batch.errors.StoreError`.
Enums are stored by value. Secrets never reach these tables: errors are redacted before storing.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass
from typing import Any

from spark_llm_batch.errors import StoreError, redact
from spark_llm_batch.providers.base import ChunkRef

__all__ = [
    "BATCH_ADDED_0008",
    "BATCH_COLUMNS",
    "CHUNK_COLUMNS",
    "FORMAT_VERSION",
    "LEASE_COLUMNS",
    "MIGRATIONS",
    "MIGRATION_COLUMNS",
    "RESULT_COLUMNS",
    "RESULT_FIELDS",
    "RETIRED_MIGRATIONS",
    "TABLES",
    "BatchRecord",
    "Migration",
    "Phase",
    "ddl",
    "fresh_tables",
]

FORMAT_VERSION = 1
"""The row format this code writes and understands."""

TABLES = ("_migrations", "batches", "chunks", "downloads", "leases", "results")


class Phase(str, enum.Enum):
    """Our side of a batch's life, stored by value in ``batches.state``.

    ``staged → uploaded → creating → submitted → ended → collected``; ``abandoned`` when superseded
    (re-queued as a new batch) or impossible to submit (its staged lines are gone).
    """

    STAGED = "staged"
    UPLOADED = "uploaded"
    CREATING = "creating"
    SUBMITTED = "submitted"
    ENDED = "ended"
    COLLECTED = "collected"
    ABANDONED = "abandoned"

    @property
    def is_terminal(self) -> bool:
        """True when nothing more will happen to the batch."""
        return self in (Phase.COLLECTED, Phase.ABANDONED)


_BATCH_COLUMNS_0001 = (
    ("key", "STRING"),
    ("seq", "INT"),
    ("state", "STRING"),
    ("provider", "STRING"),
    ("model", "STRING"),
    ("endpoint", "STRING"),
    ("attempt", "INT"),
    ("uri", "STRING"),
    ("requests", "BIGINT"),
    ("nbytes", "BIGINT"),
    ("input_ref", "STRING"),
    ("batch_id", "STRING"),
    ("provider_state", "STRING"),
    ("result_refs", "ARRAY<STRING>"),
    ("total", "BIGINT"),
    ("completed", "BIGINT"),
    ("failed", "BIGINT"),
    ("error", "STRING"),
    ("updated_at", "TIMESTAMP"),
    ("format_version", "INT"),
)

BATCH_ADDED_0008 = (
    ("job", "STRING"),
    ("input_tokens", "BIGINT"),
    ("output_tokens", "BIGINT"),
)
"""Columns migration ``0008_batch_job_and_tokens`` adds to ``batches``: the job (the output the
staging run writes) and, on ``collected`` rows, the tokens the batch's answers used (what the
provider bills)."""

BATCH_COLUMNS = (*_BATCH_COLUMNS_0001, *BATCH_ADDED_0008)

CHUNK_COLUMNS = (
    ("batch_key", "STRING"),
    ("hash", "STRING"),
    ("attempt", "INT"),
    ("nbytes", "BIGINT"),
    ("line", "STRING"),
    ("staged_at", "TIMESTAMP"),
)
"""The ``chunks`` table: a batch's members with the line each one sends (``nbytes``: its UTF-8 size
plus the newline), written by packing's one job; ``staged_at`` tells the sweep how old rows that no
batch names are."""

RESULT_FIELDS = (
    ("status", "STRING"),
    ("text", "STRING"),
    ("finish_reason", "STRING"),
    ("error_class", "STRING"),
    ("error_message", "STRING"),
    ("input_tokens", "BIGINT"),
    ("output_tokens", "BIGINT"),
    ("model", "STRING"),
)
"""A request's outcome as one provider result line gives it: the fields of
:class:`~spark_llm_batch.providers.base.ResultRecord` after ``custom_id``, in order. The one
declaration the results table, the rows collection tasks return and the output struct derive from."""

DOWNLOAD_COLUMNS = (
    ("collection", "STRING"),
    ("batch_key", "STRING"),
    ("hash", "STRING"),
    *RESULT_FIELDS,
    ("downloaded_at", "TIMESTAMP"),
)
"""The ``downloads`` table: result lines the driver transport parsed, staged per collection until
they are merged into ``results``."""

RESULT_COLUMNS = (
    ("hash", "STRING"),
    *RESULT_FIELDS,
    ("batch_id", "STRING"),
    ("attempt", "INT"),
    ("final", "BOOLEAN"),
    ("updated_at", "TIMESTAMP"),
    ("format_version", "INT"),
)

LEASE_COLUMNS = (("name", "STRING"), ("holder", "STRING"), ("expires_at", "TIMESTAMP"))
"""The ``leases`` table (``spark_llm_batch._leases``)."""

MIGRATION_COLUMNS = (("name", "STRING"), ("ordinal", "INT"), ("applied_at", "TIMESTAMP"))
"""The ``_migrations`` table: which migrations of :data:`MIGRATIONS` ran."""


def ddl(columns: tuple[tuple[str, str], ...]) -> str:
    """A column list for CREATE TABLE."""
    return ", ".join(f"`{name}` {kind}" for name, kind in columns)


@dataclass(frozen=True)
class Migration:
    """One named schema change: a statement (``sql``, with ``{batches}``-style placeholders for
    table references), or columns added to ``table`` (``add_columns``: only those it lacks).

    Migrations are append-only: never edit or reorder a released one, add a new one instead. Each
    is idempotent (``IF NOT EXISTS``; columns present are not added again), so a crash between
    applying and recording is harmless.
    """

    name: str
    sql: str = ""
    table: str = ""
    add_columns: tuple[tuple[str, str], ...] = ()


RETIRED_MIGRATIONS = ("0002_create_members", "0003_create_requests")
"""Migrations of development versions that are no longer applied; a store that lists them opens.

``0002_create_members`` (which request is in which batch) and ``0003_create_requests`` (request
lines for retries) are both replaced by ``chunks``, which holds the members with their lines; a
store that has the old tables leaves them untouched."""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_create_batches",
        f"CREATE TABLE IF NOT EXISTS {{batches}} ({ddl(_BATCH_COLUMNS_0001)}) USING DELTA",
    ),
    Migration(
        "0004_create_results",
        f"CREATE TABLE IF NOT EXISTS {{results}} ({ddl(RESULT_COLUMNS)}) USING DELTA",
    ),
    Migration(
        "0005_create_chunks",
        f"CREATE TABLE IF NOT EXISTS {{chunks}} ({ddl(CHUNK_COLUMNS)}) USING DELTA "
        "PARTITIONED BY (`batch_key`)",
    ),
    Migration(
        "0006_create_downloads",
        f"CREATE TABLE IF NOT EXISTS {{downloads}} ({ddl(DOWNLOAD_COLUMNS)}) USING DELTA "
        "PARTITIONED BY (`collection`)",
    ),
    Migration(
        "0007_create_leases",
        f"CREATE TABLE IF NOT EXISTS {{leases}} ({ddl(LEASE_COLUMNS)}) USING DELTA",
    ),
    Migration("0008_batch_job_and_tokens", table="batches", add_columns=BATCH_ADDED_0008),
)

_FRESH_LAYOUT = {
    "batches": (BATCH_COLUMNS, ""),
    "results": (RESULT_COLUMNS, ""),
    "chunks": (CHUNK_COLUMNS, "batch_key"),
    "downloads": (DOWNLOAD_COLUMNS, "collection"),
    "leases": (LEASE_COLUMNS, ""),
}


def fresh_tables() -> dict[str, str]:
    """Per data table, the ``CREATE TABLE IF NOT EXISTS`` statement (``{name}`` placeholders for
    table references, as in :data:`MIGRATIONS`) that gives it the shape every migration of
    :data:`MIGRATIONS` together gives it: what a fresh store is created with, in one step each.

    Example:
        >>> fresh_tables()["leases"]
        'CREATE TABLE IF NOT EXISTS {leases} (`name` STRING, `holder` STRING, `expires_at` TIMESTAMP) USING DELTA'
    """
    statements = {}
    for name, (columns, partition) in _FRESH_LAYOUT.items():
        by = f" PARTITIONED BY (`{partition}`)" if partition else ""
        statements[name] = f"CREATE TABLE IF NOT EXISTS {{{name}}} ({ddl(columns)}) USING DELTA{by}"
    return statements


@dataclass(frozen=True)
class BatchRecord:
    """One row of the ``batches`` event log; the row with the highest ``seq`` is the batch's state.

    ``updated_at`` is unix seconds here (a TIMESTAMP in the table). ``uri`` names where the batch's
    lines are: its own ``batch_key`` in ``chunks`` (earlier development versions stored a chunk
    file's path there).
    """

    key: str
    seq: int
    state: Phase
    provider: str
    model: str
    endpoint: str
    attempt: int
    uri: str
    requests: int
    nbytes: int
    input_ref: str | None = None
    batch_id: str | None = None
    provider_state: str | None = None
    result_refs: tuple[str, ...] = ()
    total: int = 0
    completed: int = 0
    failed: int = 0
    error: str | None = None
    updated_at: float = 0.0
    format_version: int = FORMAT_VERSION
    job: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0

    @classmethod
    def staged(
        cls, chunk: ChunkRef, *, provider: str, endpoint: str, job: str | None = None
    ) -> BatchRecord:
        """The first event of a freshly staged chunk (for ``job``: the output its run writes)."""
        return cls(
            key=chunk.key,
            seq=0,
            state=Phase.STAGED,
            provider=provider,
            model=chunk.model,
            endpoint=endpoint,
            attempt=chunk.attempt,
            uri=chunk.key,
            requests=chunk.requests,
            nbytes=chunk.nbytes,
            updated_at=time.time(),
            job=job,
        )

    def to(self, state: Phase, **changes: Any) -> BatchRecord:
        """The next event: ``state`` plus ``changes``, with ``seq`` + 1 and a fresh ``updated_at``."""
        if "error" in changes and changes["error"] is not None:
            changes["error"] = redact(str(changes["error"]))[:2000]
        return dataclasses.replace(
            self, seq=self.seq + 1, state=state, updated_at=time.time(), **changes
        )

    @property
    def chunk(self) -> ChunkRef:
        """The chunk this batch submits."""
        return ChunkRef(self.key, self.requests, self.nbytes, self.model, self.attempt)

    def to_row(self) -> tuple[Any, ...]:
        """The row in :data:`BATCH_COLUMNS` order (``updated_at`` as an aware UTC datetime)."""
        import datetime as dt

        values = dataclasses.asdict(self)
        values["state"] = self.state.value
        values["result_refs"] = list(self.result_refs)
        values["updated_at"] = dt.datetime.fromtimestamp(self.updated_at, tz=dt.timezone.utc)
        return tuple(values[name] for name, _ in BATCH_COLUMNS)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> BatchRecord:
        """Parse a row (``updated_at`` already in unix seconds); fail closed on what we cannot trust.

        Raises:
            StoreError: unknown ``state``, a newer ``format_version``, or a missing required field.
        """
        key = row.get("key")
        version = row.get("format_version")
        if version is None or version > FORMAT_VERSION:
            raise StoreError(
                f"batches.format_version is {version!r} for batch {key!r}; this version of "
                f"spark-llm-batch reads up to {FORMAT_VERSION}: upgrade the library"
            )
        try:
            state = Phase(row.get("state"))
        except ValueError:
            raise StoreError(
                f"batches.state has unknown value {row.get('state')!r} for batch {key!r}"
            ) from None
        for name in (
            "key",
            "seq",
            "provider",
            "model",
            "endpoint",
            "attempt",
            "uri",
            "requests",
            "nbytes",
        ):
            if row.get(name) is None:
                raise StoreError(f"batches.{name} is null for batch {key!r} (state {state.value})")
        if not state.is_terminal and row.get("uri") != key:
            raise StoreError(
                f"batches.uri is {row.get('uri')!r} for batch {key!r} in state {state.value}: it was "
                "staged as a chunk file by an earlier development version of spark-llm-batch; finish "
                "it with that version, or point store= at a new location"
            )
        if state is Phase.SUBMITTED and not row.get("batch_id"):
            raise StoreError(f"batches.batch_id is null for batch {key!r} in state {state.value}")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in row.items() if k in fields and v is not None}
        values["state"] = state
        values["result_refs"] = tuple(row.get("result_refs") or ())
        return cls(**values)
