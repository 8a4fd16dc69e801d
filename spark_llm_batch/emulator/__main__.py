"""``python -m spark_llm_batch.emulator``: serve the emulator until killed.

It prints the base URLs it serves, one ``NAME=URL`` per line, so scripts can read them::

    OPENAI_BASE_URL=http://127.0.0.1:54321/v1
    ANTHROPIC_BASE_URL=http://127.0.0.1:54321
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Sequence
from pathlib import Path

from spark_llm_batch.emulator._server import start_site
from spark_llm_batch.emulator._state import EmulatorConfig, EmulatorState

__all__ = ["main"]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spark_llm_batch.emulator",
        description="Offline stand-in for the OpenAI and Anthropic batch APIs.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="keep state here across restarts"
    )
    parser.add_argument("--processing-seconds", type=float, default=None, help="time a batch runs")
    parser.add_argument(
        "--clock-speed", type=float, default=None, help="simulated seconds per second"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for injected faults")
    parser.add_argument(
        "--config-json", default=None, help="further EmulatorConfig fields as a JSON object"
    )
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> EmulatorConfig:
    import json

    fields = json.loads(args.config_json) if args.config_json else {}
    for name in ("state_dir", "processing_seconds", "clock_speed", "seed"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    return EmulatorConfig.model_validate(fields)


async def _serve(config: EmulatorConfig, host: str, port: int) -> None:
    state = EmulatorState(config)
    runner, url = await start_site(state, host, port)
    print(f"OPENAI_BASE_URL={url}/v1", flush=True)
    print(f"ANTHROPIC_BASE_URL={url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        state.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the emulator in the foreground until SIGINT or SIGTERM.

    Example:
        $ python -m spark_llm_batch.emulator --host 127.0.0.1 --port 0
    """
    args = _parse(argv)
    asyncio.run(_serve(_config(args), args.host, args.port))


if __name__ == "__main__":
    main()
