"""Running the emulator: in a background thread (:class:`Emulator`) or in the foreground (CLI)."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from typing import Any

from aiohttp import web

from spark_llm_batch.emulator._app import create_app
from spark_llm_batch.emulator._state import EmulatorConfig, EmulatorState

__all__ = ["Emulator", "start_site"]


async def start_site(state: EmulatorState, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Start serving ``state`` on ``host:port`` (0 = any free port); return the runner and root URL."""
    # No access log: at tens of thousands of calls it would cost more than the handlers.
    runner = web.AppRunner(create_app(state), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, f"http://{_url_host(host or bound_host)}:{bound_port}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Emulator:
    """The emulator in a background thread with its own event loop.

    Example:
        >>> import openai
        >>> with Emulator(processing_seconds=0) as emu:  # doctest: +SKIP
        ...     client = openai.OpenAI(base_url=emu.openai_base_url, api_key="sk-test")
        ...     client.files.list()
        ...     emu.ledger()
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        **overrides: Any,
    ) -> None:
        """Configure (not start) an emulator.

        Args:
            config: the full configuration; defaults to ``EmulatorConfig()``.
            host: interface to bind.
            port: port to bind; 0 picks a free one.
            **overrides: fields of :class:`EmulatorConfig` replacing those of ``config``.
        """
        base = config or EmulatorConfig()
        self._config = EmulatorConfig.model_validate({**base.model_dump(), **overrides})
        self._host = host
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._state: EmulatorState | None = None
        self._url = ""

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Emulator:
        """Start serving; returns self once the port is bound."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        self._state = EmulatorState(self._config)
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            assert self._state is not None
            asyncio.set_event_loop(self._loop)
            try:
                self._runner, self._url = self._loop.run_until_complete(
                    start_site(self._state, self._host, self._port)
                )
            except BaseException as exc:  # reported to the starting thread below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="llm-emulator", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop serving and release the port (state in ``state_dir`` is kept)."""
        if self._thread is None or self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
        if self._state is not None:
            self._state.close()
        self._thread = self._loop = self._runner = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The root URL, e.g. ``http://127.0.0.1:54321``."""
        return self._url

    @property
    def openai_base_url(self) -> str:
        """The OpenAI SDK's ``base_url`` (the root plus ``/v1``)."""
        return self._url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The Anthropic SDK's ``base_url`` (the root: its paths carry ``/v1``)."""
        return self._url

    @property
    def state(self) -> EmulatorState:
        """The live state (for advanced tests); only valid while started."""
        if self._state is None:
            raise RuntimeError(
                "the emulator is not running: use it as a context manager or call start()"
            )
        return self._state

    # -- control ------------------------------------------------------------------------------

    @property
    def config(self) -> EmulatorConfig:
        """The current configuration."""
        return self._state.config if self._state is not None else self._config

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Change configuration fields at runtime; returns the new config.

        Example:
            >>> emu.configure(rate_limit_rate=0.5, retry_after_seconds=0)  # doctest: +SKIP
        """
        return EmulatorConfig.model_validate(self._control("PATCH", "/_emulator/config", changes))

    def advance(self, seconds: float) -> float:
        """Jump the simulated clock forward; returns the new simulated unix time."""
        return float(self._control("POST", "/_emulator/clock/advance", {"seconds": seconds})["now"])

    def now(self) -> float:
        """The simulated unix time."""
        return self.state.clock.now()

    def ledger(self) -> list[dict[str, Any]]:
        """Every billed request so far (see ``GET /_emulator/ledger``)."""
        return list(self._control("GET", "/_emulator/ledger")["data"])

    def clear_ledger(self) -> None:
        """Forget every ledger entry."""
        self._control("DELETE", "/_emulator/ledger")

    def calls(self) -> dict[str, dict[str, int]]:
        """Provider calls served so far: provider -> kind -> count (``GET /_emulator/calls``).

        Kinds are named per step (``file_upload``, ``batch_create``, ``batch_retrieve``,
        ``batches_list``, ``file_content``, ``batch_results``, ``file_delete``, ...; see
        :mod:`spark_llm_batch.emulator._calls`); refused calls count too.

        Example:
            >>> emu.calls()["openai"].get("batch_retrieve", 0)  # doctest: +SKIP
            3
        """
        return dict(self._control("GET", "/_emulator/calls"))

    def clear_calls(self) -> None:
        """Forget every call count."""
        self._control("DELETE", "/_emulator/calls")

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        # Over HTTP, like any client: handlers stay on the loop thread, no locking needed.
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self._url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = json.loads(exc.read() or b"{}").get("error", {}).get("message", str(exc))
            raise ValueError(detail) from None
