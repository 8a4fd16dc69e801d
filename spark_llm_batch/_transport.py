"""Where provider traffic flows: in Spark tasks (``executors``) or on the driver (``driver``).

The seam between the orchestrator and the network. A transport does two things, over plain values:

- ``upload(chunks)``: stream each chunk's lines from the store's ``chunks`` table to
  ``provider.upload``; one outcome per chunk (the input reference, or the exception it failed with).
- ``create_inline(chunks, config)``: the same streams, to ``provider.create_inline``, for providers
  whose requests travel in the create call; one outcome per chunk (the batch, or the exception).
- ``result_lines(batches)``: where collection's tasks find the result lines of ended batches
  (:class:`ResultLines`): read from the provider inside each task, or already in the store; a
  context manager, since the driver transport stages what it downloads in the store.

:class:`ExecutorTransport` runs both in Spark tasks, in parallel and streaming: one task per chunk
(a scan of the chunk's rows, coalesced into one task, :data:`UPLOAD_THREADS` such jobs at once)
uploads it (or creates its batch with the lines inline), and collection's task per batch reads
that batch's results itself. For classic
clusters, where executors reach the provider.

:class:`DriverTransport` runs both on the driver, for Databricks serverless and wherever executors
have no egress: lines come out of Spark through ``toLocalIterator`` (one partition in memory at a
time) and go to the provider as a stream; result lines are parsed on the driver and appended to the
store's ``downloads`` table in windows of :data:`DOWNLOAD_WINDOW_ROWS` rows, so the driver holds one
window at a time and nothing it downloads lives only in its memory.

:func:`choose` picks one per run; ``"auto"`` asks one Spark task whether it can open a connection
to the provider, and says in the log which it took. Nothing else in the library branches on it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeAlias

from spark_llm_batch._arrow_rows import ROWS_PER_BATCH, no_cyclic_gc, rows_batch
from spark_llm_batch._store_tables import RESULT_FIELDS
from spark_llm_batch.errors import AuthenticationError, ProviderError, StoreError
from spark_llm_batch.providers.base import ChunkMissing, ProviderBatch

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

    from spark_llm_batch._store import Store
    from spark_llm_batch.config import BatchConfig
    from spark_llm_batch.providers.base import ChunkRef, Provider

__all__ = [
    "DOWNLOAD_WINDOW_ROWS",
    "RESULT_ROW_COLUMNS",
    "ChunkMissing",
    "CreateOutcome",
    "DriverTransport",
    "ExecutorTransport",
    "ResultLines",
    "Transport",
    "UploadOutcome",
    "choose",
]

log = logging.getLogger("spark_llm_batch")

RESULT_ROW_COLUMNS = (("batch_key", "STRING"), ("hash", "STRING"), *RESULT_FIELDS)
"""A result line as the store's ``downloads`` holds it: its batch and custom id, then the outcome."""

DOWNLOAD_WINDOW_ROWS = 50_000
"""Result rows the driver transport holds before appending them to ``downloads`` (~tens of MB)."""

UPLOAD_THREADS = 4
"""Chunks uploaded at once (concurrent Spark jobs, or concurrent driver streams)."""

_PROBE_TIMEOUT = 5.0


UploadOutcome: TypeAlias = "str | BaseException"
"""What ``upload`` gives per chunk: the input reference, or the exception the upload raised."""

CreateOutcome: TypeAlias = "ProviderBatch | BaseException"
"""What ``create_inline`` gives per chunk: the created batch, or the exception the create raised
(after which the batch may still exist: the orchestrator reconciles before creating again)."""

_Outcome: TypeAlias = "str | ProviderBatch | BaseException"


class ResultLines(NamedTuple):
    """Where collection's tasks find the result lines of the batches they collect.

    Attributes:
        staged: result lines already in Spark (:data:`RESULT_ROW_COLUMNS`; the driver downloaded
            them into the store), or ``None``.
        reader: the provider each task reads its batch's lines from, or ``None`` (all staged).
    """

    staged: DataFrame | None
    reader: Provider | None


