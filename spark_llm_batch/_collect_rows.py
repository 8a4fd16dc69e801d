"""Collection on executors: what one collection task does for one batch (the driver: ``_collect``).

Each collected batch gets one Python task (``applyInArrow``, iterator form: :func:`_rows_function`)
that takes its batch's members and streams the provider's result files
(``provider.iter_result_rows``, never a whole file in memory), yielding Arrow batches of at most
:data:`_ROWS_PER_BATCH` rows of :data:`ROWS_SCHEMA`: one row per result line of a member (lines for
other hashes are dropped), then a failed row of class ``missing`` for every member without a line
(``batch_failed`` with the provider's message for a batch failed as a whole, whose results are not
read at all). ``final`` is decided there from the retry policy
(:func:`~spark_llm_batch._results.should_retry`).

On the fast path the task checks as it goes that its batch gives one row per member, and stops the
MERGE before its commit otherwise (:func:`_batch_rows`): no hash in two collected batches (it
receives the number of repeated ``xxhash64`` digests among all the members: equal hashes have
equal digests, so none proves it), none twice in its batch, each member at its batch's attempt, at
most one result line per member. Its last act is then to write its batch's counts (rows;
succeeded, failed for good, to retry) to a small file of the store's staging area (:func:`_report`),
which the driver reads instead of counting from the table.
"""

from __future__ import annotations

import contextlib
import gc
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spark_llm_batch._results import should_retry
from spark_llm_batch._store_tables import RESULT_COLUMNS
from spark_llm_batch.config import RetryPolicy
from spark_llm_batch.providers.base import Provider, ProviderBatch

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["ROWS_SCHEMA"]

_ROWS_PER_BATCH = 4096

ROWS_SCHEMA = ", ".join(f"`{name}` {kind}" for name, kind in RESULT_COLUMNS[:12])
"""Rows yielded by the executor-side function: the results-table columns up to ``final``."""

_SLOW_PATH = "SPARK_LLM_BATCH_NOT_ONE_ROW_PER_MEMBER"
"""Marks the error that stops a fast-path MERGE before its commit (see :func:`_batch_rows`)."""


@dataclass(frozen=True)
class _Spec:
    """What a task needs to read one batch (small; pickled with the closure)."""

    key: str
    batch_id: str | None
    attempt: int
    model: str
    batch: ProviderBatch | None  # None: failed as a whole, nothing to read
    fill_class: str  # the class and message of a member without a result line
    fill_message: str


@dataclass(frozen=True)
class _Job:
    """What every task of one collection gets (pickled once, with the function)."""

    provider: Provider
    specs: dict[str, _Spec]
    retry: RetryPolicy
    reports: str | None  # fast path: where each batch reports its counts; None: general path


def _rows_function(job: _Job) -> Any:
    """The ``applyInArrow`` function: a batch's members in, its result rows out (streamed)."""
    import typing

    import pyarrow as pa

    def batch_rows(key: Any, members: Any) -> Any:
        return _batch_rows(job, job.specs[key[1].as_py()], members)  # key: (slot, batch_key)

    # Real (not string) annotations: PySpark picks the streaming iterator form from them.
    batch_rows.__annotations__ = {
        "key": tuple,
        "members": typing.Iterator[pa.RecordBatch],
        "return": typing.Iterator[pa.RecordBatch],
    }
    return batch_rows


