"""Deterministic answers: the emulator's "model", a pure function of the request.

The rule, so a test can compute the answer a prompt gets (or call :func:`expected_text`):

1. **Turns.** The request flattens to ``(role, text)`` turns: Anthropic's ``system`` first (as
   role ``"system"``), then every message in order with its own role. A message's text is its
   string content, or the ``text`` of its text parts (and of ``tool_result`` contents) joined by
   ``"\\n"``; images and other parts add no text.
2. **Digest.** ``sha256("\\n".join([model] + [f"{role}:{text}" for role, text in turns]))``,
   first 12 hex characters.
3. **Echo.** The text of the last ``user`` turn, whitespace runs collapsed to one space, stripped,
   cut to 80 characters.
4. **Answer text.** ``f"Emulated answer {digest}: {echo}"``.
5. **Structured output** (OpenAI ``response_format`` json_schema or a forced function tool;
   Anthropic a forced tool or ``output_config.format``/``output_format`` json_schema): the JSON
   value ``_schemagen.generate(schema, seed=digest)``, as compact JSON text where text is
   returned. OpenAI ``{"type": "json_object"}`` gives ``{"answer": <answer text>}``.
6. **Tokens.** ``count_tokens(text) = ceil(len(text) / 4)``. Input tokens are
   ``3 + sum(4 + count_tokens(text) for each turn) + 85 per image`` plus ``count_tokens`` of the
   compact JSON of the tools and of the output schema when given. Output tokens are
   ``max(1, count_tokens(answer))``.
7. **Limits.** When the output tokens exceed ``max_tokens`` (OpenAI: ``max_completion_tokens``,
   else ``max_tokens``), the text is cut to ``4 * max_tokens`` characters, output tokens become
   ``max_tokens`` and the finish is ``"length"`` / ``"max_tokens"``. A forced tool's input is kept
   whole (it must stay a JSON object) but the stop reason still says ``max_tokens``. A stop
   sequence found in the text cuts it there (``stop_reason: "stop_sequence"`` on Anthropic).

Refusals (the ``refused`` fault) come from :func:`openai_refusal_response` and
:func:`anthropic_refusal_response`. Invalid shapes raise :class:`InvalidRequestError`, whose
message is fit for an ``invalid_request_error`` body.

Example:
    >>> body = {"model": "m", "messages": [{"role": "user", "content": "Hi there"}]}
    >>> openai_chat_response(body)["choices"][0]["message"]["content"] == expected_text(
    ...     "Hi there", model="m")
    True
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ._faults import Fault, request_fault
from ._prompt import (
    InvalidRequestError,
    Turns,
    answer_text,
    budget,
    count_tokens,
    cut_at_stop,
    digest,
    flatten,
    json_text,
    json_tokens,
    model_of,
    prompt_tokens,
    structured,
    token_limit,
    truncate,
)
from ._schemagen import generate

__all__ = [
    "REFUSAL_TEXT",
    "InvalidRequestError",
    "anthropic_message_response",
    "anthropic_refusal_response",
    "count_tokens",
    "digest",
    "expected_json",
    "expected_text",
    "openai_chat_response",
    "openai_embedding_response",
    "openai_refusal_response",
]

REFUSAL_TEXT = "I'm sorry, but I can't help with that request."
# A fixed `created` keeps answers pure; surfaces pass their simulated clock's time instead.
_CREATED = 1_735_689_600
_EMBEDDING_DIMS = {"text-embedding-3-large": 3072}
_DEFAULT_EMBEDDING_DIMS = 1536


def expected_text(
    prompt: str | Sequence[tuple[str, str]], *, model: str, system: str | None = None
) -> str:
    """Return the plain answer for a request of one user turn, or of the ``(role, content)``
    turns given (optionally after a system prompt).

    Example:
        >>> expected_text("What is 2+2?", model="m").startswith("Emulated answer ")
        True
        >>> expected_text([("user", "What is 2+2?")], model="m") == expected_text("What is 2+2?", model="m")
        True
    """
    turns: Turns = [("system", system)] if system is not None else []
    turns += [("user", prompt)] if isinstance(prompt, str) else list(prompt)
    return answer_text(digest(model, turns), turns)


def expected_json(
    schema: Mapping[str, Any], prompt: str, *, model: str, system: str | None = None
) -> Any:
    """Return the structured value a single-user-turn request with ``schema`` gets.

    Example:
        >>> expected_json({"type": "boolean"}, "Is it?", model="m") in (True, False)
        True
    """
    turns: Turns = [("system", system)] if system is not None else []
    turns.append(("user", prompt))
    return generate(schema, seed=digest(model, turns))


def openai_chat_response(body: Mapping[str, Any], *, created: int | None = None) -> dict[str, Any]:
    """Answer a Chat Completions request with a full ``chat.completion`` object.

    Args:
        body: the request body (``model``, ``messages``, optional ``max_completion_tokens``/
            ``max_tokens``, ``response_format``, ``tools``/``tool_choice``, ``stop``, ``n``).
        created: unix seconds for ``created``; defaults to a fixed time.

    Raises:
        InvalidRequestError: when ``model`` or ``messages`` is malformed.

    Example:
        >>> body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        >>> openai_chat_response(body)["choices"][0]["finish_reason"]
        'stop'
    """
    model = model_of(body)
    turns, images = flatten(None, body.get("messages"))
    key = digest(model, turns)
    limit = token_limit(body.get("max_completion_tokens", body.get("max_tokens")))
    tool = _openai_forced_tool(body)
    schema = tool[1] if tool else _openai_schema(body.get("response_format"))
    overhead = json_tokens(body.get("tools")) + json_tokens(schema)
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    broken = request_fault(body) is Fault.MALFORMED  # a structured answer cut short
    if tool is not None:
        arguments = json.dumps(structured(schema or {}, key), separators=(",", ":"))
        arguments = arguments[:-1] if broken else arguments
        out_tokens, cut = budget(count_tokens(arguments), limit)
        call = {"name": tool[0], "arguments": arguments}
        message["tool_calls"] = [{"id": f"call_{key}", "type": "function", "function": call}]
        # A named tool_choice ends "stop"; "required" ends "tool_calls", as the service does.
        finish = "length" if cut else tool[2]
    else:
        text = _openai_text(body.get("response_format"), schema, key, turns)
        text = text[:-1] if broken and schema is not None else text
        text, _ = cut_at_stop(text, body.get("stop"))
        text, out_tokens, cut = truncate(text, limit)
        message["content"] = text
        finish = "length" if cut else "stop"
    in_tokens = prompt_tokens(turns, images) + overhead
    return _openai_completion(body, model, key, message, finish, in_tokens, out_tokens, created)


def openai_refusal_response(
    body: Mapping[str, Any], *, created: int | None = None
) -> dict[str, Any]:
    """Answer with a refusal: ``message.refusal`` set, no content, ``finish_reason`` content_filter.

    Example:
        >>> body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        >>> openai_refusal_response(body)["choices"][0]["message"]["refusal"] == REFUSAL_TEXT
        True
    """
    model = model_of(body)
    turns, images = flatten(None, body.get("messages"))
    key = digest(model, turns)
    message = {"role": "assistant", "content": None, "refusal": REFUSAL_TEXT}
    out_tokens = count_tokens(REFUSAL_TEXT)
    in_tokens = prompt_tokens(turns, images)
    return _openai_completion(
        body, model, key, message, "content_filter", in_tokens, out_tokens, created
    )


def openai_embedding_response(body: Mapping[str, Any]) -> dict[str, Any]:
    """Answer an Embeddings request with unit vectors derived from each input's hash.

    Honours ``dimensions`` and ``encoding_format`` (``"base64"`` is little-endian float32, what
    the SDK sends by default).

    Example:
        >>> body = {"model": "m", "input": "hi", "encoding_format": "float", "dimensions": 4}
        >>> len(openai_embedding_response(body)["data"][0]["embedding"])
        4
    """
    import numpy as np  # lazy: only embedding requests need it

    model = model_of(body)
    inputs = _embedding_inputs(body.get("input"))
    dims = body.get("dimensions") or _EMBEDDING_DIMS.get(model, _DEFAULT_EMBEDDING_DIMS)
    if not isinstance(dims, int) or dims < 1:
        raise InvalidRequestError("'dimensions' must be a positive integer")
    as_base64 = body.get("encoding_format") == "base64"
    data, tokens = [], 0
    for index, (text, n_tokens) in enumerate(inputs):
        raw = hashlib.shake_256(f"{model}\n{text}".encode()).digest(dims * 2)
        vector = np.frombuffer(raw, dtype="<i2").astype("<f4")
        vector /= max(float(np.linalg.norm(vector)), 1e-6)
        encoded: Any = base64.b64encode(vector.tobytes()).decode() if as_base64 else vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens += n_tokens
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def anthropic_message_response(params: Mapping[str, Any]) -> dict[str, Any]:
    """Answer a Messages request with a full ``message`` object.

    Args:
        params: Messages API params (``model``, ``max_tokens``, ``messages``, optional
            ``system``, ``tools``/``tool_choice``, ``output_config``, ``stop_sequences``).

    Raises:
        InvalidRequestError: when ``model``, ``messages`` or ``system`` is malformed.

    Example:
        >>> params = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "x"}]}
        >>> anthropic_message_response(params)["stop_reason"]
        'end_turn'
    """
    model = model_of(params)
    turns, images = flatten(params.get("system"), params.get("messages"))
    key = digest(model, turns)
    limit = token_limit(params.get("max_tokens"))
    tool = _anthropic_forced_tool(params)
    schema = tool[1] if tool else _anthropic_schema(params)
    overhead = json_tokens(params.get("tools")) + json_tokens(schema)
    stop_sequence = None
    broken = request_fault(params) is Fault.MALFORMED  # a structured answer that breaks its schema
    if tool is not None:
        value = {} if broken else structured(tool[1], key)
        out_tokens, cut = budget(count_tokens(json.dumps(value, separators=(",", ":"))), limit)
        block = {"type": "tool_use", "id": f"toolu_{key}", "name": tool[0], "input": value}
        content, stop = [block], "max_tokens" if cut else "tool_use"
    else:
        text = (
            answer_text(key, turns)
            if schema is None
            else json_text(schema, key)[: -1 if broken else None]
        )
        text, stop_sequence = cut_at_stop(text, params.get("stop_sequences"))
        text, out_tokens, cut = truncate(text, limit)
        content = [{"type": "text", "text": text}]
        stop = "max_tokens" if cut else ("stop_sequence" if stop_sequence else "end_turn")
    message = _anthropic_message(model, key, content, stop, prompt_tokens(turns, images) + overhead)
    message["stop_sequence"] = None if stop != "stop_sequence" else stop_sequence
    message["usage"]["output_tokens"] = out_tokens
    return message


def anthropic_refusal_response(params: Mapping[str, Any]) -> dict[str, Any]:
    """Answer with a refusal: ``stop_reason: "refusal"`` and a short refusal text block.

    Example:
        >>> params = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]}
        >>> anthropic_refusal_response(params)["stop_reason"]
        'refusal'
    """
    model = model_of(params)
    turns, images = flatten(params.get("system"), params.get("messages"))
    content = [{"type": "text", "text": REFUSAL_TEXT}]
    key = digest(model, turns)
    message = _anthropic_message(model, key, content, "refusal", prompt_tokens(turns, images))
    message["stop_details"] = {"type": "refusal", "category": None, "explanation": None}
    message["usage"]["output_tokens"] = count_tokens(REFUSAL_TEXT)
    return message


def _openai_schema(response_format: Any) -> Mapping[str, Any] | None:
    if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if not isinstance(schema, Mapping):
        raise InvalidRequestError("response_format.json_schema.schema must be an object")
    return schema


def _openai_text(response_format: Any, schema: Any, key: str, turns: Turns) -> str:
    if schema is not None:
        return json_text(schema, key)
    text = answer_text(key, turns)
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_object":
        return json.dumps({"answer": text}, separators=(",", ":"))
    return text


def _openai_forced_tool(body: Mapping[str, Any]) -> tuple[str, Mapping[str, Any], str] | None:
    """Return (name, parameters schema, finish_reason) when tool_choice forces a function."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if choice in (None, "auto", "none"):
        return None
    if not isinstance(tools, list) or not tools:
        raise InvalidRequestError("tool_choice is only allowed when tools are specified")
    functions: list[Mapping[str, Any]] = [
        t["function"]
        for t in tools
        if isinstance(t, Mapping)
        and isinstance(t.get("function"), Mapping)
        and isinstance(t["function"].get("name"), str)
    ]
    if isinstance(choice, Mapping):
        wanted = (choice.get("function") or {}).get("name")
        matches = [f for f in functions if f["name"] == wanted]
        if not matches:
            raise InvalidRequestError(f"tool_choice names an unknown function {wanted!r}")
        return matches[0]["name"], matches[0].get("parameters") or {}, "stop"
    if choice == "required" and functions:
        return functions[0]["name"], functions[0].get("parameters") or {}, "tool_calls"
    return None


