"""An offline stand-in for the OpenAI Batch/Files and Anthropic Message Batches APIs.

A real HTTP server (aiohttp) that the official ``openai`` and ``anthropic`` SDKs talk to through
``base_url``: same endpoints, objects, lifecycles, limits and failure modes, on a simulated clock,
with deterministic answers, fault injection and a billing ledger. Nothing here is imported by
``import spark_llm_batch``.

Example:
    >>> import openai
    >>> from spark_llm_batch.emulator import Emulator
    >>> with Emulator(processing_seconds=0) as emu:  # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=emu.openai_base_url, api_key="sk-test-emulator")
    ...     reply = client.chat.completions.create(model="gpt-4o-mini", messages=[...])

From a shell: ``python -m spark_llm_batch.emulator --host 127.0.0.1 --port 0``.
"""

from __future__ import annotations

from spark_llm_batch.emulator._faults import Fault, marker
from spark_llm_batch.emulator._server import Emulator
from spark_llm_batch.emulator._state import EmulatorConfig

__all__ = ["Emulator", "EmulatorConfig", "Fault", "marker"]
