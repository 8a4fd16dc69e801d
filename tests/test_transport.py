"""The transport's pieces that need no Spark: the upload stream and upload outcomes as rows.

The transports themselves run in the collection tests (both of them), the pipeline tests and the
cluster cases (executors on a cluster, the driver when executors have no egress).
"""

from __future__ import annotations

import io
import pickle

import pytest

from spark_llm_batch._transport import (
    ChunkMissing,
    LineStream,
    _outcome_from_row,
    _outcome_row,
    _upload_stream,
)
from spark_llm_batch.errors import AuthenticationError, ProviderError
from spark_llm_batch.providers.base import ChunkRef


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
    assert _upload_stream(ok, chunk, iter([b"a\n", b"bc\nd\n"])) == "file-" + "k" * 32  # type: ignore[arg-type]
    assert ok.sent == b"a\nbc\nd\n"
    missing = _upload_stream(_Recorder(), chunk, iter([]))  # type: ignore[arg-type]
    assert isinstance(missing, ChunkMissing)
    refused = ProviderError("429 slow down", status=429, retry_after=2.5)
    assert _upload_stream(_Recorder(refused), chunk, iter([b"a\n"])) is refused  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "outcome",
    [
        "file-1",
        None,
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
