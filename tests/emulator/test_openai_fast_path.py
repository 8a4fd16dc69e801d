"""The templated answer path for plain chat requests writes exactly what the general path writes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from spark_llm_batch.emulator import _answers
from spark_llm_batch.emulator._faults import Fault, RequestFaults
from spark_llm_batch.emulator._openai_batch import _answer
from spark_llm_batch.emulator._openai_fastchat import FastChat

ENDPOINT = "/v1/chat/completions"
_IDS = re.compile(rb'"(batch_req_|req_)[0-9a-f]{32}"')


def _request(custom_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    req = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
    return req, json.dumps(req).encode() + b"\n"


def _chat(prompt: str, system: str | None = None, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    return {"model": "gpt-4o-mini", "messages": messages, **extra}


@pytest.mark.parametrize(
    "body",
    [
        _chat("hello"),
        _chat("Summarise:   spaced\tout\nlines  ", system="Be brief."),
        _chat('quotes " and \\ backslashes, emoji \U0001f600, accents é, U+2028 \u2028 end'),
        _chat("x" * 1000, system="s" * 300, temperature=0),
        _chat("", system=""),
    ],
)
def test_fast_path_matches_the_general_path(body: dict[str, Any]) -> None:
    req, raw = _request("c" * 32, body)
    fast = FastChat(ENDPOINT, RequestFaults()).answer(req, raw, req["custom_id"])
    assert fast is not None
    general = _answer(req, ENDPOINT, _answers, None)
    assert fast[1:] == general[1:]  # ok flag and token counts
    assert _IDS.sub(b'"ID"', fast[0]) == _IDS.sub(b'"ID"', general[0])
    line = json.loads(fast[0])
    text = line["response"]["body"]["choices"][0]["message"]["content"]
    system = body["messages"][0]["content"] if len(body["messages"]) == 2 else None
    assert text == _answers.expected_text(
        body["messages"][-1]["content"], model="gpt-4o-mini", system=system
    )


@pytest.mark.parametrize(
    "body",
    [
        _chat("hi [[emulator:refused]]"),
        _chat("hi", max_tokens=3),
        _chat("hi", response_format={"type": "json_object"}),
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        },
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
        },
    ],
)
def test_unusual_requests_take_the_general_path(body: dict[str, Any]) -> None:
    req, raw = _request("c1", body)
    assert FastChat(ENDPOINT, RequestFaults()).answer(req, raw, "c1") is None


def test_fault_rates_disable_the_fast_path() -> None:
    req, raw = _request("c1", _chat("hi"))
    rates = RequestFaults(rates=((Fault.SERVER_ERROR, 0.5),))
    assert FastChat(ENDPOINT, rates).answer(req, raw, "c1") is None
