"""The OpenAI surface: Files, Batches and the real-time endpoints, under ``/v1``.

Batches follow the service: create answers ``validating`` at once and a worker thread validates and
answers the input file (:mod:`._openai_batch`); every read derives the status from the simulated
clock, and the first read that finds a batch ended writes its output and error files and bills
its completed requests (the OpenAI rule: completed work, also in expired and cancelled batches).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from spark_llm_batch.emulator import _openai_batch as ob
from spark_llm_batch.emulator._app import ApiError, json_response
from spark_llm_batch.emulator._faults import Fault, request_fault
from spark_llm_batch.emulator._openai_files import FILE, Files
from spark_llm_batch.emulator._state import EmulatorState

__all__ = ["register"]

BATCH = "openai_batch"
_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
_PUBLIC = (
    "id", "object", "endpoint", "errors", "input_file_id", "completion_window", "status",
    "output_file_id", "error_file_id", "created_at", "in_progress_at", "expires_at",
    "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at",
    "request_counts", "metadata", "model", "usage",
)  # fmt: skip


def register(app: web.Application, state: EmulatorState) -> None:
    """Add the OpenAI routes to ``app``."""
    files = Files(state)
    batches = Batches(state, files)
    files.register(app)
    app.router.add_post("/v1/batches", batches.create)
    app.router.add_get("/v1/batches", batches.list_all)
    app.router.add_get("/v1/batches/{batch_id}", batches.retrieve)
    app.router.add_post("/v1/batches/{batch_id}/cancel", batches.cancel)
    app.router.add_post("/v1/chat/completions", _realtime_handler(state, "/v1/chat/completions"))
    app.router.add_post("/v1/embeddings", _realtime_handler(state, "/v1/embeddings"))
    state.add_settler(batches.settle_all)


class Batches:
    """The Batch API over the shared state."""

    def __init__(self, state: EmulatorState, files: Files) -> None:
        """Serve batches over ``state``; output files are registered through ``files``."""
        self.state = state
        self.files = files
        self._plans: dict[str, ob.Plan] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._settling: dict[str, asyncio.Future[None]] = {}

    # -- routes -------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        """``POST /v1/batches``."""
        body = await _json_body(request)
        input_file = self._check_create(body)
        now = self.state.clock.now()
        cfg = self.state.config
        rec: dict[str, Any] = {
            "id": self.state.new_id("batch_"), "object": "batch", "endpoint": body["endpoint"],
            "errors": None, "input_file_id": input_file["id"], "completion_window": "24h",
            "status": "validating", "output_file_id": None, "error_file_id": None,
            "created_at": int(now), "expires_at": int(now + cfg.completion_window_seconds),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"), "model": None, "usage": None,
            "_t": {"created": now, "window": cfg.completion_window_seconds,
                   "processing": cfg.processing_seconds, "validating": cfg.validating_seconds,
                   "finalizing": cfg.finalizing_seconds, "cancelling": cfg.cancelling_seconds},
            "_limits": [cfg.openai_max_requests, cfg.openai_max_bytes],
            "_output_expiry": _expiry_seconds(body.get("output_expires_after"), "output_expires_after"),
            "_settled": False,
        }  # fmt: skip
        self.state.put(BATCH, rec)
        self._start_prepare(rec)
        return json_response(_public(rec))

    async def retrieve(self, request: web.Request) -> web.Response:
        """``GET /v1/batches/{batch_id}``."""
        return json_response(await self.current(self._get(request.match_info["batch_id"])))

    async def list_all(self, request: web.Request) -> web.Response:
        """``GET /v1/batches?after&limit``: newest first."""
        limit = _int_param(request, "limit", 20, 1, 100)
        records = self.state.all(BATCH)[::-1]
        after = request.query.get("after")
        if after:
            ids = [r["id"] for r in records]
            records = records[ids.index(after) + 1 :] if after in ids else []
        page = [await self.current(r) for r in records[:limit]]
        return json_response(_page(page, len(records) > limit))

    async def cancel(self, request: web.Request) -> web.Response:
        """``POST /v1/batches/{batch_id}/cancel``."""
        rec = self._get(request.match_info["batch_id"])
        status = (await self.current(rec))["status"]
        if status in ("completed", "failed", "expired", "cancelled"):
            raise ApiError(
                409, f"Cannot cancel a batch with status '{status}'.", code="batch_not_cancellable"
            )
        if status != "cancelling":
            rec["_t"]["cancel"] = self.state.clock.now()
            self.state.put(BATCH, rec)
        return json_response(await self.current(rec))

    # -- lifecycle ----------------------------------------------------------------------------

    async def current(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Bring ``rec`` up to the simulated now (ending it if due) and return its public object."""
        if "ready" not in rec["_t"] and rec["id"] not in self._tasks:
            self._start_prepare(rec)  # a restart interrupted the preparation: redo it
        plan = self._plan(rec)
        n = plan.n if plan else 0
        failed = bool(plan and plan.errors)
        view = ob.timeline(
            rec["_t"],
            n,
            failed,
            self.state.clock.now(),
            stuck=self.state.config.stuck_in_finalizing,
        )
        if view.terminal and not rec["_settled"]:
            await self._settle(rec, view)
        elif not rec["_settled"]:
            _apply_view(rec, view, plan)
        return _public(rec)

    async def settle_all(self) -> None:
        """Bring every unsettled batch up to now (the ledger endpoint calls this)."""
        for rec in self.state.all(BATCH):
            if not rec["_settled"]:
                await self.current(rec)

    def _start_prepare(self, rec: dict[str, Any]) -> None:
        self._tasks[rec["id"]] = asyncio.get_running_loop().create_task(self._prepare(rec))

    async def _prepare(self, rec: dict[str, Any]) -> None:
        input_file = self.state.get(FILE, rec["input_file_id"])
        max_requests, max_bytes = rec["_limits"]
        ok_path, err_path = self._paths(rec)
        if input_file is None:  # deleted before validation: the service fails the batch too
            plan = ob.Plan(errors=[{"code": "file_not_found", "message": "The input file was deleted.",
                                    "param": "input_file_id", "line": None}])  # fmt: skip
        else:
            src = self.files.path(input_file)
            plan = await self.state.run_blocking(
                lambda: ob.prepare(src, endpoint=rec["endpoint"], max_requests=max_requests,
                                   max_bytes=max_bytes, ok_path=ok_path, err_path=err_path,
                                   faults=self.state.request_faults, batch_seq=rec["_seq"])
            )  # fmt: skip
        if not plan.errors:
            self._check_token_limit(rec, plan)
        self._plans[rec["id"]] = plan
        if self.state.config.state_dir is not None:
            await self.state.run_blocking(plan.save, self.state.blob_path(f"{rec['id']}.plan.json"))
        rec["_t"]["ready"] = self.state.clock.now()
        rec["_tokens"] = 0 if plan.errors else sum(plan.input_tokens)
        rec["model"] = plan.model
        self.state.put(BATCH, rec)

    def _check_token_limit(self, rec: dict[str, Any], plan: ob.Plan) -> None:
        limit = self.state.config.token_limit_for(plan.model or "")
        if limit is None:
            return
        queued = sum(
            other.get("_tokens", 0) for other in self.state.all(BATCH)
            if other is not rec and other.get("model") == plan.model
            and other["status"] in ("in_progress", "finalizing", "validating")
        )  # fmt: skip
        if queued + sum(plan.input_tokens) > limit:
            message = (f"Enqueued token limit reached for {plan.model} in organization org-emulator. "
                       f"Limit: {limit:,} enqueued tokens. Please try again once some in_progress "
                       "batches have been completed.")  # fmt: skip
            plan.errors = [
                {"code": "token_limit_exceeded", "message": message, "param": None, "line": None}
            ]

    def _plan(self, rec: dict[str, Any]) -> ob.Plan | None:
        plan = self._plans.get(rec["id"])
        if plan is None and "ready" in rec["_t"]:
            path = self.state.blob_path(f"{rec['id']}.plan.json")
            if path.exists():
                plan = self._plans[rec["id"]] = ob.Plan.load(path)
        return plan

    async def _settle(self, rec: dict[str, Any], view: ob.View) -> None:
        # One settlement per batch even when several readers arrive together.
        pending = self._settling.get(rec["id"])
        if pending is None:
            pending = self._settling[rec["id"]] = asyncio.ensure_future(
                self._write_results(rec, view)
            )
        await asyncio.shield(pending)

    async def _write_results(self, rec: dict[str, Any], view: ob.View) -> None:
        task = self._tasks.get(rec["id"])
        if task is not None:
            await task  # the files to finish are still being written
        plan = self._plan(rec) or ob.Plan()
        ok_path, err_path = self._paths(rec)
        n = plan.n if view.validated else 0
        if view.status in ("expired", "cancelled") and n:
            code = "batch_expired" if view.status == "expired" else "batch_cancelled"
            await self.state.run_blocking(
                ob.finish_lines, plan, view.finished, code, ok_path, err_path
            )
        done = view.finished if view.status != "completed" else n
        billed = [i for i in range(done) if plan.ok[i]] if n else []
        _apply_view(rec, view, plan, final=True)
        expiry = rec["_output_expiry"]
        if billed:
            rec["output_file_id"] = self.files.adopt(ok_path, f"{rec['id']}_output.jsonl", expiry)
        if n - len(billed) > 0:
            rec["error_file_id"] = self.files.adopt(err_path, f"{rec['id']}_error.jsonl", expiry)
        if plan.errors:
            rec["errors"] = {"object": "list", "data": plan.errors}
        self._bill(rec, plan, billed)
        rec["_settled"] = True
        self.state.put(BATCH, rec)

    def _bill(self, rec: dict[str, Any], plan: ob.Plan, billed: list[int]) -> None:
        start, processing, n = (
            rec["_t"].get("ready_at_progress", 0.0),
            rec["_t"]["processing"],
            plan.n,
        )
        self.state.ledger.record_many([
            {"provider": "openai", "batch_id": rec["id"], "custom_id": plan.custom_ids[i],
             "model": plan.model, "input_tokens": plan.input_tokens[i],
             "output_tokens": plan.output_tokens[i], "time": start + processing * (i + 1) / n}
            for i in billed
        ])  # fmt: skip

    def _paths(self, rec: dict[str, Any]) -> tuple[Path, Path]:
        return self.state.blob_path(f"{rec['id']}.ok.jsonl"), self.state.blob_path(
            f"{rec['id']}.err.jsonl"
        )

    def _get(self, batch_id: str) -> dict[str, Any]:
        rec = self.state.get(BATCH, batch_id)
        if rec is None:
            raise ApiError(
                404, f"No batch found with id '{batch_id}'.", param="batch_id", code="not_found"
            )
        return rec

    def _check_create(self, body: dict[str, Any]) -> dict[str, Any]:
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                raise ApiError(400, f"Missing required parameter: '{name}'.", param=name,
                               code="missing_required_parameter")  # fmt: skip
        if body["endpoint"] not in _ENDPOINTS:
            raise ApiError(400, f"Invalid endpoint {body['endpoint']!r}: the emulator serves "
                                f"{', '.join(_ENDPOINTS)}.", param="endpoint")  # fmt: skip
        if body["completion_window"] != "24h":
            raise ApiError(400, "completion_window must be '24h'.", param="completion_window")
        _check_metadata(body.get("metadata"))
        input_file = self.state.get(FILE, body["input_file_id"])
        if input_file is None:
            raise ApiError(
                404, f"No such File object: {body['input_file_id']}", param="input_file_id"
            )
        if input_file["purpose"] != "batch":
            raise ApiError(400, "The input file must have purpose 'batch'.", param="input_file_id")
        return input_file


