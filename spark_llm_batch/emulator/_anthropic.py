"""The Anthropic surface: Message Batches and real-time Messages.

Routes (added by :func:`register`)::

    POST   /v1/messages                        real-time Messages
    POST   /v1/messages/count_tokens           token estimate
    POST   /v1/messages/batches                create with inline requests
    GET    /v1/messages/batches                list, newest first (after_id / before_id / limit)
    GET    /v1/messages/batches/{id}           retrieve
    POST   /v1/messages/batches/{id}/cancel    cancel
    DELETE /v1/messages/batches/{id}           delete (only once ended)
    GET    /v1/messages/batches/{id}/results   JSONL results (the absolute ``results_url``)

Lifecycle, on the simulated clock with timings fixed at create: request ``i`` of ``n`` finishes at
``created + processing_seconds * (i + 1) / n``. The batch ends at the earliest of: the last request
finishing, ``expires_at`` (``created + completion_window_seconds``), or the cancel time plus
``cancelling_seconds``. Requests finished by then keep their outcome; the rest are ``canceled``
(after a cancel) or ``expired``. Counts stay in ``processing`` until the end, as on the service.

Create-time checks (400 ``invalid_request_error``): valid JSON, a non-empty ``requests`` list,
each ``custom_id`` matching ``^[a-zA-Z0-9_-]{1,64}$`` and unique, ``params`` an object. More than
``anthropic_max_requests`` requests or ``anthropic_max_bytes`` bytes is 413 ``request_too_large``
(provider-apis.md: "larger: 413"). Freshly created batches never 404 here.

Outcomes: params missing ``model``/``max_tokens``/``messages`` (or otherwise malformed) are
``errored`` ``invalid_request_error``; fault markers (see :mod:`._faults`) map ``rate_limited`` to
``rate_limit_error``, ``server_error`` to ``api_error``, ``invalid_request`` to
``invalid_request_error``, ``timeout`` to ``timeout_error`` and ``refused`` to a ``succeeded``
message with ``stop_reason: "refusal"``. Answers come from :mod:`._answers`.

Results are computed once, when a call (or the ledger's settler) first sees a batch ended: written
to a blob, then the ``succeeded`` ones billed (Anthropic bills nothing else), then the record marked
settled. Batch ids sort by creation time, so list cursors keep working after a delete.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from spark_llm_batch.emulator._answers import (
    InvalidRequestError,
    anthropic_message_response,
    anthropic_refusal_response,
)
from spark_llm_batch.emulator._anthropic_batch import (
    COUNT_KEYS,
    FAULT_ERRORS,
    batch_end,
    batch_status,
    billed_from_file,
    build_results,
    check_create_body,
    params_problem,
    rfc3339,
    write_atomic,
)
from spark_llm_batch.emulator._app import ApiError, json_response
from spark_llm_batch.emulator._faults import Fault, request_fault
from spark_llm_batch.emulator._state import EmulatorState

__all__ = ["register"]

KIND = "anthropic_batch"
_SEQ = itertools.count()


def register(app: web.Application, state: EmulatorState) -> None:
    """Add the Anthropic routes to ``app`` and the batch settler to ``state``.

    Example:
        >>> register(app, state)  # doctest: +SKIP
    """
    surface = _Surface(state)
    state.add_settler(surface.settle_all)
    prefix = "/v1/messages/batches"
    app.router.add_post("/v1/messages", surface.messages)
    app.router.add_post("/v1/messages/count_tokens", surface.count_tokens)
    app.router.add_post(prefix, surface.create)
    app.router.add_get(prefix, surface.list_batches)
    app.router.add_get(prefix + "/{id}", surface.retrieve)
    app.router.add_post(prefix + "/{id}/cancel", surface.cancel)
    app.router.add_delete(prefix + "/{id}", surface.delete)
    app.router.add_get(prefix + "/{id}/results", surface.results)


class _Surface:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        # One lock: settling is rare and must bill each batch exactly once.
        self._settle_lock = asyncio.Lock()

    # -- real time ------------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.Response:
        params = await _json_body(request)
        problem = params_problem(params, batch=False)
        if problem:
            raise ApiError(400, problem)
        fault = request_fault(params)
        if fault in FAULT_ERRORS:
            kind, status, message = FAULT_ERRORS[fault]
            retry = self.state.config.retry_after_seconds
            headers = {"retry-after": f"{retry:g}"} if status == 429 else None
            raise ApiError(status, message, type=kind, headers=headers)
        try:
            refused = fault is Fault.REFUSED
            answer = (anthropic_refusal_response if refused else anthropic_message_response)(params)
        except InvalidRequestError as exc:
            raise ApiError(400, str(exc)) from None
        usage = answer["usage"]
        self.state.ledger.record(
            provider="anthropic", batch_id=None, custom_id=None, model=answer["model"],
            input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"],
            time=self.state.clock.now(),
        )  # fmt: skip
        return json_response(answer, headers={"request-id": "req_" + uuid.uuid4().hex[:24]})

    async def count_tokens(self, request: web.Request) -> web.Response:
        params = await _json_body(request)
        params.setdefault("max_tokens", 1)
        problem = params_problem(params, batch=False)
        if problem:
            raise ApiError(400, problem)
        try:
            tokens = anthropic_message_response(params)["usage"]["input_tokens"]
        except InvalidRequestError as exc:
            raise ApiError(400, str(exc)) from None
        return json_response({"input_tokens": tokens})

    # -- batches --------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        config = self.state.config
        if (request.content_length or 0) > config.anthropic_max_bytes:
            raise _too_large(config.anthropic_max_bytes)
        raw = await request.read()
        if len(raw) > config.anthropic_max_bytes:
            raise _too_large(config.anthropic_max_bytes)
        count = await self.state.run_blocking(check_create_body, raw, config.anthropic_max_requests)
        now = self.state.clock.now()
        batch_id = f"msgbatch_{int(now * 1e6):014x}{next(_SEQ) % 4096:03x}{uuid.uuid4().hex[:9]}"
        record: dict[str, Any] = {
            "id": batch_id,
            "created": now,
            "expires": now + config.completion_window_seconds,
            "processing": config.processing_seconds,
            "cancelling": config.cancelling_seconds,
            "cancel_at": None,
            "count": count,
            "counts": None,
            "settled": False,
        }
        await self.state.run_blocking(write_atomic, self._input_path(batch_id), raw)
        self.state.put(KIND, record)
        # The service always answers a create with `in_progress`, however quick the batch.
        return json_response(self._render(record, request, now, frozen="in_progress"))

    async def retrieve(self, request: web.Request) -> web.Response:
        record = await self._current(request.match_info["id"])
        return json_response(self._render(record, request, self.state.clock.now()))

    async def list_batches(self, request: web.Request) -> web.Response:
        limit = _limit(request.query.get("limit", "20"))
        after, before = request.query.get("after_id"), request.query.get("before_id")
        records = sorted(self.state.all(KIND), key=lambda r: r["id"], reverse=True)
        if before is not None:
            newer = [r for r in records if r["id"] > before]
            page, has_more = newer[-limit:], len(newer) > limit
        else:
            older = [r for r in records if after is None or r["id"] < after]
            page, has_more = older[:limit], len(older) > limit
        await self._settle_due(page)
        now = self.state.clock.now()
        data = [self._render(r, request, now) for r in page]
        return json_response(
            {
                "data": data,
                "has_more": has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def cancel(self, request: web.Request) -> web.Response:
        record = await self._current(request.match_info["id"])
        now = self.state.clock.now()
        if batch_status(record, now) == "ended":
            raise ApiError(400, f"Batch {record['id']} has already ended and cannot be canceled.")
        if record["cancel_at"] is None:
            record["cancel_at"] = now
            self.state.put(KIND, record)
        return json_response(self._render(record, request, now, frozen="canceling"))

    async def delete(self, request: web.Request) -> web.Response:
        record = await self._current(request.match_info["id"])
        if batch_status(record, self.state.clock.now()) != "ended":
            raise ApiError(
                400,
                f"Batch {record['id']} is still processing; cancel it and wait for it to end "
                "before deleting it.",
            )
        self.state.delete(KIND, record["id"])
        for path in (self._input_path(record["id"]), self._results_path(record["id"])):
            path.unlink(missing_ok=True)
        return json_response({"id": record["id"], "type": "message_batch_deleted"})

    async def results(self, request: web.Request) -> web.StreamResponse:
        record = await self._current(request.match_info["id"])
        if batch_status(record, self.state.clock.now()) != "ended":
            raise ApiError(400, f"Batch {record['id']} has not ended yet; results are not ready.")
        headers = {"Content-Type": "application/binary"}
        return web.FileResponse(self._results_path(record["id"]), headers=headers)

    # -- settling -------------------------------------------------------------------------------

    async def settle_all(self) -> None:
        """Settle every batch that has ended by now (the ledger route awaits this)."""
        await self._settle_due(self.state.all(KIND))

    async def _current(self, batch_id: str) -> dict[str, Any]:
        record = self.state.get(KIND, batch_id)
        if record is None:
            raise ApiError(404, f"No message batch found with id {batch_id!r}.")
        await self._settle_due([record])
        return record

    async def _settle_due(self, records: list[dict[str, Any]]) -> None:
        now = self.state.clock.now()
        due = [r for r in records if r["settled"] is not True and batch_status(r, now) == "ended"]
        if not due:
            return
        async with self._settle_lock:
            for record in due:
                if record["settled"] is not True:
                    await self._settle(record)

    async def _settle(self, record: dict[str, Any]) -> None:
        """Write results, then bill, then mark settled; a crash in between never bills twice."""
        batch_id = record["id"]
        if record["settled"] is False:
            counts, bills = await self.state.run_blocking(
                build_results,
                self._input_path(batch_id),
                self._results_path(batch_id),
                record,
                self.state.request_faults,
            )
            record["counts"], record["settled"] = counts, "results"
            self.state.put(KIND, record)
        else:
            # Restarted after writing results: bill only if the ledger has nothing for this batch.
            _, bills = await self.state.run_blocking(billed_from_file, self._results_path(batch_id))
            if any(e["batch_id"] == batch_id for e in self.state.ledger.entries()):
                bills = []
        for entry in bills:
            entry["batch_id"] = batch_id
        self.state.ledger.record_many(bills)
        record["settled"] = True
        self.state.put(KIND, record)

    # -- rendering ------------------------------------------------------------------------------

    def _render(
        self, record: dict[str, Any], request: web.Request, now: float, frozen: str | None = None
    ) -> dict[str, Any]:
        status = frozen or batch_status(record, now)
        ended = status == "ended"
        counts = dict.fromkeys(COUNT_KEYS, 0)
        if ended:
            counts.update(record["counts"] or {})
        else:
            counts["processing"] = record["count"]
        cancel_at = record["cancel_at"]
        results = f"{request.scheme}://{request.host}/v1/messages/batches/{record['id']}/results"
        return {
            "id": record["id"],
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "created_at": rfc3339(record["created"]),
            "expires_at": rfc3339(record["expires"]),
            "ended_at": rfc3339(batch_end(record)[0]) if ended else None,
            "cancel_initiated_at": rfc3339(cancel_at) if cancel_at is not None else None,
            "archived_at": None,
            "results_url": results if ended else None,
        }

    def _input_path(self, batch_id: str) -> Path:
        return self.state.blob_path(f"anthropic-{batch_id}-input.json")

    def _results_path(self, batch_id: str) -> Path:
        return self.state.blob_path(f"anthropic-{batch_id}-results.jsonl")


def _limit(value: str) -> int:
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        raise ApiError(400, "limit: Input should be an integer between 1 and 1000")
    return limit


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"Request exceeds the maximum size of {limit} bytes.", type="request_too_large"
    )


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body
