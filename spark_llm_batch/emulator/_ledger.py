"""The billing ledger: one entry per billed request.

OpenAI bills completed work (also inside expired and cancelled batches); Anthropic bills only
``succeeded`` results. Surfaces call :meth:`Ledger.record` when, by their provider's rule, a request
is billed; each (provider, batch_id, custom_id) must be recorded once, which is what tests check.

API for surface modules::

    state.ledger.record(provider="anthropic", batch_id="msgbatch_...", custom_id="r1",
                        model="claude-...", input_tokens=12, output_tokens=40, time=t)

Real-time requests are recorded with ``batch_id=None`` and ``custom_id=None``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

__all__ = ["Ledger"]


class Ledger:
    """An append-only list of billed requests, optionally mirrored to a JSONL file."""

    def __init__(self, path: Path | None = None) -> None:
        """Create a ledger; with ``path``, load existing entries and append new ones there."""
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []
        self._path = path
        if path is not None and path.exists():
            with path.open(encoding="utf-8") as fh:
                self._entries = [json.loads(line) for line in fh if line.strip()]

    def record(
        self,
        *,
        provider: str,
        batch_id: str | None,
        custom_id: str | None,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        time: float,
    ) -> None:
        """Append one billed request (``time`` is simulated unix seconds when it was done)."""
        self.record_many(
            [
                {
                    "provider": provider,
                    "batch_id": batch_id,
                    "custom_id": custom_id,
                    "model": model,
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "time": time,
                }
            ]
        )

    def record_many(self, entries: list[dict[str, Any]]) -> None:
        """Append many entries at once (one file write: batches bill tens of thousands)."""
        if not entries:
            return
        with self._lock:
            self._entries.extend(entries)
            if self._path is not None:
                with self._path.open("a", encoding="utf-8") as fh:
                    fh.write("".join(json.dumps(e) + "\n" for e in entries))

    def entries(self) -> list[dict[str, Any]]:
        """Return a copy of every entry, in the order recorded."""
        with self._lock:
            return [dict(e) for e in self._entries]

    def clear(self) -> None:
        """Forget every entry (tests use it between scenarios)."""
        with self._lock:
            self._entries.clear()
            if self._path is not None:
                self._path.write_text("", encoding="utf-8")