def _apply_view(
    rec: dict[str, Any], view: ob.View, plan: ob.Plan | None, *, final: bool = False
) -> None:
    """Copy the status, timestamps, counts and usage of ``view`` into the public fields."""
    rec["status"] = view.status
    for name, value in view.stamps.items():
        rec[name] = int(value)
    if "in_progress_at" in view.stamps:
        rec["_t"]["ready_at_progress"] = view.stamps["in_progress_at"]
    n = plan.n if plan is not None and view.validated else 0
    done = min(view.finished, n)
    completed = sum(plan.ok[:done]) if plan is not None and n else 0
    failed = done - completed + (n - done if final else 0)
    rec["request_counts"] = {"total": n, "completed": completed, "failed": failed}
    if n and plan is not None:
        tokens_in = sum(
            t for t, ok in zip(plan.input_tokens[:done], plan.ok[:done], strict=False) if ok
        )
        tokens_out = sum(
            t for t, ok in zip(plan.output_tokens[:done], plan.ok[:done], strict=False) if ok
        )
        rec["usage"] = {
            "input_tokens": tokens_in, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": tokens_out, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens_in + tokens_out,
        }  # fmt: skip


def _public(rec: dict[str, Any]) -> dict[str, Any]:
    return {name: rec.get(name) for name in _PUBLIC}


