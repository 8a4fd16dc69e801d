"""What the SDK-backed providers share: translating SDK errors into :mod:`spark_llm_batch.errors`,
and the one real-time call (:func:`post_json`).

The ``openai`` and ``anthropic`` SDKs are generated alike: both raise ``APIStatusError`` (with
``status_code``, ``message``, ``body`` and ``response``) for an HTTP error answer and
``APIConnectionError`` when the server could not be reached, so one translation serves both; a
provider adds only what tells a refused key or account apart. Nothing here imports an SDK until
an error is translated.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any

from spark_llm_batch._retry import parse_retry_after
from spark_llm_batch.errors import AuthenticationError, ProviderError

__all__ = ["post_json", "translated"]


@contextlib.contextmanager
def translated(
    sdk: str, provider: str, what: str, auth_hint: Callable[[Any], str | None]
) -> Iterator[None]:
    """Re-raise the errors of the SDK named ``sdk`` as ours (redacted, picklable, no SDK chain).

    An HTTP error answer becomes :class:`~spark_llm_batch.errors.AuthenticationError` when
    ``auth_hint(exc)`` gives a hint (what to fix: the key, its permissions, the account), else a
    :class:`~spark_llm_batch.errors.ProviderError` with its status, body and ``retry-after``; an
    unreachable server becomes a ``ProviderError`` without a status. ``provider`` and ``what``
    (what we were doing) start the message.

    Example:
        >>> with translated("openai", "OpenAI", "retrieving batch b1", lambda exc: None):
        ...     pass
    """
    module = importlib.import_module(sdk)
    try:
        yield
    except module.APIStatusError as exc:
        raise _status_error(exc, provider, what, auth_hint(exc)) from None
    except module.APIConnectionError as exc:
        raise ProviderError(f"{provider} unreachable while {what}: {exc.message}") from None


def _status_error(exc: Any, provider: str, what: str, hint: str | None) -> ProviderError:
    status = int(exc.status_code)
    message = f"{provider} answered {status} while {what}: {exc.message}"
    if hint is not None:
        return AuthenticationError(message + hint, status=status, body=exc.body)
    retry_after = parse_retry_after(dict(exc.response.headers))
    return ProviderError(message, status=status, body=exc.body, retry_after=retry_after)


def post_json(client: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` as JSON to ``path`` through an SDK ``client``; the decoded JSON answer.

    The body goes as it is (the request a batch line carries), not through the SDK's typed
    keyword arguments, which would refuse parameters they do not know. Errors are the SDK's:
    call it inside :func:`translated`.

    Raises:
        ProviderError: the answer is not a JSON object.
    """
    answer = client.post(path, body=body, cast_to=object)
    if not isinstance(answer, dict):
        raise ProviderError(f"the answer to POST {path} is not a JSON object")
    return answer
