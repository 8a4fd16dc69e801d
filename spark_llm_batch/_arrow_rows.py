"""Python row tuples to Arrow batches, as result lines are parsed (collection tasks, the driver).

Parsing a million result lines builds millions of short-lived objects: :func:`no_cyclic_gc`
keeps Python's cyclic collector from walking them (they hold no cycles, and its passes cost about
a third of the parse time), and :func:`rows_batch` turns the parsed tuples into one Arrow batch of
declared columns.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["ROWS_PER_BATCH", "no_cyclic_gc", "rows_batch"]

ROWS_PER_BATCH = 4096
"""Rows per Arrow batch as lines are parsed."""


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Python's cyclic garbage collector paused inside the block (reference counting still frees
    every line's objects), restored after it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def rows_batch(
    columns: Sequence[tuple[str, str]], rows: Sequence[tuple[Any, ...]]
) -> pa.RecordBatch:
    """``rows`` (tuples in the order of ``columns``: name and Spark SQL kind) as one Arrow batch."""
    import pyarrow as pa

    kinds = {"STRING": pa.string(), "BIGINT": pa.int64(), "INT": pa.int32()}
    schema = pa.schema([(name, kinds[kind]) for name, kind in columns])
    values = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    arrays = [pa.array(col, field.type) for col, field in zip(values, schema, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
