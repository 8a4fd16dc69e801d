"""Every error spark-llm-batch raises.

The tree::

    SparkLLMBatchError                  root of everything raised here
    ├── ConfigError (also ValueError)   a user mistake: fix the call, the conf or the data
    ├── ProviderError                   a provider answered with an error (status, body, retry_after)
    │   └── AuthenticationError         401/403, billing: fatal for the job, never retried
    ├── BatchFailedError                a provider batch ended ``failed`` as a whole (validation, queue)
    └── StoreError                      the Delta store is unreadable, corrupt or in an ambiguous state

Per-row failures (a refused prompt, an expired request) are data, not exceptions: they land in the
result struct with a failure class and message. Only what makes the whole job unsafe raises.

Errors cross executor boundaries, so they pickle; and their text never carries a credential: every
message passes through :func:`redact` before it is stored.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "AuthenticationError",
    "BatchFailedError",
    "ConfigError",
    "ProviderError",
    "SparkLLMBatchError",
    "StoreError",
    "redact",
]

# OpenAI keys start with "sk-", Anthropic keys with "sk-ant-"; bearer headers may carry either.
_SECRET_PATTERNS = (
    re.compile(r"sk-[A-Za-z0-9_\-]{6,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9_\-\.]{6,}"),
    re.compile(r"(?i)(x-api-key[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9_\-\.]{6,}"),
    re.compile(r"(?i)(api[_-]?key[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9_\-\.]{6,}"),
)


def redact(text: str) -> str:
    """Return ``text`` with anything that looks like an API key replaced by ``***``.

    Example:
        >>> redact("401 for key sk-abcdef123456")
        '401 for key ***'
    """
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + "***", text)
        else:
            text = pattern.sub("***", text)
    return text


class SparkLLMBatchError(Exception):
    """The root of every error raised by spark-llm-batch."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))

    @property
    def message(self) -> str:
        """The redacted message."""
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.message,))


class ConfigError(SparkLLMBatchError, ValueError):
    """A user mistake, raised before anything is spent: the message says what to fix."""


class StoreError(SparkLLMBatchError):
    """The store cannot be read or written, or holds a state that cannot be trusted."""


class BatchFailedError(SparkLLMBatchError):
    """A provider batch failed as a whole (for example, its input file did not validate)."""

    def __init__(
        self, message: str, *, batch_id: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.batch_id = batch_id
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (self.__class__, self.message, {"batch_id": self.batch_id, "code": self.code}),
        )


class ProviderError(SparkLLMBatchError):
    """A provider call failed.

    Attributes:
        status: the HTTP status, or ``None`` for a connection failure.
        body: the decoded error body (redacted), if any.
        retry_after: seconds the provider asked us to wait, if it said.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = _redact_value(body)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        state = {"status": self.status, "body": self.body, "retry_after": self.retry_after}
        return (_rebuild, (self.__class__, self.message, state))


class AuthenticationError(ProviderError):
    """The provider refused our credentials or account (401, 403, billing): fatal, never retried."""


def _rebuild(
    cls: type[SparkLLMBatchError], message: str, state: dict[str, Any]
) -> SparkLLMBatchError:
    return cls(message, **state)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v) for v in value]
    return value
