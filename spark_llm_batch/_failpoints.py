"""Crash points for the crash-and-resume tests.

A failpoint is a named place in the driver where a test can make the process die as abruptly as a
killed driver does (SIGKILL: no ``finally``, no ``atexit``, no flush). Set the environment variable
``SPARK_LLM_BATCH_FAILPOINT`` to one name below before starting the job; the next run, without the
variable, must recover completely and pay for nothing twice.

=================  =================================================================================
name               where the driver dies
=================  =================================================================================
``after_stage``    in :meth:`Store.record_staged`, once the staged batches (members, requests and
                   ``staged`` rows) are committed; nothing has been uploaded.
``after_upload``   in the orchestrator, once chunks are uploaded but before the commit that
                   records their file ids (orphan uploads: never billed, re-uploaded on restart).
``after_create``   right after ``provider.create`` returned, before ``submitted`` is committed: the
                   batch exists at the provider but the store only says ``creating``; the restart
                   must find it by key, never create it again.
``while_polling``  after a poll round retrieved the provider's state, before any commit of it.
``during_collect`` after the results of ended batches were merged into the store, before retries
                   are staged and ``collected`` is committed (the restart collects again: the merge
                   is idempotent).
=================  =================================================================================

Failpoints run on the driver only: executors never call :func:`hit`.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV_VAR", "FAILPOINTS", "hit"]

ENV_VAR = "SPARK_LLM_BATCH_FAILPOINT"

FAILPOINTS = frozenset(
    {"after_stage", "after_upload", "after_create", "while_polling", "during_collect"}
)
"""Every failpoint name the driver code passes to :func:`hit`."""


def hit(name: str) -> None:
    """Kill this process with SIGKILL when ``SPARK_LLM_BATCH_FAILPOINT`` equals ``name``.

    Example:
        >>> hit("after_create")  # a no-op unless the environment variable names it
    """
    if name not in FAILPOINTS:  # a typo here would make a crash test silently pass
        raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(sorted(FAILPOINTS))}")
    if os.environ.get(ENV_VAR) == name:
        os.kill(os.getpid(), signal.SIGKILL)
