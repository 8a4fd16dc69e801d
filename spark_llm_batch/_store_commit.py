"""Commits that meet other writers: retry what Delta or the storage say is worth another try.

Several jobs may share a store. Delta's optimistic concurrency makes a commit that raced another
one fail (a concurrent append to what a MERGE read, a table created by two jobs at once), and object
stores answer ``503 Slow Down`` or time out now and then. Every store write goes through
:func:`committing`, which runs it again, with jittered backoff, while the failure is one of those,
and then reports a :class:`~spark_llm_batch.errors.StoreError` that says what happened. Each write
is safe to run again: a failed commit wrote nothing, and MERGEs and DELETEs are idempotent.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

from spark_llm_batch.errors import StoreError

__all__ = ["ATTEMPTS", "committing", "is_transient"]

T = TypeVar("T")
log = logging.getLogger("spark_llm_batch")

ATTEMPTS = 8
"""Tries of one store write before it is reported."""

_TRANSIENT = re.compile(
    r"DELTA_CONCURRENT|Concurrent(Append|DeleteRead|DeleteDelete|Transaction|Write)Exception"
    r"|PROTOCOL_CHANGED|ProtocolChangedException|METADATA_CHANGED|MetadataChangedException"
    r"|FileAlreadyExistsException|DELTA_TABLE_ALREADY_EXISTS|TABLE_OR_VIEW_ALREADY_EXISTS"
    r"|DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION"
    r"|SocketTimeout|Connection reset|Slow ?Down|\b503\b|Too many requests",
    re.IGNORECASE,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a lost commit race or a passing storage failure (worth another try).

    A table another job is creating at this moment looks, for a moment, like a folder that is
    not a Delta table: that too is a race.

    Example:
        >>> is_transient(RuntimeError("[DELTA_CONCURRENT_APPEND] Files were added ..."))
        True
        >>> is_transient(RuntimeError("[PATH_NOT_FOUND] Path does not exist"))
        False
    """
    return bool(_TRANSIENT.search(f"{type(exc).__name__}: {exc}"))


def committing(
    what: str,
    write: Callable[[], T],
    *,
    attempts: int = ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``write`` (one store commit), again while it fails transiently.

    Raises:
        StoreError: it still failed transiently after ``attempts`` tries (the message says what
            and why). Any other failure is raised as it is.
    """
    for attempt in range(1, attempts + 1):
        try:
            return write()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == attempts:
                raise StoreError(
                    f"{what} failed {attempts} times, the last time with: {_first_line(exc)}. "
                    "Other jobs on the same store kept winning the commit race, or the storage "
                    "kept refusing: run the job again, or give busy jobs stores of their own"
                ) from None
            delay = min(5.0, 0.2 * 2 ** (attempt - 1)) * (0.5 + random.random())
            log.info("%s: commit lost a race or storage hiccup (%s); again in %.1f s",
                     what, _first_line(exc)[:160], delay)  # fmt: skip
            sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
