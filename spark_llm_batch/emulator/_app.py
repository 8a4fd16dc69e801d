"""The aiohttp application: auth, provider-shaped errors, control routes, surface registration.

API for surface modules::

    from spark_llm_batch.emulator._app import ApiError, STATE_KEY

    def register(app: web.Application, state: EmulatorState) -> None:
        app.router.add_post("/v1/messages/batches", handler)   # add your routes here

    raise ApiError(404, "No such batch", type="not_found_error")  # rendered in the caller's shape

:func:`create_app` calls ``_openai.register(app, state)`` and, when the module exists,
``_anthropic.register(app, state)``. Paths under ``/v1/messages`` get Anthropic's error shape
(``{"type":"error","error":{"type","message"}}``); everything else OpenAI's
(``{"error":{"message","type","param","code"}}``). ``type`` defaults from the status per provider.
Every provider call is counted (:mod:`._calls`), then auth (any non-empty ``Authorization:
Bearer`` or ``x-api-key``) and the seeded control-plane 429/500 draw run before its route;
``/_emulator/*`` routes need neither and are not counted.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from spark_llm_batch.emulator._calls import kind_of
from spark_llm_batch.emulator._state import EmulatorConfig, EmulatorState

__all__ = ["STATE_KEY", "ApiError", "create_app", "json_response"]

STATE_KEY = web.AppKey("emulator_state", EmulatorState)
_log = logging.getLogger("spark_llm_batch.emulator")
# Anthropic create bodies may reach 256 MB; surfaces enforce the configured limits themselves.
_CLIENT_MAX_SIZE = 1024 * 1024 * 1024

_OPENAI_TYPES = {401: "invalid_request_error", 429: "requests", 500: "server_error"}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answer in the provider's shape; raise it from any handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Describe the error; ``type`` defaults from ``status`` for the caller's provider."""
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}


def is_anthropic_path(path: str) -> bool:
    """Return True when ``path`` belongs to the Anthropic surface."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """Return a compact JSON response (the default encoder, without aiohttp's extra copies)."""
    body = json.dumps(data, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def render_error(path: str, err: ApiError) -> web.Response:
    """Render ``err`` in the shape of the provider that owns ``path``."""
    request_id = "req_" + uuid.uuid4().hex[:24]
    headers = dict(err.headers)
    if is_anthropic_path(path):
        err_type = err.type or _ANTHROPIC_TYPES.get(err.status, "api_error")
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": err_type, "message": err.message},
            "request_id": request_id,
        }
        headers["request-id"] = request_id
    else:
        err_type = err.type or _OPENAI_TYPES.get(err.status, "invalid_request_error")
        body = {
            "error": {
                "message": err.message,
                "type": err_type,
                "param": err.param,
                "code": err.code,
            }
        }
        headers["x-request-id"] = request_id
    return json_response(body, status=err.status, headers=headers)


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Every failure leaves in the provider's shape: clients parse it, and a stack trace would leak.
    try:
        return await handler(request)
    except ApiError as err:
        return render_error(request.path, err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = (
            f"Invalid URL ({request.method} {request.path})"
            if exc.status in (404, 405)
            else exc.reason
        )
        return render_error(request.path, ApiError(exc.status, message))
    except Exception:
        _log.exception("emulator handler failed: %s %s", request.method, request.path)
        return render_error(
            request.path, ApiError(500, "The server had an error processing your request.")
        )


@web.middleware
async def _gate_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/_emulator/"):
        return await handler(request)
    state = request.app[STATE_KEY]
    resource = request.match_info.route.resource
    pattern = resource.canonical if resource is not None else request.path
    state.calls.count(
        "anthropic" if is_anthropic_path(request.path) else "openai",
        kind_of(request.method, pattern),
    )
    _check_auth(request, state.config.api_keys)
    hit = state.faults.control_plane()
    if hit is not None and hit.status == 429:
        retry = f"{hit.retry_after:g}" if hit.retry_after is not None else "1"
        raise ApiError(
            429,
            "Rate limit reached for requests (injected).",
            code="rate_limit_exceeded",
            headers={"retry-after": retry, "retry-after-ms": str(int(float(retry) * 1000))},
        )
    if hit is not None:
        raise ApiError(500, "The server had an error while processing your request (injected).")
    return await handler(request)


def _check_auth(request: web.Request, accepted: frozenset[str] | None) -> None:
    auth = request.headers.get("Authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    key = key or request.headers.get("x-api-key", "").strip()
    if key and accepted is not None and key not in accepted:
        # The real services' wording; the key itself is never echoed back.
        if is_anthropic_path(request.path):
            raise ApiError(401, "invalid x-api-key", type="authentication_error")
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
    if key:
        return
    if is_anthropic_path(request.path):
        raise ApiError(401, "x-api-key header is required", type="authentication_error")
    raise ApiError(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        code="invalid_api_key",
    )


# -- control routes ----------------------------------------------------------------------------


async def _get_ledger(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    await state.settle_all()
    return json_response({"object": "list", "data": state.ledger.entries()})


async def _clear_ledger(request: web.Request) -> web.Response:
    request.app[STATE_KEY].ledger.clear()
    return json_response({"cleared": True})


async def _get_calls(request: web.Request) -> web.Response:
    return json_response(request.app[STATE_KEY].calls.snapshot())


async def _clear_calls(request: web.Request) -> web.Response:
    request.app[STATE_KEY].calls.clear()
    return json_response({"cleared": True})


async def _get_config(request: web.Request) -> web.Response:
    return json_response(request.app[STATE_KEY].config.model_dump(mode="json"))


async def _patch_config(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    changes = await _json_object(request)
    try:
        config = EmulatorConfig.model_validate({**state.config.model_dump(), **changes})
        state.configure(config)
    except (ValidationError, ValueError) as exc:
        raise ApiError(400, f"invalid emulator config: {exc}") from None
    return json_response(config.model_dump(mode="json"))


async def _get_clock(request: web.Request) -> web.Response:
    clock = request.app[STATE_KEY].clock
    return json_response({"now": clock.now(), "speed": clock.speed})


async def _advance_clock(request: web.Request) -> web.Response:
    body = await _json_object(request)
    seconds = body.get("seconds")
    if not isinstance(seconds, (int, float)) or seconds < 0:
        raise ApiError(400, 'body must be {"seconds": <non-negative number>}', param="seconds")
    now = request.app[STATE_KEY].clock.advance(float(seconds))
    return json_response({"now": now})


async def _health(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def create_app(state: EmulatorState) -> web.Application:
    """Build the application serving both providers' surfaces over ``state``.

    Example:
        >>> app = create_app(EmulatorState(EmulatorConfig()))  # doctest: +SKIP
    """
    app = web.Application(
        middlewares=[_errors_middleware, _gate_middleware], client_max_size=_CLIENT_MAX_SIZE
    )
    app[STATE_KEY] = state
    app.router.add_get("/_emulator/health", _health)
    app.router.add_get("/_emulator/ledger", _get_ledger)
    app.router.add_delete("/_emulator/ledger", _clear_ledger)
    app.router.add_get("/_emulator/calls", _get_calls)
    app.router.add_delete("/_emulator/calls", _clear_calls)
    app.router.add_get("/_emulator/config", _get_config)
    app.router.add_route("PATCH", "/_emulator/config", _patch_config)
    app.router.add_post("/_emulator/config", _patch_config)
    app.router.add_get("/_emulator/clock", _get_clock)
    app.router.add_post("/_emulator/clock/advance", _advance_clock)

    from spark_llm_batch.emulator import _anthropic, _openai

    _openai.register(app, state)
    _anthropic.register(app, state)
    return app
