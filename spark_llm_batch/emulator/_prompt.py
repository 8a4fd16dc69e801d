"""Request flattening, token estimates and limits shared by the emulator's answer generator.

:mod:`._answers` documents the rule these helpers implement; this module only holds the pieces.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ._schemagen import SchemaError, generate

__all__ = [
    "InvalidRequestError",
    "Turns",
    "answer_text",
    "budget",
    "content_text",
    "count_tokens",
    "cut_at_stop",
    "digest",
    "flatten",
    "json_text",
    "json_tokens",
    "model_of",
    "prompt_tokens",
    "structured",
    "token_limit",
    "truncate",
]

_ECHO_CHARS = 80
_IMAGE_TOKENS = 85

Turns = list[tuple[str, str]]


class InvalidRequestError(ValueError):
    """The request body has a shape no model would accept; the message says which field."""


def count_tokens(text: str) -> int:
    """Approximate a tokenizer: one token per 4 characters, rounded up.

    Example:
        >>> count_tokens("hello world")
        3
    """
    return (len(text) + 3) // 4


def digest(model: str, turns: Sequence[tuple[str, str]]) -> str:
    """Return the 12-hex-character digest of a flattened request (rule 2 above).

    Example:
        >>> len(digest("m", [("user", "hi")]))
        12
    """
    canonical = "\n".join([model, *(f"{role}:{text}" for role, text in turns)])
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def answer_text(key: str, turns: Turns) -> str:
    echo = ""
    for role, text in reversed(turns):
        if role == "user":
            echo = " ".join(text.split())[:_ECHO_CHARS]
            break
    return f"Emulated answer {key}: {echo}"


def model_of(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' is required and must be a non-empty string")
    return model


def flatten(system: Any, messages: Any) -> tuple[Turns, int]:
    """Flatten system + messages into turns; also count image parts for the token estimate."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty array")
    turns: Turns = []
    images = 0
    if system is not None:
        text, images = content_text(system, "system")
        turns.append(("system", text))
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise InvalidRequestError(f"messages.{i}: each message needs a string 'role'")
        text, n = content_text(message.get("content"), f"messages.{i}.content")
        turns.append((message["role"], text))
        images += n
    return turns, images


def content_text(content: Any, where: str) -> tuple[str, int]:
    if isinstance(content, str):
        return content, 0
    if content is None:
        return "", 0
    if not isinstance(content, list):
        raise InvalidRequestError(f"{where}: must be a string or an array of content blocks")
    texts: list[str] = []
    images = 0
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("text", "input_text"):
            texts.append(str(part.get("text", "")))
        elif kind == "tool_result":
            texts.append(content_text(part.get("content"), where)[0])
        elif kind in ("image", "image_url", "input_image", "document"):
            images += 1
        elif kind is None:
            raise InvalidRequestError(f"{where}: each content block needs a 'type'")
    return "\n".join(texts), images


def prompt_tokens(turns: Turns, images: int) -> int:
    return 3 + sum(4 + count_tokens(text) for _, text in turns) + images * _IMAGE_TOKENS


def json_tokens(value: Any) -> int:
    return count_tokens(json.dumps(value, separators=(",", ":"))) if value else 0


def token_limit(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequestError("'max_tokens' must be a positive integer")
    return value


def budget(tokens: int, limit: int | None) -> tuple[int, bool]:
    tokens = max(tokens, 1)
    return (limit, True) if limit is not None and tokens > limit else (tokens, False)


def truncate(text: str, limit: int | None) -> tuple[str, int, bool]:
    tokens, cut = budget(count_tokens(text), limit)
    return (text[: tokens * 4] if cut else text), tokens, cut


def cut_at_stop(text: str, stop: Any) -> tuple[str, str | None]:
    if not stop:
        return text, None
    for sequence in [stop] if isinstance(stop, str) else stop:
        at = text.find(sequence) if isinstance(sequence, str) and sequence else -1
        if at >= 0:
            return text[:at], sequence
    return text, None


def structured(schema: Mapping[str, Any], key: str) -> Any:
    try:
        return generate(schema, seed=key)
    except SchemaError as exc:
        raise InvalidRequestError(f"invalid JSON schema: {exc}") from exc


def json_text(schema: Mapping[str, Any], key: str) -> str:
    return json.dumps(structured(schema, key), separators=(",", ":"))
