"""The OpenAI Files API: multipart upload streamed to disk, content streamed back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from spark_llm_batch.emulator._app import ApiError, json_response
from spark_llm_batch.emulator._state import EmulatorState

__all__ = ["FILE", "Files"]

FILE = "openai_file"
_PURPOSES = ("batch", "fine-tune", "assistants", "vision", "user_data", "evals")
_CHUNK = 1024 * 1024
_DEFAULT_BATCH_EXPIRY = 30 * 86400


class Files:
    """``/v1/files``: file records in the state, bytes in blobs on disk."""

    def __init__(self, state: EmulatorState) -> None:
        """Serve files over ``state``."""
        self.state = state

    def register(self, app: web.Application) -> None:
        """Add the Files routes to ``app``."""
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files", self.list_all)
        app.router.add_get("/v1/files/{file_id}", self.retrieve)
        app.router.add_delete("/v1/files/{file_id}", self.delete)
        app.router.add_get("/v1/files/{file_id}/content", self.content)

    def path(self, rec: dict[str, Any]) -> Path:
        """The blob holding a file's bytes."""
        return self.state.blob_path(rec["_blob"])

    def adopt(self, path: Path, filename: str, expires_in: float) -> str:
        """Register an existing blob (a batch's output) as a ``batch_output`` file; return its id."""
        now = self.state.clock.now()
        rec = self._record(
            filename, "batch_output", path.stat().st_size, now, int(now + expires_in)
        )
        rec["_blob"] = path.name
        self.state.put(FILE, rec)
        return str(rec["id"])

    async def upload(self, request: web.Request) -> web.Response:
        """``POST /v1/files``: multipart ``file`` + ``purpose`` (+ ``expires_after[...]``)."""
        if not request.content_type.startswith("multipart/"):
            raise ApiError(400, "Uploads must be multipart/form-data.", param="file")
        file_id = self.state.new_id("file-")
        blob = self.state.blob_path(f"{file_id}.upload")
        fields: dict[str, str] = {}
        filename, size = None, -1
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "file":
                    filename = part.filename or "upload.jsonl"
                    size = await _stream_to(part, blob, self.state.config.openai_max_bytes)
                else:
                    fields[part.name or ""] = (await part.text()).strip()
            rec = self._new_upload(file_id, fields, filename, size)
        except BaseException:
            blob.unlink(missing_ok=True)
            raise
        rec["_blob"] = blob.name
        self.state.put(FILE, rec)
        return json_response(_public(rec))

    def _new_upload(
        self, file_id: str, fields: dict[str, str], filename: str | None, size: int
    ) -> dict[str, Any]:
        purpose = fields.get("purpose")
        if purpose is None:
            raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose")
        if purpose not in _PURPOSES:
            raise ApiError(
                400, f"'{purpose}' is not one of {list(_PURPOSES)} - 'purpose'", param="purpose"
            )
        if filename is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        max_bytes = self.state.config.openai_max_bytes
        if purpose == "batch" and size > max_bytes:
            raise ApiError(400, f"File is too large: batch input files may be at most {max_bytes:,} bytes.",
                           param="file", code="file_too_large")  # fmt: skip
        if purpose == "batch" and not filename.endswith(".jsonl"):
            raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
        now = self.state.clock.now()
        expires_at = (
            int(now + _expiry(fields))
            if purpose == "batch" or "expires_after[anchor]" in fields
            else None
        )
        rec = self._record(filename, purpose, size, now, expires_at)
        rec["id"] = file_id
        return rec

    def _record(
        self, filename: str, purpose: str, size: int, now: float, expires_at: int | None
    ) -> dict[str, Any]:
        return {
            "id": self.state.new_id("file-"), "object": "file", "bytes": size, "created_at": int(now),
            "expires_at": expires_at, "filename": filename, "purpose": purpose,
            "status": "processed", "status_details": None,
        }  # fmt: skip

    async def retrieve(self, request: web.Request) -> web.Response:
        """``GET /v1/files/{file_id}``."""
        return json_response(_public(self._get(request.match_info["file_id"])))

    async def list_all(self, request: web.Request) -> web.Response:
        """``GET /v1/files?purpose&limit&after&order``."""
        records = [r for r in self.state.all(FILE) if not self._expired(r)]
        if request.query.get("order", "desc") == "desc":
            records.reverse()
        if "purpose" in request.query:
            records = [r for r in records if r["purpose"] == request.query["purpose"]]
        after = request.query.get("after")
        if after:
            ids = [r["id"] for r in records]
            records = records[ids.index(after) + 1 :] if after in ids else []
        try:
            limit = max(1, min(10_000, int(request.query.get("limit", "10000"))))
        except ValueError:
            raise ApiError(400, "'limit' must be an integer.", param="limit") from None
        data = [_public(r) for r in records[:limit]]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        page = {"object": "list", "data": data, "first_id": first, "last_id": last}
        return json_response({**page, "has_more": len(records) > limit})

    async def content(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/files/{file_id}/content``: the raw bytes, streamed from disk."""
        rec = self._get(request.match_info["file_id"])
        headers = {"Content-Type": "application/octet-stream"}
        return web.FileResponse(self.path(rec), chunk_size=_CHUNK, headers=headers)

    async def delete(self, request: web.Request) -> web.Response:
        """``DELETE /v1/files/{file_id}``."""
        rec = self._get(request.match_info["file_id"])
        self.state.delete(FILE, rec["id"])
        self.path(rec).unlink(missing_ok=True)
        return json_response({"id": rec["id"], "object": "file", "deleted": True})

    def _get(self, file_id: str) -> dict[str, Any]:
        rec = self.state.get(FILE, file_id)
        if rec is None or self._expired(rec):
            raise ApiError(404, f"No such File object: {file_id}", param="id", code=None)
        return rec

    def _expired(self, rec: dict[str, Any]) -> bool:
        return rec["expires_at"] is not None and rec["expires_at"] <= self.state.clock.now()


def _public(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if not k.startswith("_")}


def _expiry(fields: dict[str, str]) -> float:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return _DEFAULT_BATCH_EXPIRY
    if anchor != "created_at":
        raise ApiError(
            400, "expires_after[anchor] must be 'created_at'.", param="expires_after[anchor]"
        )
    if seconds is None or not seconds.isdigit() or not 3600 <= int(seconds) <= 2_592_000:
        raise ApiError(400, "expires_after[seconds] must be an integer between 3600 and 2592000.",
                       param="expires_after[seconds]")  # fmt: skip
    return float(seconds)


async def _stream_to(part: BodyPartReader, blob: Path, max_bytes: int) -> int:
    """Write the part to ``blob`` chunk by chunk; past ``max_bytes`` keep reading but stop writing."""
    size = 0
    # Plain blocking writes: each is a memory copy into the page cache, cheaper than a thread hop.
    fd = os.open(blob, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while chunk := await part.read_chunk(_CHUNK):
            size += len(chunk)
            if size <= max_bytes:
                os.write(fd, chunk)
    finally:
        os.close(fd)
    return size
