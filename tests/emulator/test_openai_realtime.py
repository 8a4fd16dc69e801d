"""Real-time chat completions and embeddings, auth, and error shapes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from spark_llm_batch.emulator import Emulator
from spark_llm_batch.emulator._answers import expected_text


def test_chat_completion_is_deterministic_and_billed(
    openai_client: openai.OpenAI, emulator: Emulator
) -> None:
    before = len(emulator.ledger())
    reply = openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "What is Spark?"}]
    )
    assert reply.choices[0].message.content == expected_text("What is Spark?", model="gpt-4o-mini")
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    entries = emulator.ledger()[before:]
    assert [(e["batch_id"], e["input_tokens"]) for e in entries] == [
        (None, reply.usage.prompt_tokens)
    ]


def test_structured_output_conforms(openai_client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": ["pos", "neg"]},
            "score": {"type": "number"},
        },
        "required": ["label", "score"],
        "additionalProperties": False,
    }
    reply = openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "classify"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": schema, "strict": True},
        },
    )
    value = json.loads(reply.choices[0].message.content or "")
    assert value["label"] in ("pos", "neg")
    assert isinstance(value["score"], (int, float))


def test_embeddings(openai_client: openai.OpenAI) -> None:
    reply = openai_client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [d.index for d in reply.data] == [0, 1]
    assert len(reply.data[0].embedding) == 1536


def test_missing_key_is_401_in_openai_shape(emulator: Emulator) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(emulator.openai_base_url + "/batches")
    assert info.value.code == 401
    body = json.loads(info.value.read())
    assert body["error"]["code"] == "invalid_api_key"
    assert set(body["error"]) == {"message", "type", "param", "code"}


def _post(url: str, data: bytes) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Authorization", "Bearer sk-test-emulator")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("path", "data", "status"),
    [
        ("/chat/completions", b"{not json", 400),
        ("/chat/completions", b"[1, 2]", 400),
        ("/chat/completions", b'{"model": "m", "messages": "nope"}', 400),
        ("/batches", b'{"input_file_id": 3}', 400),
        ("/no/such/route", b"{}", 404),
    ],
)
def test_bad_input_gets_the_error_shape(
    emulator: Emulator, path: str, data: bytes, status: int
) -> None:
    code, body = _post(emulator.openai_base_url + path, data)
    assert code == status
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in json.dumps(body)
