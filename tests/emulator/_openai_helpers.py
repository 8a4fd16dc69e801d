"""Small helpers for the OpenAI emulator tests: submit a batch, wait for it, read its files."""

from __future__ import annotations

import io
import json
import time
from typing import Any, cast

import openai
from openai.types import Batch

from spark_llm_batch.emulator import Emulator

TERMINAL = ("completed", "failed", "expired", "cancelled")


def client_for(emu: Emulator, **kwargs: Any) -> openai.OpenAI:
    """An SDK client on ``emu`` (no retries unless asked)."""
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=emu.openai_base_url, api_key="sk-test-emulator", **kwargs)


def submit(
    client: openai.OpenAI, data: bytes, *, endpoint: str = "/v1/chat/completions", **kwargs: Any
) -> Batch:
    """Upload ``data`` and create a batch on it."""
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint=cast(Any, endpoint), completion_window="24h", **kwargs
    )


def wait(client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...] = TERMINAL) -> Batch:
    """Poll until the batch reaches one of ``statuses`` (wall-clock timeout 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}"
        time.sleep(0.01)


def lines(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """The lines of an output or error file, by custom_id (empty for a null file id)."""
    if not file_id:
        return {}
    text = client.files.content(file_id).text
    assert text.endswith("\n") or not text
    parsed = [json.loads(line) for line in text.splitlines()]
    by_id = {line["custom_id"]: line for line in parsed}
    assert len(by_id) == len(parsed), "a custom_id appears twice"
    return by_id
