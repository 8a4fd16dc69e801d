"""A small bounded retry loop for control-plane calls (upload, create, list, retrieve, cancel).

It is the one retry layer of provider calls: the SDK clients are built with ``max_retries=0``, so
tries never multiply (5 SDK tries under 4 of ours would be 20 calls). It keeps a provider that is
overloaded for a minute from failing a job that has hours of batches in flight, and it retries
:class:`~spark_llm_batch.errors.ProviderError` with status 408, 409, 429, 5xx or no status
(connection failures), honours the provider's ``retry-after`` (capped), and never retries
:class:`~spark_llm_batch.errors.AuthenticationError`.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from spark_llm_batch.errors import AuthenticationError, ProviderError

__all__ = ["RetrySettings", "call_with_retry", "is_transient", "parse_retry_after"]

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrySettings:
    """Bounds of the control-plane retry loop.

    Attributes:
        attempts: total tries of one call (1 = no retry of ours).
        base_seconds: first backoff when the provider gave no ``retry-after``; doubles per try.
        max_seconds: longest backoff we choose ourselves.
        max_retry_after: longest ``retry-after`` we honour (a longer one is capped to this).
    """

    attempts: int = 4
    base_seconds: float = 1.0
    max_seconds: float = 30.0
    max_retry_after: float = 120.0

    def delay(self, try_index: int, retry_after: float | None) -> float:
        """Seconds to wait before try ``try_index + 1`` (0-based ``try_index`` of the failed try).

        Example:
            >>> RetrySettings(base_seconds=1.0).delay(0, retry_after=3.0)
            3.0
        """
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_retry_after)
        backoff = min(self.base_seconds * (2**try_index), self.max_seconds)
        # Full jitter keeps many drivers from hammering the provider in step.
        return backoff * (0.5 + random.random() / 2)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a provider failure worth retrying.

    Example:
        >>> is_transient(ProviderError("busy", status=503))
        True
        >>> is_transient(ProviderError("bad", status=400))
        False
    """
    if not isinstance(exc, ProviderError) or isinstance(exc, AuthenticationError):
        return False
    return exc.status is None or exc.status in (408, 409, 429) or exc.status >= 500


def call_with_retry(
    fn: Callable[[], T],
    *,
    settings: RetrySettings,
    what: str,
    before_retry: Callable[[], T | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it succeeds, retrying transient provider errors within ``settings``.

    Args:
        fn: the call; it raises :class:`ProviderError` on failure.
        settings: attempts and backoff bounds.
        what: a short description for log lines ("creating batch for chunk ...").
        before_retry: called after the wait and before each retry; a non-``None`` result is
            returned instead of retrying. ``create`` uses it to find a batch that a failed call
            may have created after all, so a retry never creates a second one.
        sleep: injectable for tests.

    Raises:
        ProviderError: the last error, when it is not transient or tries are exhausted.

    Example:
        >>> call_with_retry(lambda: 42, settings=RetrySettings(), what="answering")
        42
    """
    for try_index in range(max(settings.attempts, 1)):
        try:
            return fn()
        except ProviderError as exc:
            if not is_transient(exc) or try_index + 1 >= settings.attempts:
                raise
            wait = settings.delay(try_index, exc.retry_after)
            log.warning(
                "%s failed (status %s), retry %d/%d in %.2fs: %s",
                what,
                exc.status,
                try_index + 1,
                settings.attempts - 1,
                wait,
                exc.message,
            )
            sleep(wait)
            if before_retry is not None:
                found = before_retry()
                if found is not None:
                    return found
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), if present.

    Example:
        >>> parse_retry_after({"retry-after": "2"})
        2.0
        >>> parse_retry_after({"retry-after-ms": "250"})
        0.25
    """
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = lowered.get(name)
        if raw is None:
            continue
        try:
            return max(float(raw) / divisor, 0.0)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw:
        parsed = email.utils.parsedate_tz(raw)
        if parsed is not None:
            return max(email.utils.mktime_tz(parsed) - time.time(), 0.0)
    return None