def _openai_completion(
    body: Mapping[str, Any],
    model: str,
    key: str,
    message: dict[str, Any],
    finish: str,
    prompt_tokens: int,
    out_tokens: int,
    created: int | None,
) -> dict[str, Any]:
    n = body.get("n") or 1
    choices = [
        {"index": i, "message": dict(message), "logprobs": None, "finish_reason": finish}
        for i in range(n if isinstance(n, int) and n > 0 else 1)
    ]
    completion_tokens = out_tokens * len(choices)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    return {
        "id": f"chatcmpl-{key}",
        "object": "chat.completion",
        "created": _CREATED if created is None else created,
        "model": model,
        "choices": choices,
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_emulator",
    }


def _embedding_inputs(value: Any) -> list[tuple[str, int]]:
    """Normalise ``input`` (string, strings, token ids, lists of token ids) to (text, tokens)."""
    if isinstance(value, str):
        return [(value, count_tokens(value))]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return [(" ".join(map(str, value)), len(value))]
        out: list[tuple[str, int]] = []
        for item in value:
            if isinstance(item, str):
                out.append((item, count_tokens(item)))
            elif isinstance(item, list) and all(isinstance(v, int) for v in item):
                out.append((" ".join(map(str, item)), len(item)))
            else:
                break
        else:
            return out
    raise InvalidRequestError("'input' must be a string, an array of strings or of token arrays")


