"""Anthropic Message Batch requests: the Messages API params of one prompt, and the create body
streamed from a chunk's lines.

Our parameters are the common (OpenAI-style) names; :func:`messages_params` maps them onto
Anthropic's and refuses those Anthropic has no equivalent for. A structured answer
(``response_format``) is a forced tool call (:func:`forced_tool`). Pure: no I/O, no SDK.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

from spark_llm_batch.config import BatchConfig
from spark_llm_batch.errors import ConfigError
from spark_llm_batch.providers.base import ChunkMissing, ChunkRef, Prompt, prompt_messages

__all__ = ["CreateBody", "forced_tool", "messages_params"]

# Body keys the provider sets itself: a params entry with these names would silently override them.
_BODY_KEYS = frozenset({"model", "messages", "system"})
# OpenAI parameters the Messages API has no equivalent for: refused before anything is sent.
_OPENAI_ONLY = {
    "frequency_penalty": "",
    "presence_penalty": "",
    "seed": "",
    "n": " (one answer per request)",
    "logprobs": "",
    "top_logprobs": "",
    "logit_bias": "",
    "parallel_tool_calls": "",
    "reasoning_effort": " (use thinking={...})",
    "user": ' (use metadata={"user_id": ...})',
    "stream": " (batches do not stream)",
    "stream_options": " (batches do not stream)",
    "response_format": " (pass response_format=... as an option, not in params)",
}
_HEAD, _TAIL = b'{"requests":[', b"]}"
_SEND_BLOCK = 1 << 20  # bytes read from the chunk per piece of the create body


def messages_params(config: BatchConfig, prompt: Prompt) -> dict[str, Any]:
    """What :meth:`AnthropicProvider.request_body
    <spark_llm_batch.providers.anthropic.AnthropicProvider.request_body>` returns (see there)."""
    params = dict(config.params)
    clash = _BODY_KEYS.intersection(params)
    if clash:
        raise ConfigError(
            f"params must not set {sorted(clash)}: pass the model as model=..., the system "
            "prompt as system=... and the prompt through the prompt column"
        )
    unsupported = sorted(_OPENAI_ONLY.keys() & params.keys())
    if unsupported:
        hints = "; ".join(f"{name}{_OPENAI_ONLY[name]}" for name in unsupported)
        raise ConfigError(f"Anthropic does not support the params {hints}: remove them")
    body: dict[str, Any] = {
        "model": config.model_name,
        "max_tokens": _max_tokens(params, config.anthropic.max_tokens),
        "messages": prompt_messages(prompt),
    }
    if config.system:
        body["system"] = config.system
    if "stop" in params:
        if "stop_sequences" in params:
            raise ConfigError("params set both stop and stop_sequences: keep one")
        params["stop_sequences"] = _stop_sequences(params.pop("stop"))
    body.update(params)
    if config.response_schema is not None:
        if "tools" in params or "tool_choice" in params:
            raise ConfigError("params must not set tools or tool_choice with response_format")
        body.update(forced_tool(config.response_schema))
    return body


class CreateBody:
    """The create body streamed from a chunk's lines: ``{"requests":[`` lines joined by ``,`` ``]}``.

    Iterating it reads ``content`` a block at a time; what went wrong while reading is kept in
    :attr:`error`, since the SDK reports any failure inside a body as a connection error.
    """

    def __init__(self, chunk: ChunkRef, content: BinaryIO) -> None:
        self.chunk, self.content = chunk, content
        # Each newline becomes a comma, the last one the closing "]}": one byte more, plus the head.
        self.size = len(_HEAD) + chunk.nbytes + len(_TAIL) - 1
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._pieces()
        except BaseException as exc:
            self.error = exc
            raise

    def _pieces(self) -> Iterator[bytes]:
        yield _HEAD
        held, lines = b"", 0  # the stream's last byte so far: the final newline must not be a comma
        while block := self.content.read(_SEND_BLOCK):
            lines += block.count(b"\n")
            yield (held + block[:-1]).replace(b"\n", b",")
            held = block[-1:]
        if held != b"\n":
            raise ChunkMissing(f"chunk {self.chunk.key} does not end with a newline")
        if lines != self.chunk.requests:
            raise ChunkMissing(
                f"chunk {self.chunk.key} streamed {lines} lines, {self.chunk.requests} were staged"
            )
        yield _TAIL


def forced_tool(schema: dict[str, Any]) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` that force the answer into ``schema`` (a tool's input).

    OpenAI's own shape (``{"type": "json_schema", "json_schema": {"name", "schema"}}``) is unwrapped;
    ``{"type": "json_object"}`` becomes any object.

    Raises:
        ConfigError: the schema does not describe an object (a tool's input is always one).

    Example:
        >>> forced_tool({"title": "City", "type": "object"})["tool_choice"]
        {'type': 'tool', 'name': 'City'}
    """
    name = schema.get("title")
    if schema.get("type") == "json_schema" and isinstance(schema.get("json_schema"), dict):
        name = schema["json_schema"].get("name")
        schema = schema["json_schema"].get("schema") or {}
    elif schema.get("type") == "json_object":
        schema = {"type": "object"}
    if schema.get("type") != "object":
        raise ConfigError(
            'response_format for Anthropic must be an object schema ({"type": "object", ...}): '
            "the answer is a tool's input, which is always an object"
        )
    text = name if isinstance(name, str) else "response"
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in text)[:64] or "response"
    tool = {
        "name": safe,
        "description": "Give the answer by calling this tool; its input is the answer.",
        "input_schema": schema,
    }
    return {"tools": [tool], "tool_choice": {"type": "tool", "name": safe}}


def _max_tokens(params: dict[str, Any], default: int) -> int:
    """Pop ``max_tokens`` / ``max_completion_tokens`` from ``params``; the value to send."""
    if "max_tokens" in params and "max_completion_tokens" in params:
        raise ConfigError("params set both max_tokens and max_completion_tokens: keep one")
    value = params.pop("max_tokens", params.pop("max_completion_tokens", default))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"params max_tokens must be a positive integer, got {value!r}")
    return value


def _stop_sequences(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list | tuple) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise ConfigError(f"params stop must be a string or a list of strings, got {stop!r}")