def _batch_rows(
    job: _Job, spec: _Spec, members: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Rows of one batch: a row per member's result line (in file order), then the missing ones.

    On the fast path (``job.reports`` set) the rows go straight into the MERGE, so where one row
    per member might not hold this raises, failing the MERGE before its commit: a hash in another
    collected batch, twice among the members or in the result lines, a member at another attempt.
    Its last act is the batch's report (:func:`_report`).
    """
    strict = job.reports is not None
    hashes: set[str | None] = set()
    count = 0
    for part in members:
        column = part.column("hash").to_pylist()
        hashes.update(column)
        count += len(column)
        if not strict or not part.num_rows:
            continue
        if set(part.column("attempt").to_pylist()) != {spec.attempt}:
            raise ValueError(f"{_SLOW_PATH}: a member of batch {spec.key} at another attempt")
        if part.column("repeated")[0].as_py():  # the same on every row
            raise ValueError(f"{_SLOW_PATH}: a hash in two of the batches collected")
    if strict and count != len(hashes):
        raise ValueError(f"{_SLOW_PATH}: a member twice in batch {spec.key}")
    pending = set(hashes)
    rows = _Rows(job, spec)
    if spec.batch is not None:
        with _gc_paused():
            for row in job.provider.iter_result_rows(spec.batch):
                if row[0] in pending:
                    pending.remove(row[0])
                elif row[0] not in hashes:
                    continue  # not a member of this batch
                elif strict:
                    raise ValueError(f"{_SLOW_PATH}: two result lines for {row[0]} in {spec.key}")
                if rows.add(row):
                    yield rows.flush()
    fill = ("failed", None, None, spec.fill_class, spec.fill_message, None, None, None)
    for hash_ in pending:
        if rows.add((hash_, *fill)):
            yield rows.flush()
    if rows.pending:
        yield rows.flush()
    if job.reports is not None:
        _report(job.reports, spec.key, rows.counts)


class _Rows:
    """Rows of one batch on their way out: ``final`` added, counted, flushed as Arrow batches."""

    def __init__(self, job: _Job, spec: _Spec) -> None:
        self.retry, self.spec = job.retry, spec
        self.pending: list[tuple[Any, ...]] = []
        self.counts = [0, 0, 0, 0]  # rows, succeeded, failed for good, to retry

    def add(self, row: tuple[Any, ...]) -> bool:
        """Add a :data:`~spark_llm_batch.providers.base.ResultRow`; True when a flush is due."""
        counts = self.counts
        counts[0] += 1
        if row[1] == "succeeded":
            counts[1] += 1
            self.pending.append((*row, True))
        else:
            final = not should_retry(row[4], self.spec.attempt, self.retry)
            counts[2 if final else 3] += 1
            self.pending.append((*row, final))
        return len(self.pending) >= _ROWS_PER_BATCH

    def flush(self) -> pa.RecordBatch:
        """The pending rows as one Arrow batch of :data:`ROWS_SCHEMA` (a row without a model
        gets the batch's)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        rows, self.pending = self.pending, []
        n, spec = len(rows), self.spec
        cols = list(zip(*rows, strict=True))
        text, tokens = pa.string(), pa.int64()
        arrays = [pa.array(cols[i], text) for i in range(6)]
        arrays += [pa.array(cols[6], tokens), pa.array(cols[7], tokens)]
        arrays.append(pc.fill_null(pa.array(cols[8], text), spec.model))
        arrays.append(pa.array([spec.batch_id] * n, text))
        arrays.append(pa.array([spec.attempt] * n, pa.int32()))
        arrays.append(pa.array(cols[9], pa.bool_()))
        return pa.RecordBatch.from_arrays(arrays, schema=_arrow_schema())


def _arrow_schema() -> pa.Schema:
    import pyarrow as pa

    text, tokens = pa.string(), pa.int64()
    types = [text] * 6 + [tokens, tokens, text, text, pa.int32(), pa.bool_()]
    return pa.schema([pa.field(n, t) for (n, _), t in zip(RESULT_COLUMNS, types, strict=False)])


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while parsing: a line's JSON objects die young and hold no cycles, yet the
    collector's passes over them cost about a third of the parse time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _report(uri: str, key: str, counts: list[int]) -> None:
    """Write batch ``key``'s counts to ``<uri>/<key>.json`` (a retried task rewrites the same)."""
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(uri)
    fs.create_dir(base, recursive=True)
    final = f"{base}/{key}.json"
    # Local files are written aside and renamed, so a reader never sees half a file; object
    # stores publish an object only when its upload completes.
    local = isinstance(fs, pafs.LocalFileSystem)
    temp = f"{final}.{uuid.uuid4().hex}.tmp" if local else final
    with fs.open_output_stream(temp) as out:
        out.write(json.dumps(counts).encode())
    if local:
        fs.move(temp, final)