class Transport(Protocol):
    """Moves a run's request lines to the provider and its result lines back into Spark."""

    name: str

    def upload(self, chunks: Sequence[ChunkRef]) -> list[UploadOutcome]:
        """Upload every chunk (concurrently); per chunk, its input reference or its exception
        (:class:`ChunkMissing`, :class:`~spark_llm_batch.errors.ProviderError`)."""
        ...

    def create_inline(self, chunks: Sequence[ChunkRef], config: BatchConfig) -> list[CreateOutcome]:
        """Create every chunk's batch with its lines in the create call (concurrently); per chunk,
        the batch or its exception."""
        ...

    def result_lines(
        self, batches: Sequence[ProviderBatch]
    ) -> contextlib.AbstractContextManager[ResultLines]:
        """Where the result lines of ``batches`` (each with its ``key``) are, valid inside the
        ``with`` block."""
        ...


# ---- the stream a provider uploads -----------------------------------------------------------------


class LineStream(io.RawIOBase):
    """A chunk's bytes as a forward-only stream of known size.

    The SDKs ask for the size by seeking to the end and back, and rewind to the start before
    sending: both are answered without moving. Reading from anywhere but the current position
    raises, so a retry that would need the bytes again fails instead of sending a partial file.

    Raises (when read):
        ChunkMissing: the chunk ended before ``size`` bytes (or ran past it).
    """

    def __init__(self, key: str, parts: Iterable[Any], size: int) -> None:
        self._key, self._parts, self._size = key, iter(parts), size
        self._pos = 0  # bytes handed out
        self._at = 0  # where the caller last seeked to
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._size}[whence]
        self._at = base + offset
        return self._at

    def readinto(self, buffer: Any) -> int:
        if self._at != self._pos:
            raise io.UnsupportedOperation(
                f"chunk {self._key} streams forward only (at byte {self._pos}, asked {self._at})"
            )
        while not self._pending:
            part = next(self._parts, None)
            if part is None:
                if self._pos != self._size:
                    raise ChunkMissing(
                        f"chunk {self._key} holds {self._pos} bytes in the store, {self._size} "
                        "were staged"
                    )
                return 0
            self._pending = memoryview(part).cast("B")
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._pos += n
        self._at = self._pos
        if self._pos > self._size:
            raise ChunkMissing(f"chunk {self._key} holds more than the {self._size} bytes staged")
        return n