def _page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    first = data[0]["id"] if data else None
    last = data[-1]["id"] if data else None
    return {
        "object": "list",
        "data": data,
        "first_id": first,
        "last_id": last,
        "has_more": has_more,
    }


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise ApiError(400, "metadata must be an object with at most 16 pairs.", param="metadata")
    for key, value in metadata.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise ApiError(400, "metadata keys are at most 64 characters and values strings of at most "
                                "512 characters.", param="metadata")  # fmt: skip


def _expiry_seconds(value: Any, param: str) -> float:
    """Seconds until a file expires: 30 days by default, else ``{anchor, seconds}``."""
    if value is None:
        return 30 * 86400.0
    if not isinstance(value, dict) or value.get("anchor") != "created_at":
        raise ApiError(400, f"{param}[anchor] must be 'created_at'.", param=param)
    seconds = value.get("seconds")
    if not isinstance(seconds, int) or not 3600 <= seconds <= 2_592_000:
        raise ApiError(
            400, f"{param}[seconds] must be an integer between 3600 and 2592000.", param=param
        )
    return float(seconds)


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"'{name}' must be an integer.", param=name) from None
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be between {low} and {high}.", param=name)
    return value


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def _realtime_handler(
    state: EmulatorState, endpoint: str
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return await _realtime(request, state, endpoint)

    return handle


async def _realtime(request: web.Request, state: EmulatorState, endpoint: str) -> web.Response:
    """``POST /v1/chat/completions`` and ``/v1/embeddings``: answer now, bill now."""
    from spark_llm_batch.emulator import _answers

    body = await _json_body(request)
    if body.get("stream"):
        raise ApiError(400, "The emulator does not support stream=true.", param="stream")
    fault = request_fault(body)
    if fault is Fault.TIMEOUT:
        raise ApiError(408, "Request timed out (injected).", type="timeout", code="request_timeout")
    if fault in ob.HTTP_FAULTS:
        status, etype, code, message = ob.HTTP_FAULTS[fault]
        retry = {"retry-after": f"{state.config.retry_after_seconds:g}"} if status == 429 else None
        raise ApiError(status, message, type=etype, code=code, headers=retry)
    try:
        result = ob.answer_body(body, endpoint, fault, _answers)
    except _answers.InvalidRequestError as exc:
        raise ApiError(400, str(exc)) from None
    if "created" in result:
        result["created"] = int(state.clock.now())
    usage = result.get("usage") or {}
    state.ledger.record(
        provider="openai", batch_id=None, custom_id=None, model=result.get("model"),
        input_tokens=int(usage.get("prompt_tokens", 0)),
        output_tokens=int(usage.get("completion_tokens", 0)), time=state.clock.now(),
    )  # fmt: skip
    return json_response(result)
