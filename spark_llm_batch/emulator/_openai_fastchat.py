"""Templated answers for plain chat requests in a batch, one line at a time.

The general path (:func:`._openai_batch._answer`) builds the response dicts and serialises them;
for the common request (plain string turns, no shaping keys, no fault) :class:`FastChat` writes the
same bytes from one template, :func:`chat_line`. The whole-file path (:mod:`._openai_vector`)
cuts that same template at marker values, so the layout lives here only.
"""

from __future__ import annotations

import hashlib
import os
from json.encoder import encode_basestring_ascii
from typing import Any

from spark_llm_batch.emulator._faults import RequestFaults, request_fault

__all__ = ["CHAT_ENDPOINT", "SHAPING_KEYS", "FastChat", "chat_line", "encode_str"]

CHAT_ENDPOINT = "/v1/chat/completions"
# Body keys that change a chat answer beyond model + messages; a body with any takes the full path.
SHAPING_KEYS = frozenset(
    ("max_completion_tokens", "max_tokens", "tools", "tool_choice", "response_format", "stop", "n")
)
# uuid4's fixed bits (version 4, RFC 4122 variant) applied to 128 random bits, as uuid.uuid4 does.
_UUID_AND = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_UUID_OR = (0x8000 << 48) | (4 << 76)
encode_str = encode_basestring_ascii  # what json.dumps uses for str (ensure_ascii)


def chat_line(
    line_id: str,
    custom_id: str,
    request_id: str,
    key: str,
    created: int | str,
    model: str,
    answer: str,
    in_tok: int | str,
    out_tok: int | str,
    total: int | str,
) -> str:
    """One output line of a plain chat answer, exactly as ``_answer`` serialises it.

    ``custom_id``, ``model`` and ``answer`` are JSON strings already (quoted and escaped); the ids
    are 32 hex characters.
    """
    return (
        f'{{"id":"batch_req_{line_id}","custom_id":{custom_id},'
        f'"response":{{"status_code":200,"request_id":"req_{request_id}",'
        f'"body":{{"id":"chatcmpl-{key}","object":"chat.completion","created":{created},'
        f'"model":{model},"choices":[{{"index":0,"message":{{"role":"assistant",'
        f'"content":{answer},"refusal":null}},"logprobs":null,'
        f'"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{in_tok},'
        f'"completion_tokens":{out_tok},"total_tokens":{total},'
        f'"prompt_tokens_details":{{"cached_tokens":0}},'
        f'"completion_tokens_details":{{"reasoning_tokens":0}}}},'
        f'"service_tier":"default","system_fingerprint":"fp_emulator"}}}},"error":null}}\n'
    )


class FastChat:
    """Templated answers for the common chat request (plain string turns, no shaping keys).

    Produces exactly the bytes ``_answer`` would (same JSON layout, answer, usage), without
    building the response dicts or re-serialising them; anything unusual returns ``None`` and
    takes the general path. The digest's constant prefix (model + leading system turn) is hashed
    once per batch and copied for each request.
    """

    def __init__(self, endpoint: str, faults: RequestFaults) -> None:
        from spark_llm_batch.emulator import _answers, _prompt

        self.enabled = endpoint == CHAT_ENDPOINT and not faults.rates
        self._echo_chars = _prompt._ECHO_CHARS
        self._created = _answers._CREATED
        self._prefix_key: tuple[str, str | None] | None = None
        self._prefix_hash: Any = None
        self._model_json = ""

    def answer(
        self, req: dict[str, Any], raw: bytes, custom_id: str
    ) -> tuple[bytes, bool, int, int] | None:
        """Return ``(line, ok, input_tokens, output_tokens)``, or ``None`` for the full path."""
        if not self.enabled or b"[[emulator:" in raw:
            return None  # a fault marker: the full path picks it
        body = req["body"]
        if b"\\u" in raw and request_fault(body) is not None:
            return None  # a marker spelt with \u escapes
        if not SHAPING_KEYS.isdisjoint(body):
            return None
        messages = body.get("messages")
        if type(messages) is not list or not messages or len(messages) > 2:
            return None
        system: str | None = None
        if len(messages) == 2:
            first = messages[0]
            if type(first) is not dict or first.get("role") != "system":
                return None
            system = first.get("content")
            if type(system) is not str:
                return None
        last = messages[-1]
        if type(last) is not dict or last.get("role") != "user":
            return None
        text = last.get("content")
        if type(text) is not str:
            return None
        model = body["model"]  # a non-empty str: _check_line made sure
        try:
            hasher = self._prefix(model, system).copy()
            hasher.update(b"\nuser:" + text.encode())
        except UnicodeEncodeError:
            return None  # lone surrogates: let the full path report it
        key = hasher.hexdigest()[:12]
        answer = f"Emulated answer {key}: {' '.join(text.split())[: self._echo_chars]}"
        out_tok = max((len(answer) + 3) // 4, 1)
        in_tok = 7 + (len(text) + 3) // 4
        if system is not None:
            in_tok += 4 + (len(system) + 3) // 4
        r = int.from_bytes(os.urandom(32), "big")
        line = chat_line(
            f"{r & _UUID_AND | _UUID_OR:032x}",
            encode_str(custom_id),
            f"{(r >> 128) & _UUID_AND | _UUID_OR:032x}",
            key,
            self._created,
            self._model_json,
            encode_str(answer),
            in_tok,
            out_tok,
            in_tok + out_tok,
        )
        return line.encode(), True, in_tok, out_tok

    def _prefix(self, model: str, system: str | None) -> Any:
        if self._prefix_key != (model, system):
            head = model if system is None else f"{model}\nsystem:{system}"
            self._prefix_hash = hashlib.sha256(head.encode())
            self._prefix_key = (model, system)
            self._model_json = encode_str(model)
        return self._prefix_hash
