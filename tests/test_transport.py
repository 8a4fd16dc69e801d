"""The transport's pieces: the upload stream, upload outcomes as rows, the executors' upload job.

The transports as a whole run in the collection tests (both of them), the pipeline tests and the
cluster cases (executors on a cluster, the driver when executors have no egress).
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from spark_llm_batch._store import Store
from spark_llm_batch._transport import (
    ChunkMissing,
    ExecutorTransport,
    LineStream,
    _outcome_from_row,
    _outcome_row,
    _send_stream,
)
from spark_llm_batch.errors import AuthenticationError, ProviderError
from spark_llm_batch.providers.base import BatchState, ChunkRef, ProviderBatch
from tests.orchestrator_fakes import stage_rows

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def test_the_stream_answers_size_probes_and_reads_forward() -> None:
    stream = LineStream("k", [b"ab", memoryview(b"cde"), b"", b"f\n"], 7)
    assert stream.seek(0, io.SEEK_END) == 7  # the SDK asks for the size ...
    assert stream.seek(0) == 0  # ... and rewinds to where nothing was read yet
    buffered = io.BufferedReader(stream, 4)
    assert buffered.read() == b"abcdef\n"


def test_a_short_or_long_chunk_is_missing_and_a_rewind_is_refused() -> None:
    with pytest.raises(ChunkMissing, match="holds 3 bytes in the store, 5 were staged"):
        io.BufferedReader(LineStream("k", [b"abc"], 5)).read()
    with pytest.raises(ChunkMissing, match="more than the 2 bytes"):
        io.BufferedReader(LineStream("k", [b"abc"], 2)).read()
    stream = LineStream("k", [b"abc"], 3)
    buffer = bytearray(2)
    assert stream.readinto(buffer) == 2
    stream.seek(0)  # a retry would need the bytes again: refused, never a partial file
    with pytest.raises(io.UnsupportedOperation, match="forward only"):
        stream.readinto(buffer)


class _Recorder:
    """A provider's ``upload`` only: reads the stream, or raises what it is given."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error, self.sent = error, b""

    def upload(self, chunk: ChunkRef, content: io.BufferedReader) -> str:
        if self.error is not None:
            raise self.error
        self.sent = content.read()
        return f"file-{chunk.key}"


def test_an_upload_gives_the_reference_or_its_failure_as_a_value() -> None:
    chunk = ChunkRef("k" * 32, 3, 7, "m")
    ok = _Recorder()
    assert _send_stream(ok, chunk, iter([b"a\n", b"bc\nd\n"]), None) == "file-" + "k" * 32  # type: ignore[arg-type]
    assert ok.sent == b"a\nbc\nd\n"
    missing = _send_stream(_Recorder(), chunk, iter([]), None)  # type: ignore[arg-type]
    assert isinstance(missing, ChunkMissing)
    refused = ProviderError("429 slow down", status=429, retry_after=2.5)
    assert _send_stream(_Recorder(refused), chunk, iter([b"a\n"]), None) is refused  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "outcome",
    [
        "file-1",
        None,
        ProviderBatch(
            "msgbatch_1",
            BatchState.COMPLETED,
            total=3,
            result_refs=("msgbatch_1",),
            errors=(("code", "message"),),
            created_at=1.5,
            raw_status="ended",
        ),
        ChunkMissing("gone"),
        ProviderError("OpenAI answered 503", status=503, retry_after=1.5),
        AuthenticationError("OpenAI answered 401: check OPENAI_API_KEY", status=401),
    ],
)
def test_upload_outcomes_travel_from_tasks_as_rows(outcome: object) -> None:
    row = pickle.loads(pickle.dumps(_outcome_row(outcome)))  # type: ignore[arg-type]
    back = _outcome_from_row(row)
    if not isinstance(outcome, BaseException):
        assert back == outcome
        return
    assert type(back) is type(outcome)
    assert str(back) == str(outcome)
    if isinstance(outcome, ProviderError):
        assert isinstance(back, ProviderError)
        assert (back.status, back.retry_after) == (outcome.status, outcome.retry_after)


class _Digest:
    """A provider's ``upload`` only, in Spark tasks: the reference names the lines it was sent
    (in any order: a file's lines are requests, not a sequence)."""

    def upload(self, chunk: ChunkRef, content: io.BufferedReader) -> str:
        return f"{chunk.key}:{_digest(content.read())}"


def _digest(data: bytes) -> str:
    assert data.endswith(b"\n")
    return hashlib.sha256(b"".join(sorted(data.splitlines(keepends=True)))).hexdigest()


def test_the_executors_upload_each_chunk_in_its_own_task_with_its_own_bytes(
    spark: SparkSession, tmp_path: Path
) -> None:
    store = Store.open(spark, str(tmp_path / "store"))
    rows = [(f"h{i:02d}", f'{{"custom_id":"h{i:02d}","n":{i}}}', 1) for i in range(7)]
    staged = stage_rows(spark, rows, per_chunk=3, sink=store)  # chunks of 3, 3 and 1 lines
    gone = staged.chunks[1]
    spark.sql(f"DELETE FROM {store.table_ref('chunks')} WHERE batch_key = '{gone.key}'").collect()
    outcomes = ExecutorTransport(store, _Digest()).upload(staged.chunks)  # type: ignore[arg-type]
    for i, (chunk, outcome) in enumerate(zip(staged.chunks, outcomes, strict=True)):
        if chunk is gone:
            assert isinstance(outcome, ChunkMissing)
            assert chunk.key in str(outcome)
            continue
        lines = "".join(line + "\n" for _, line, _ in rows[3 * i : 3 * i + 3]).encode()
        assert outcome == f"{chunk.key}:{_digest(lines)}"
