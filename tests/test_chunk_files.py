"""Chunk files: a chunk directory reads as the concatenation of its parts, seekably."""

from __future__ import annotations

import io
import os
import time
import uuid
from pathlib import Path

import pytest

from spark_llm_batch._chunk_files import (
    ORPHAN_AGE_SECONDS,
    chunk_parts,
    delete_chunk,
    open_chunk,
    spark_path,
    sweep_orphans,
)


def _chunk(tmp_path: Path) -> tuple[Path, bytes]:
    folder = tmp_path / "chunk"
    folder.mkdir()
    parts = {"part-00002.jsonl": b"c1\nc2\n", "part-00000.jsonl": b"a1\n", "part-00001.jsonl": b""}
    for name, data in parts.items():
        (folder / name).write_bytes(data)
    (folder / "part-00003.jsonl.1234.tmp").write_bytes(b"half a retried task's file")
    return folder, b"a1\nc1\nc2\n"


def test_a_chunk_directory_reads_as_its_parts_in_name_order(tmp_path: Path) -> None:
    folder, content = _chunk(tmp_path)
    assert [Path(p).name for p, _ in chunk_parts(str(folder))] == [
        "part-00000.jsonl",
        "part-00001.jsonl",
        "part-00002.jsonl",
    ]
    with open_chunk(str(folder)) as stream:
        assert stream.read() == content
        stream.seek(0)  # the SDK rewinds to resend on a retry
        assert stream.read(4) == content[:4]
        assert stream.seek(0, io.SEEK_END) == len(content)
        stream.seek(5)
        assert stream.read() == content[5:]


def test_a_single_file_is_a_chunk_too_and_deleting_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_bytes(b"x\n")
    with open_chunk(str(path)) as stream:
        assert stream.read() == b"x\n"
    folder, _ = _chunk(tmp_path)
    for target in (path, folder):
        delete_chunk(str(target))
        delete_chunk(str(target))
        assert not target.exists()
    with pytest.raises(FileNotFoundError):
        open_chunk(str(folder))


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/tmp/store/staging/k", "file:///tmp/store/staging/k"),
        ("/dbfs/lake/staging/k", "dbfs:/lake/staging/k"),
        ("s3://bucket/staging/k", "s3://bucket/staging/k"),
    ],
)
def test_spark_path_spellings(uri: str, expected: str) -> None:
    assert spark_path(uri) == expected


def test_sweep_removes_only_old_unreferenced_chunks_and_reports(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    old = time.time() - ORPHAN_AGE_SECONDS - 60
    names = {kind: uuid.uuid4().hex for kind in ("orphan", "live", "fresh")}
    for name in names.values():
        (staging / name).mkdir(parents=True)
        (staging / name / "part-00000.jsonl").write_bytes(b"{}\n")
    report = staging / f"_collect-{uuid.uuid4().hex}"
    report.mkdir()
    (staging / "notes.txt").write_text("not ours")
    (staging / "Not-A-Key").mkdir()
    for path in [*(staging / n for n in (names["orphan"], names["live"])), report]:
        os.utime(path, (old, old))
    for path in (staging / "notes.txt", staging / "Not-A-Key"):
        os.utime(path, (old, old))
    asked: list[bool] = []

    def live() -> set[str]:
        asked.append(True)
        return {names["live"]}

    removed = sweep_orphans(str(staging), live)
    assert sorted(removed) == sorted([names["orphan"], report.name])
    assert sorted(p.name for p in staging.iterdir()) == sorted(
        ["notes.txt", "Not-A-Key", names["live"], names["fresh"]]
    )
    # Nothing old enough: the store is not even asked which chunks are live.
    asked.clear()
    assert sweep_orphans(str(staging), live, older_than=10 * ORPHAN_AGE_SECONDS) == []
    assert asked == []
    assert sweep_orphans(str(tmp_path / "missing"), live) == []
