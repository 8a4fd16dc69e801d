"""The call count: how many provider calls the emulator served, per provider and kind of route.

What a client costs the provider's control plane (uploads, creates, polls, lists, downloads),
which tests and benchmarks bound. Each call to a provider route is counted when it arrives, before
auth and the injected 429/500 draw (a refused call still reached the provider); ``/_emulator/*``
routes are not counted. Kept in memory since start (or the last :meth:`Calls.clear`), not in
``state_dir``.

API for the application (``_app.py``), called on the event-loop thread::

    state.calls.count("openai", "batch_retrieve")
    state.calls.snapshot()   # {"openai": {"batch_retrieve": 12, ...}, "anthropic": {...}}
    state.calls.clear()

A route's kind is its name in :data:`KINDS` (the same name for the same step of either
provider), else ``"<METHOD> <path pattern>"``.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["KINDS", "Calls", "kind_of"]

KINDS: dict[tuple[str, str], str] = {
    ("POST", "/v1/files"): "file_upload",
    ("GET", "/v1/files"): "files_list",
    ("GET", "/v1/files/{file_id}"): "file_retrieve",
    ("DELETE", "/v1/files/{file_id}"): "file_delete",
    ("GET", "/v1/files/{file_id}/content"): "file_content",
    ("POST", "/v1/batches"): "batch_create",
    ("GET", "/v1/batches"): "batches_list",
    ("GET", "/v1/batches/{batch_id}"): "batch_retrieve",
    ("POST", "/v1/batches/{batch_id}/cancel"): "batch_cancel",
    ("POST", "/v1/chat/completions"): "chat_completion",
    ("POST", "/v1/embeddings"): "embedding",
    ("POST", "/v1/messages"): "message",
    ("POST", "/v1/messages/count_tokens"): "count_tokens",
    ("POST", "/v1/messages/batches"): "batch_create",
    ("GET", "/v1/messages/batches"): "batches_list",
    ("GET", "/v1/messages/batches/{id}"): "batch_retrieve",
    ("POST", "/v1/messages/batches/{id}/cancel"): "batch_cancel",
    ("DELETE", "/v1/messages/batches/{id}"): "batch_delete",
    ("GET", "/v1/messages/batches/{id}/results"): "batch_results",
}
"""(method, route pattern) -> kind. OpenAI's results are files (``file_content``); Anthropic's
come from ``batch_results``."""


def kind_of(method: str, pattern: str) -> str:
    """The kind of a call to the route ``pattern`` with ``method``.

    Example:
        >>> kind_of("GET", "/v1/batches/{batch_id}"), kind_of("HEAD", "/v1/files")
        ('batch_retrieve', 'HEAD /v1/files')
    """
    return KINDS.get((method, pattern), f"{method} {pattern}")


class Calls:
    """Counts of served calls per (provider, kind)."""

    def __init__(self) -> None:
        """Start with no calls."""
        self._counts: Counter[tuple[str, str]] = Counter()

    def count(self, provider: str, kind: str) -> None:
        """Count one call."""
        self._counts[(provider, kind)] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Provider -> kind -> calls, both providers always present, kinds sorted."""
        out: dict[str, dict[str, int]] = {"anthropic": {}, "openai": {}}
        for (provider, kind), n in sorted(self._counts.items()):
            out.setdefault(provider, {})[kind] = n
        return out

    def clear(self) -> None:
        """Forget every count (tests and benchmarks use it between scenarios)."""
        self._counts.clear()
