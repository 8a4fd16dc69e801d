"""Chunk files on the staging area: where they live, and how they are read, listed and removed.

A chunk is one future provider batch. Packing writes it as a directory ``<staging>/<key>/`` of part
files (``part-<n>.jsonl``, one per packing task that holds some of its lines); the chunk's content is
the concatenation of its parts in name order. A chunk may also be a single JSONL file (tests and
hand-made chunks); every function here takes either. Chunks are deleted once their batch is
collected; :func:`sweep_orphans` removes those a crashed run left behind.

Paths are spelt as ``pyarrow.fs`` opens them: absolute local paths, ``/dbfs/...`` for DBFS, or URIs
(``s3://...``); :func:`spark_path` gives the spelling Spark's readers need.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow.fs as pafs

__all__ = [
    "ORPHAN_AGE_SECONDS",
    "chunk_parts",
    "delete_chunk",
    "open_chunk",
    "resolve_staging",
    "spark_path",
    "sweep_orphans",
]

log = logging.getLogger("spark_llm_batch")


def resolve_staging(staging_uri: str) -> str:
    """The staging directory as executors and providers will open it, created if missing."""
    import os
    from urllib.parse import urlparse

    import pyarrow.fs as pafs

    parsed = urlparse(staging_uri)
    if parsed.scheme == "file":
        # Spark and catalogs spell local paths "file:/p" (one slash): a path, not a relative name.
        uri = os.path.abspath(parsed.path)
    elif parsed.scheme == "dbfs":
        uri = "/dbfs" + parsed.path  # Databricks mounts DBFS there for plain file access
    elif "://" in staging_uri:
        uri = staging_uri.rstrip("/")
    else:
        uri = os.path.abspath(staging_uri)  # pyarrow.fs only takes absolute paths
    fs, base = pafs.FileSystem.from_uri(uri)
    fs.create_dir(base, recursive=True)
    return uri


def spark_path(uri: str) -> str:
    """A chunk's URI (as :func:`resolve_staging` spells it) as Spark's readers take it."""
    if uri.startswith("/dbfs/"):
        return "dbfs:" + uri.removeprefix("/dbfs")
    if "://" in uri:
        return uri
    return "file://" + uri  # an absolute local path: not the cluster's default filesystem


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)


def chunk_parts(uri: str) -> list[tuple[str, int]]:
    """``(path, size)`` of the chunk's files in content order (one entry for a single file).

    Raises:
        FileNotFoundError: nothing exists at ``uri``.
    """
    import pyarrow.fs as pafs

    fs, path = _filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [(path, int(info.size))]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"chunk {uri} does not exist")
    parts = fs.get_file_info(pafs.FileSelector(path))
    files = [p for p in parts if p.type == pafs.FileType.File and p.base_name.endswith(".jsonl")]
    return [(p.path, int(p.size)) for p in sorted(files, key=lambda p: p.base_name)]


class _Concatenated(io.RawIOBase):
    """The parts of a chunk read as one seekable stream (the SDK may rewind it to retry)."""

    def __init__(self, fs: pafs.FileSystem, parts: list[tuple[str, int]]) -> None:
        self._fs = fs
        self._parts = parts
        self._size = sum(size for _, size in parts)
        self._pos = 0
        self._open: tuple[int, Any] | None = None  # (part index, its open file)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        start = 0
        for index, (path, size) in enumerate(self._parts):
            if self._pos < start + size:
                if self._open is None or self._open[0] != index:
                    self._close_part()
                    self._open = (index, self._fs.open_input_file(path))
                handle = self._open[1]
                handle.seek(self._pos - start)
                data = handle.read(min(len(buffer), start + size - self._pos))
                buffer[: len(data)] = data
                self._pos += len(data)
                return len(data)
            start += size
        return 0  # end of the last part

    def _close_part(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def close(self) -> None:
        self._close_part()
        super().close()


def open_chunk(uri: str) -> io.BufferedReader:
    """The chunk's content as one seekable binary stream (a context manager).

    Raises:
        FileNotFoundError: nothing exists at ``uri``.
    """
    fs, _ = _filesystem(uri)
    return io.BufferedReader(_Concatenated(fs, chunk_parts(uri)), buffer_size=1 << 20)


def delete_chunk(uri: str) -> None:
    """Remove the chunk's file or directory (missing: nothing to do)."""
    import pyarrow.fs as pafs

    fs, path = _filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


ORPHAN_AGE_SECONDS = 24 * 3600.0
"""How old an unreferenced staging entry must be before :func:`sweep_orphans` removes it."""

_SWEPT = re.compile(r"(_collect-)?[0-9a-f]{32}")  # chunk directories, collection report folders


def sweep_orphans(
    staging_uri: str,
    live_names: Callable[[], set[str]],
    *,
    older_than: float = ORPHAN_AGE_SECONDS,
    now: float | None = None,
) -> list[str]:
    """Remove what crashed runs left in the staging area; return the names removed.

    A crash between packing's write job and the commit of its batch rows leaves chunk directories no
    batch names, and a crash during collection leaves its ``_collect-*`` report folder. Entries
    named like those, last modified more than ``older_than`` seconds ago and not in
    ``live_names()`` (the chunk names of batches not yet collected: called only when some entry is
    old enough) are deleted; anything else in the folder is left alone. Best effort: an entry that
    cannot be removed is logged and kept. Object stores give folders no modification time, so
    there nothing is swept (a lifecycle rule on the staging prefix does that job).
    """
    import pyarrow.fs as pafs

    cutoff = (time.time() if now is None else now) - older_than
    try:
        fs, base = _filesystem(resolve_staging(staging_uri))
        entries = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except OSError as exc:
        log.debug("staging %s not swept: %s", staging_uri, exc)
        return []
    old = [
        e
        for e in entries
        if _SWEPT.fullmatch(e.base_name) and e.mtime is not None and e.mtime.timestamp() < cutoff
    ]
    if not old:
        return []
    live = live_names()
    removed = []
    for entry in old:
        if entry.base_name in live:
            continue
        try:
            if entry.type == pafs.FileType.Directory:
                fs.delete_dir(entry.path)
            else:
                fs.delete_file(entry.path)
        except OSError as exc:
            log.debug("staging entry %s not removed: %s", entry.path, exc)
            continue
        removed.append(entry.base_name)
    if removed:
        log.info(
            "staging %s: removed %d entr%s left by crashed runs",
            staging_uri,
            len(removed),
            "y" if len(removed) == 1 else "ies",
        )
    return removed
