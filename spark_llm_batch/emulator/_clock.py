"""The emulator's simulated clock.

Batch lifecycles are computed lazily from this clock: nothing ticks in the background, each
request asks "what time is it?" and derives a batch's status from its recorded timestamps. Tests
speed the clock up (``clock_speed``) or jump it forward (:meth:`SimClock.advance`) instead of
sleeping.

API for surface modules (``_openai.py``, ``_anthropic.py``)::

    now = state.clock.now()        # float, simulated unix seconds
    state.clock.advance(3600.0)    # jump forward (used by tests and /_emulator/clock)
"""

from __future__ import annotations

import threading
import time

__all__ = ["SimClock"]


class SimClock:
    """Simulated unix time: wall time scaled by ``speed`` plus manual jumps.

    Example:
        >>> clock = SimClock(speed=10.0)
        >>> before = clock.now()
        >>> clock.advance(60.0)
        >>> clock.now() - before >= 60.0
        True
    """

    def __init__(self, *, speed: float = 1.0, start: float | None = None) -> None:
        """Create a clock.

        Args:
            speed: simulated seconds per wall-clock second (must be > 0).
            start: simulated time now; defaults to the wall clock. A restarted emulator passes
                its last persisted time so simulated time never runs backwards.
        """
        self._lock = threading.Lock()
        self._anchor_sim = time.time() if start is None else max(start, time.time())
        self._anchor_mono = time.monotonic()
        self._speed = speed

    def now(self) -> float:
        """Return the simulated time in unix seconds."""
        with self._lock:
            return self._anchor_sim + (time.monotonic() - self._anchor_mono) * self._speed

    def advance(self, seconds: float) -> float:
        """Jump the clock forward by ``seconds`` and return the new simulated time."""
        if seconds < 0:
            raise ValueError("the emulator clock cannot run backwards")
        with self._lock:
            self._anchor_sim += seconds
        return self.now()

    @property
    def speed(self) -> float:
        """Simulated seconds per wall-clock second."""
        return self._speed

    def set_speed(self, speed: float) -> None:
        """Change the speed from now on, keeping the current simulated time continuous."""
        if speed <= 0:
            raise ValueError("clock speed must be > 0")
        with self._lock:
            mono = time.monotonic()
            self._anchor_sim += (mono - self._anchor_mono) * self._speed
            self._anchor_mono = mono
            self._speed = speed