def _line_bytes(batch: pa.RecordBatch) -> pa.Buffer:
    """The lines of an Arrow batch (column ``line``), each followed by a newline, as one buffer."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lines = batch.column("line")
    if lines.null_count:
        raise StoreError("a staged request line is null")
    joined = pc.binary_join_element_wise(
        lines, pa.scalar("", lines.type), pa.scalar("\n", lines.type)
    )
    return _utf8_payload(joined)


def _utf8_payload(strings: pa.Array) -> pa.Buffer:
    """The concatenated bytes of a string array without nulls (a slice of its data buffer)."""
    import numpy as np
    import pyarrow as pa

    wide = pa.types.is_large_string(strings.type) or pa.types.is_large_binary(strings.type)
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64 if wide else np.int32)
    start, end = int(offsets[strings.offset]), int(offsets[strings.offset + len(strings)])
    return strings.buffers()[2].slice(start, end - start)


def _send_stream(
    provider: Provider, chunk: ChunkRef, parts: Iterator[Any], config: BatchConfig | None
) -> _Outcome:
    """Send ``parts`` (a chunk's bytes): uploaded as ``chunk`` (``config`` None), else in the
    create call of its batch; the input reference or the batch, or the exception."""
    first = next(parts, None)
    if first is None:
        return ChunkMissing(f"the store holds no lines for chunk {chunk.key}")

    def all_parts() -> Iterator[Any]:
        yield first
        yield from parts

    stream = io.BufferedReader(LineStream(chunk.key, all_parts(), chunk.nbytes), 1 << 20)
    try:
        if config is None:
            return provider.upload(chunk, stream)
        return provider.create_inline(chunk, stream, config)
    except (ProviderError, ChunkMissing) as exc:
        return exc


def _in_threads(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(UPLOAD_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


# ---- executors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SendTask:
    """The ``mapInArrow`` function of one chunk's upload, or inline create (``config`` set); one
    task: the scan is coalesced."""

    provider: Provider
    chunk: ChunkRef
    config: BatchConfig | None

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        parts = (_line_bytes(b) for b in batches if b.num_rows)
        outcome = _send_stream(self.provider, self.chunk, parts, self.config)
        yield pa.RecordBatch.from_pylist([_outcome_row(outcome)], schema=_outcome_schema())


_OUTCOME_DDL = (
    "ref STRING, batch STRING, kind STRING, message STRING, status INT, retry_after DOUBLE"
)


def _outcome_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("ref", pa.string()),
            ("batch", pa.string()),
            ("kind", pa.string()),
            ("message", pa.string()),
            ("status", pa.int32()),
            ("retry_after", pa.float64()),
        ]
    )


def _outcome_row(outcome: _Outcome) -> dict[str, Any]:
    """A send's outcome as a row a task can return (exceptions travel as data, not as task
    failures, so that the driver gets the provider's status and retry-after back)."""
    row: dict[str, Any] = dict.fromkeys(("ref", "batch", "message", "status", "retry_after"))
    if isinstance(outcome, ProviderBatch):
        return {**row, "batch": outcome.to_json(), "kind": "ok"}
    if not isinstance(outcome, BaseException):
        return {**row, "ref": outcome, "kind": "ok"}
    kind = "missing" if isinstance(outcome, ChunkMissing) else "provider"
    if isinstance(outcome, AuthenticationError):
        kind = "auth"
    return {
        **row,
        "kind": kind,
        "message": str(outcome),
        "status": getattr(outcome, "status", None),
        "retry_after": getattr(outcome, "retry_after", None),
    }


def _outcome_from_row(row: Any) -> _Outcome:
    if row["kind"] == "ok":
        return ProviderBatch.from_json(row["batch"]) if row["batch"] else row["ref"]
    if row["kind"] == "missing":
        return ChunkMissing(row["message"])
    cls = AuthenticationError if row["kind"] == "auth" else ProviderError
    return cls(row["message"], status=row["status"], retry_after=row["retry_after"])


def _result_batches(provider: Provider, batch: ProviderBatch) -> Iterator[pa.RecordBatch]:
    """``batch``'s result lines as Arrow batches of :data:`RESULT_ROW_COLUMNS`."""
    key = batch.key or ""
    rows: list[tuple[Any, ...]] = []
    for row in provider.iter_result_rows(batch):
        rows.append((key, *row))
        if len(rows) >= ROWS_PER_BATCH:
            yield rows_batch(RESULT_ROW_COLUMNS, rows)
            rows = []
    if rows:
        yield rows_batch(RESULT_ROW_COLUMNS, rows)


class _Uploads(ABC):
    """What both transports share: the store and provider, and several chunks uploaded at once
    (``_send_one`` is each transport's own)."""

    def __init__(self, store: Store, provider: Provider) -> None:
        self.store, self.provider = store, provider

    def upload(self, chunks: Sequence[ChunkRef]) -> list[UploadOutcome]:
        return _in_threads(lambda chunk: self._send_one(chunk, None), chunks)

    def create_inline(self, chunks: Sequence[ChunkRef], config: BatchConfig) -> list[CreateOutcome]:
        return _in_threads(lambda chunk: self._send_one(chunk, config), chunks)

    @abstractmethod
    def _send_one(self, chunk: ChunkRef, config: BatchConfig | None) -> _Outcome:
        """Stream one chunk's lines to the provider (uploaded, or inline in the create call when
        ``config`` is given); its outcome."""


class ExecutorTransport(_Uploads):
    """Uploads and downloads in Spark tasks (see the module docstring)."""

    name = "executors"

    def _send_one(self, chunk: ChunkRef, config: BatchConfig | None) -> _Outcome:
        lines = self.store.chunk_lines([chunk.key]).select("line").coalesce(1)
        rows = lines.mapInArrow(_SendTask(self.provider, chunk, config), _OUTCOME_DDL).collect()
        if len(rows) != 1:  # one task, one row: anything else is Spark misbehaving
            raise StoreError(f"upload of chunk {chunk.key} gave {len(rows)} outcomes, not 1")
        return _outcome_from_row(rows[0])

    @contextlib.contextmanager
    def result_lines(self, batches: Sequence[ProviderBatch]) -> Iterator[ResultLines]:
        yield ResultLines(staged=None, reader=self.provider)  # each collection task reads its own


# ---- driver ---------------------------------------------------------------------------------------


class DriverTransport(_Uploads):
    """Uploads and downloads on the driver, a bounded window at a time (see the module docstring)."""

    name = "driver"

    def _send_one(self, chunk: ChunkRef, config: BatchConfig | None) -> _Outcome:
        rows = self.store.chunk_lines([chunk.key]).select("line").toLocalIterator()
        parts = (row[0].encode() + b"\n" for row in rows)
        return _send_stream(self.provider, chunk, _grouped(parts, 1 << 20), config)

    @contextlib.contextmanager
    def result_lines(self, batches: Sequence[ProviderBatch]) -> Iterator[ResultLines]:
        collection = uuid.uuid4().hex
        try:
            with no_cyclic_gc():  # parsing: see _arrow_rows
                for batch in batches:
                    for window in _windows(_result_batches(self.provider, batch)):
                        self.store.append_downloads(collection, window)
            yield ResultLines(staged=self.store.downloads(collection), reader=None)
        finally:
            self.store.drop_downloads(collection)


def _grouped(parts: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Join small pieces into blocks of about ``size`` bytes (fewer, larger writes)."""
    block: list[bytes] = []
    held = 0
    for part in parts:
        block.append(part)
        held += len(part)
        if held >= size:
            yield b"".join(block)
            block, held = [], 0
    if block:
        yield b"".join(block)


def _windows(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    """Arrow batches regrouped into tables of about :data:`DOWNLOAD_WINDOW_ROWS` rows."""
    import pyarrow as pa

    held: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        held.append(batch)
        rows += batch.num_rows
        if rows >= DOWNLOAD_WINDOW_ROWS:
            yield pa.Table.from_batches(held)
            held, rows = [], 0
    if held:
        yield pa.Table.from_batches(held)


# ---- choosing -------------------------------------------------------------------------------------


def choose(name: str, store: Store, provider: Provider) -> Transport:
    """The transport for a run: ``"executors"``, ``"driver"``, or ``"auto"`` (probe; logged)."""
    if name == "executors":
        return ExecutorTransport(store, provider)
    if name == "driver":
        return DriverTransport(store, provider)
    reached, detail = _executors_reach(store, provider)
    picked: Transport = (
        ExecutorTransport(store, provider) if reached else DriverTransport(store, provider)
    )
    log.info(
        "transport: %s (executors %s %s)",
        picked.name,
        "can reach" if reached else "cannot reach",
        detail,
    )
    return picked


@dataclass(frozen=True)
class _Probe:
    """The ``mapInArrow`` function of the egress probe: can a task open a connection to the
    provider's host and port?"""

    host: str
    port: int

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import socket

        import pyarrow as pa

        for _ in batches:
            pass
        try:
            with socket.create_connection((self.host, self.port), timeout=_PROBE_TIMEOUT):
                error = None
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
        yield pa.RecordBatch.from_pylist([{"error": error}])


def _executors_reach(store: Store, provider: Provider) -> tuple[bool, str]:
    """Whether a Spark task can connect to the provider, and a phrase for the log."""
    from urllib.parse import urlsplit

    url = urlsplit(provider.base_url)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        probe = store.spark.range(1).coalesce(1).mapInArrow(_Probe(host, port), "error STRING")
        error = probe.collect()[0][0]
    except Exception as exc:  # a cluster that cannot run Python tasks at all: stay on the driver
        error = f"the probe task failed: {str(exc).strip().splitlines()[0] if str(exc) else exc!r}"
    where = f"{host}:{port}"
    return (error is None, where if error is None else f"{where}: {error}")
