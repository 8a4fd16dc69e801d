"""Fault injection: per-request markers and seeded control-plane failures.

Per-request faults are chosen by a marker anywhere in the request's text (a prompt, a system
message, an embedding input), so a test can target exact rows::

    [[emulator:rate_limited]]   429 rate limit (OpenAI error line / Anthropic errored rate_limit_error)
    [[emulator:server_error]]   500 server error (Anthropic: errored api_error)
    [[emulator:invalid_request]] 400 invalid_request_error
    [[emulator:refused]]        200, but a refusal (OpenAI finish_reason content_filter +
                                message.refusal; Anthropic stop_reason "refusal")
    [[emulator:timeout]]        OpenAI: error line request_timeout (real time: HTTP 408);
                                Anthropic: errored timeout_error
    [[emulator:malformed]]      200, but a structured answer that breaks its schema (OpenAI: the
                                JSON text cut short; Anthropic: a tool input without its fields)

API for surface modules::

    from spark_llm_batch.emulator._faults import request_fault, Fault
    fault = request_fault(body)   # Fault | None; scans every string in the body
    if fault is Fault.RATE_LIMITED: ...
    hit = state.faults.control_plane()  # ControlPlaneHit | None, seeded draw for 429/500
    fault = state.request_faults.pick(body, key=f"{batch_seq}/{custom_id}")  # marker or seeded draw

Besides markers, ``EmulatorConfig.request_fault_rates`` makes a fraction of batch requests fail
emulator-wide. The draw is a pure function of the seed, the batch's creation sequence number and the
custom_id: the same calls see the same failures, and a request retried in a new batch draws again
(as a real transient failure would clear).

The control-plane draw is made by the app middleware for every provider route; surfaces need not
call it.
"""

from __future__ import annotations

import enum
import hashlib
import random
import re
import threading
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MARKER_PATTERN",
    "ControlPlaneFaults",
    "ControlPlaneHit",
    "Fault",
    "RequestFaults",
    "marker",
    "request_fault",
]


class Fault(str, enum.Enum):
    """A per-request fault, selected by ``[[emulator:<value>]]`` in the request text."""

    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    INVALID_REQUEST = "invalid_request"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    MALFORMED = "malformed"


MARKER_PATTERN = re.compile(r"\[\[emulator:([a-z_]+)\]\]")


def marker(fault: Fault | str) -> str:
    """Return the marker text that triggers ``fault``.

    Example:
        >>> marker(Fault.REFUSED)
        '[[emulator:refused]]'
    """
    return f"[[emulator:{Fault(fault).value}]]"


def request_fault(body: Any) -> Fault | None:
    """Return the first fault marked anywhere in the strings of ``body``, or ``None``.

    Example:
        >>> request_fault({"messages": [{"content": "hi [[emulator:timeout]]"}]})
        <Fault.TIMEOUT: 'timeout'>
    """
    for text in _strings(body):
        # A cheap substring test first: almost no request carries a marker.
        if "[[emulator:" not in text:
            continue
        for match in MARKER_PATTERN.finditer(text):
            try:
                return Fault(match.group(1))
            except ValueError:
                continue
    return None


@dataclass(frozen=True)
class RequestFaults:
    """Per-request faults in batches: a marker in the request, else a seeded draw at fixed rates.

    Attributes:
        rates: ``(fault, fraction)`` pairs; fractions add up to at most 1.
        seed: the emulator's seed.
    """

    rates: tuple[tuple[Fault, float], ...] = ()
    seed: int = 0

    def pick(self, body: Any, *, key: str) -> Fault | None:
        """The fault for the request ``body`` known as ``key`` (batch id and custom_id), if any.

        Example:
            >>> RequestFaults(((Fault.SERVER_ERROR, 1.0),)).pick({"x": "hi"}, key="b/1")
            <Fault.SERVER_ERROR: 'server_error'>
        """
        marked = request_fault(body)
        if marked is not None or not self.rates:
            return marked
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        bound = 0.0
        for fault, rate in self.rates:
            bound += rate
            if draw < bound:
                return fault
        return None


def _strings(value: Any) -> list[str]:
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


@dataclass(frozen=True)
class ControlPlaneHit:
    """An injected control-plane failure: the HTTP status and, for 429, a retry-after."""

    status: int
    retry_after: float | None = None


class ControlPlaneFaults:
    """Seeded draws deciding whether an API call fails with 429 or 500.

    The generator is seeded from the config, so the same sequence of calls sees the same failures.
    """

    def __init__(self, *, seed: int, rate_429: float, rate_500: float, retry_after: float) -> None:
        """Create the generator (see :class:`EmulatorConfig` for the meaning of each value)."""
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.rate_429 = rate_429
        self.rate_500 = rate_500
        self.retry_after = retry_after

    def control_plane(self) -> ControlPlaneHit | None:
        """Draw once: a hit to return instead of serving the call, or ``None`` to serve it."""
        if self.rate_429 <= 0 and self.rate_500 <= 0:
            return None
        with self._lock:
            draw = self._rng.random()
        if draw < self.rate_429:
            return ControlPlaneHit(429, self.retry_after)
        if draw < self.rate_429 + self.rate_500:
            return ControlPlaneHit(500)
        return None
