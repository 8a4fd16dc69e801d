"""What the end-to-end pipeline tests share (classic and Spark Connect alike)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from spark_llm_batch.config import BatchLimits, PollPolicy

if TYPE_CHECKING:
    from spark_llm_batch.emulator import Emulator

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}
"""The model each provider's pipeline tests call."""
MODEL = MODELS["openai"]
OPENAI_FIRST = ["openai", pytest.param("anthropic", marks=pytest.mark.slow)]
"""``parametrize("provider", OPENAI_FIRST)``: an end-to-end test whose Anthropic run repeats what
other default tests already pin for Anthropic (its inline create, results and rerun); the
Anthropic run is ``slow`` so that the default suite stays within CI's time."""
SYSTEM = "Answer briefly."


def base_url(emu: Emulator, provider: str) -> str:
    """The emulator's base URL for ``provider``'s SDK."""
    return emu.openai_base_url if provider == "openai" else emu.anthropic_base_url


def pipeline_options(
    emu: Emulator,
    store: Path,
    *,
    max_requests: int,
    api_key: str = "sk-test-emulator",
    provider: str = "openai",
    **extra: Any,
) -> dict[str, Any]:
    """``llm_batch`` options for ``provider`` on ``emu``: small batches and a quick poll, then
    ``extra``."""
    return {
        "model": MODELS[provider],
        "store": str(store),
        "system": SYSTEM,
        "params": {"temperature": 0},
        "limits": BatchLimits(max_requests=max_requests),
        "poll": PollPolicy(initial_seconds=0.05, max_seconds=0.2, progress_seconds=1.0),
        "provider_settings": {"api_key": api_key, "base_url": base_url(emu, provider)},
        **extra,
    }


def billed_counts(emu: Emulator) -> Counter[str]:
    """How many times the emulator billed each custom_id in a batch."""
    return Counter(entry["custom_id"] for entry in emu.ledger() if entry["batch_id"])