def _anthropic_schema(params: Mapping[str, Any]) -> Mapping[str, Any] | None:
    config = params.get("output_config")
    # `output_format` is the older beta spelling of `output_config.format`.
    fmt = config.get("format") if isinstance(config, Mapping) else params.get("output_format")
    if not isinstance(fmt, Mapping):
        return None
    schema = fmt.get("schema")
    if fmt.get("type") != "json_schema" or not isinstance(schema, Mapping):
        raise InvalidRequestError("output_config.format must be {type: json_schema, schema: {...}}")
    return schema


def _anthropic_forced_tool(params: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """Return (name, input_schema) when ``tool_choice`` is ``tool`` or ``any``."""
    tools, choice = params.get("tools"), params.get("tool_choice")
    if not isinstance(tools, list) or not isinstance(choice, Mapping):
        return None
    custom = [
        t for t in tools if isinstance(t, Mapping) and isinstance(t.get("input_schema"), Mapping)
    ]
    if choice.get("type") == "tool":
        matches = [t for t in custom if t.get("name") == choice.get("name")]
        if not matches:
            raise InvalidRequestError(f"tool_choice names an unknown tool {choice.get('name')!r}")
        return str(matches[0]["name"]), matches[0]["input_schema"]
    if choice.get("type") == "any" and custom:
        return str(custom[0]["name"]), custom[0]["input_schema"]
    return None


def _anthropic_message(
    model: str, key: str, content: list[dict[str, Any]], stop: str, input_tokens: int
) -> dict[str, Any]:
    return {
        "id": f"msg_emu{key}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "stop_details": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    }
