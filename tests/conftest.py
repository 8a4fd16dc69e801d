"""Shared fixtures: the emulator (session-scoped and fresh), SDK clients, a clean environment.

Fixtures:
    emulator: one emulator for the whole session (quick batches on a fast clock). Do not change
        its config; use ``fresh_emulator`` for that.
    fresh_emulator: a factory, ``fresh_emulator(**config_overrides) -> Emulator``, started and
        stopped around the test.
    openai_client / anthropic_client: SDK clients on the session emulator, no retries.
    make_openai_jsonl: ``make_openai_jsonl(prompts, *, model=..., url=...) -> bytes`` batch input.
    spark: the session Spark fixture (defined in ``tests/spark_fixtures.py``).
    connect_spark / connect_url: a Spark Connect session and its server's URL (defined in
        ``tests/connect_fixtures.py``); never in the same process as ``spark``: Connect tests run
        in their own process (``tests/test_connect.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from tests.connect_fixtures import connect_spark, connect_url  # noqa: F401  (re-exported)
from tests.spark_fixtures import spark  # noqa: F401  (re-exported: pytest finds fixtures here)

if TYPE_CHECKING:
    import anthropic
    import openai

    from spark_llm_batch.emulator import Emulator

# Fast enough that a default batch ends in ~10 ms of wall time, slow enough to be observed.
SESSION_EMULATOR_CONFIG: dict[str, Any] = {"processing_seconds": 1.0, "clock_speed": 100.0}


@pytest.fixture(autouse=True)
def _clean_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may see (or accidentally use) a real provider key or base URL."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "ANTHROPIC_")):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """One running emulator shared by the session."""
    from spark_llm_batch.emulator import Emulator

    with Emulator(**SESSION_EMULATOR_CONFIG) as emu:
        yield emu


@pytest.fixture
def fresh_emulator() -> Iterator[Callable[..., Emulator]]:
    """A factory of emulators with their own config, stopped when the test ends."""
    from spark_llm_batch.emulator import Emulator

    started: list[Emulator] = []

    def start(**overrides: Any) -> Emulator:
        emu = Emulator(**overrides).start()
        started.append(emu)
        return emu

    yield start
    for emu in started:
        emu.stop()


@pytest.fixture
def openai_client(emulator: Emulator) -> openai.OpenAI:
    """An OpenAI SDK client on the session emulator, without SDK retries."""
    import openai

    return openai.OpenAI(
        base_url=emulator.openai_base_url, api_key="sk-test-emulator", max_retries=0
    )


@pytest.fixture
def anthropic_client(emulator: Emulator) -> anthropic.Anthropic:
    """An Anthropic SDK client on the session emulator, without SDK retries."""
    import anthropic

    return anthropic.Anthropic(
        base_url=emulator.anthropic_base_url, api_key="sk-ant-test-emulator", max_retries=0
    )


@pytest.fixture
def make_openai_jsonl() -> Callable[..., bytes]:
    """Build an OpenAI batch input file: one chat request per prompt, ``custom_id`` ``r<i>``."""

    def make(
        prompts: Sequence[str],
        *,
        model: str = "gpt-4o-mini",
        url: str = "/v1/chat/completions",
    ) -> bytes:
        lines = []
        for i, prompt in enumerate(prompts):
            body: dict[str, Any] = {"model": model}
            if url == "/v1/embeddings":
                body["input"] = prompt
            else:
                body["messages"] = [{"role": "user", "content": prompt}]
            lines.append({"custom_id": f"r{i}", "method": "POST", "url": url, "body": body})
        return "".join(json.dumps(line) + "\n" for line in lines).encode()

    return make
