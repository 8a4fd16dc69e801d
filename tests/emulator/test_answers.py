"""The deterministic answer generator (pure functions; no server needed)."""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from typing import Any

import anthropic.types
import openai.types
import openai.types.chat
import pydantic
import pytest

from spark_llm_batch.emulator._answers import (
    REFUSAL_TEXT,
    InvalidRequestError,
    anthropic_message_response,
    anthropic_refusal_response,
    count_tokens,
    digest,
    expected_json,
    expected_text,
    openai_chat_response,
    openai_embedding_response,
    openai_refusal_response,
)
from spark_llm_batch.emulator._schemagen import SchemaError, generate
from tests.emulator._schema_check import schema_errors

MODEL = "gpt-4o-mini"
CLAUDE = "claude-emulated-1"


def chat(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **extra}


def claude(prompt: str, **extra: Any) -> dict[str, Any]:
    params = {
        "model": CLAUDE,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": prompt}],
    }
    return {**params, **extra}


def openai_text(body: dict[str, Any]) -> str:
    return openai_chat_response(body)["choices"][0]["message"]["content"]


# -- the rule ----------------------------------------------------------------------------------


def test_rule_as_documented() -> None:
    prompt = "  Classify   this\nreview: great product  "
    key = digest(MODEL, [("system", "Be terse."), ("user", prompt)])
    expected = f"Emulated answer {key}: Classify this review: great product"
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": prompt},
        ],
    }
    assert openai_text(body) == expected
    assert expected_text(prompt, model=MODEL, system="Be terse.") == expected
    params = claude(prompt, system="Be terse.", model=MODEL)
    assert anthropic_message_response(params)["content"][0]["text"] == expected


def test_answers_are_deterministic_and_distinct() -> None:
    prompts = [f"row {i}: summarise" for i in range(2000)]
    first = [openai_text(chat(p)) for p in prompts]
    assert first == [openai_text(chat(p)) for p in prompts]
    assert len(set(first)) == len(prompts)
    assert first == [expected_text(p, model=MODEL) for p in prompts]


def test_digest_depends_on_model_system_and_history() -> None:
    base = expected_text("same", model="a")
    assert expected_text("same", model="b") != base
    assert expected_text("same", model="a", system="x") != base
    parts = [{"type": "text", "text": "same"}]
    assert openai_text({"model": "a", "messages": [{"role": "user", "content": parts}]}) == base


def test_echo_is_cut_to_80_characters() -> None:
    text = expected_text("x" * 500, model=MODEL)
    assert text.endswith(": " + "x" * 80)


def test_usage_follows_the_token_rule() -> None:
    prompt = "a" * 40
    answer = openai_chat_response(chat(prompt))
    content = answer["choices"][0]["message"]["content"]
    assert answer["usage"]["prompt_tokens"] == 3 + 4 + 10
    assert answer["usage"]["completion_tokens"] == count_tokens(content)
    assert answer["usage"]["total_tokens"] == 17 + count_tokens(content)
    message = anthropic_message_response(claude(prompt))
    assert message["usage"]["input_tokens"] == 17
    assert message["usage"]["output_tokens"] == count_tokens(message["content"][0]["text"])
    assert count_tokens("") == 0
    assert count_tokens("abcde") == 2


def test_shapes_parse_as_sdk_models() -> None:
    completion = openai.types.chat.ChatCompletion.model_validate(openai_chat_response(chat("hi")))
    assert completion.choices[0].finish_reason == "stop"
    message = anthropic.types.Message.model_validate(anthropic_message_response(claude("hi")))
    assert message.stop_reason == "end_turn"
    refusal = anthropic.types.Message.model_validate(anthropic_refusal_response(claude("hi")))
    assert refusal.stop_reason == "refusal"
    embedding = openai_embedding_response({"model": "m", "input": "x", "encoding_format": "float"})
    assert openai.types.CreateEmbeddingResponse.model_validate(embedding).data[0].index == 0


def test_created_is_fixed_unless_given() -> None:
    assert openai_chat_response(chat("a"))["created"] == openai_chat_response(chat("b"))["created"]
    assert openai_chat_response(chat("a"), created=123)["created"] == 123


# -- limits, stops, refusals ---------------------------------------------------------------------


def test_openai_max_tokens_truncates() -> None:
    full = expected_text("a long prompt to echo back", model=MODEL)
    answer = openai_chat_response(chat("a long prompt to echo back", max_completion_tokens=3))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == full[:12]
    assert answer["usage"]["completion_tokens"] == 3
    legacy = openai_chat_response(chat("a long prompt to echo back", max_tokens=3))
    assert legacy["choices"][0]["finish_reason"] == "length"


def test_anthropic_max_tokens_truncates() -> None:
    message = anthropic_message_response(claude("a long prompt to echo back", max_tokens=2))
    assert message["stop_reason"] == "max_tokens"
    assert (
        message["content"][0]["text"]
        == expected_text("a long prompt to echo back", model=CLAUDE)[:8]
    )
    assert message["usage"]["output_tokens"] == 2


def test_stop_sequences() -> None:
    message = anthropic_message_response(claude("alpha STOP beta", stop_sequences=["STOP"]))
    assert message["stop_reason"] == "stop_sequence"
    assert message["stop_sequence"] == "STOP"
    assert message["content"][0]["text"].endswith("alpha ")
    assert openai_text(chat("alpha STOP beta", stop="STOP")).endswith("alpha ")


def test_refusals() -> None:
    answer = openai_refusal_response(chat("do something bad"))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["refusal"] == REFUSAL_TEXT
    assert choice["message"]["content"] is None
    message = anthropic_refusal_response(claude("do something bad"))
    assert message["stop_reason"] == "refusal"
    assert message["stop_details"]["type"] == "refusal"
    assert message["usage"]["output_tokens"] == count_tokens(REFUSAL_TEXT)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": ["x"]}, "messages.0"),
        ({"model": "m", "messages": [{"role": "user", "content": 3}]}, "messages.0.content"),
        (chat("x", max_tokens=0), "max_tokens"),
        (chat("x", tools=[], tool_choice={"type": "function", "function": {"name": "f"}}), "tool"),
        (
            chat("x", response_format={"type": "json_schema", "json_schema": {"schema": 1}}),
            "schema",
        ),
        (
            chat(
                "x",
                response_format={
                    "type": "json_schema",
                    "json_schema": {"schema": {"$ref": "x.json"}},
                },
            ),
            "$ref",
        ),
    ],
)
def test_invalid_requests_raise(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidRequestError, match=fragment.replace(".", r"\.").replace("$", r"\$")):
        openai_chat_response(body)


# -- structured output --------------------------------------------------------------------------

EXTRACTION = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "spam": {"type": "boolean"},
        "summary": {"type": ["string", "null"], "maxLength": 20},
        "entities": {
            "type": "array",
            "minItems": 1,
            "maxItems": 4,
            "items": {"$ref": "#/$defs/entity"},
        },
        "reviewer": {"anyOf": [{"$ref": "#/$defs/person"}, {"type": "null"}]},
    },
    "required": ["label", "confidence", "stars", "spam", "summary", "entities", "reviewer"],
    "additionalProperties": False,
    "$defs": {
        "entity": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "kind": {"const": "product"}},
            "required": ["name", "kind"],
            "additionalProperties": False,
        },
        "person": {
            "type": "object",
            "properties": {"email": {"type": "string", "format": "email"}},
            "required": ["email"],
        },
    },
}

TREE = {
    "$ref": "#/definitions/node",
    "definitions": {
        "node": {
            "type": "object",
            "properties": {
                "value": {"type": "integer"},
                "children": {"type": "array", "items": {"$ref": "#/definitions/node"}},
                "parent": {"anyOf": [{"$ref": "#/definitions/node"}, {"type": "null"}]},
            },
            "required": ["value", "children", "parent"],
        }
    },
}

ODDS_AND_ENDS = {
    "type": "object",
    "properties": {
        "when": {"type": "string", "format": "date-time"},
        "day": {"type": "string", "format": "date"},
        "at": {"type": "string", "format": "time"},
        "id": {"type": "string", "format": "uuid"},
        "ip4": {"type": "string", "format": "ipv4"},
        "ip6": {"type": "string", "format": "ipv6"},
        "site": {"type": "string", "format": "uri"},
        "host": {"type": "string", "format": "hostname"},
        "code": {"type": "string", "minLength": 12, "pattern": "^[a-z]+-[0-9a-f]+x*$"},
        "hexonly": {"type": "string", "pattern": "^[0-9a-f]{8}$"},
        "short": {"type": "string", "maxLength": 3},
        "exclusive": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.001},
        "draft4": {"type": "integer", "minimum": 1, "maximum": 2, "exclusiveMinimum": True},
        "ex_int": {"type": "integer", "exclusiveMinimum": 9, "exclusiveMaximum": 11},
        "fixed": {"type": "number", "minimum": 2.5, "maximum": 2.5},
        "step": {"type": "integer", "multipleOf": 7, "minimum": 10, "maximum": 40},
        "fstep": {"type": "number", "multipleOf": 0.25, "minimum": 1, "maximum": 2},
        "tuple": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
        "tags": {
            "type": "array",
            "items": {"enum": ["a", "b", "c"]},
            "minItems": 3,
            "uniqueItems": True,
        },
        "merged": {
            "allOf": [
                {"properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"properties": {"b": {"type": "null"}}, "required": ["b"]},
            ]
        },
        "nullable": {"type": "string", "nullable": True},
        "anything": {},
        "bag": {"type": "object", "minProperties": 2, "additionalProperties": {"type": "integer"}},
    },
}


class Review(pydantic.BaseModel):
    class Aspect(pydantic.BaseModel):
        name: str
        score: int = pydantic.Field(ge=-2, le=2)

    title: str
    rating: float = pydantic.Field(gt=0, lt=10)
    aspects: list[Aspect] = pydantic.Field(min_length=2, max_length=5)
    language: str | None = None
    verdict: bool


@pytest.mark.parametrize(
    "schema",
    [EXTRACTION, TREE, ODDS_AND_ENDS, Review.model_json_schema()],
    ids=["extraction", "tree", "odds", "pydantic"],
)
def test_generated_values_conform(schema: dict[str, Any]) -> None:
    values = [generate(schema, seed=f"seed-{i}") for i in range(150)]
    for value in values:
        assert schema_errors(schema, value) == [], value
    assert len({json.dumps(v, sort_keys=True) for v in values}) > 100  # seeds vary the values
    assert generate(schema, seed="seed-1") == values[1]


def test_pydantic_round_trip() -> None:
    value = expected_json(Review.model_json_schema(), "review this", model=MODEL)
    assert Review.model_validate(value).verdict in (True, False)


@pytest.mark.parametrize("schema", [False, {"type": "wat"}, {"enum": []}, {"$ref": "#/nowhere"}])
def test_bad_schemas_raise(schema: Any) -> None:
    with pytest.raises(SchemaError):
        generate(schema, seed="s")


def test_required_cycle_raises_instead_of_recursing_forever() -> None:
    schema = {
        "$defs": {
            "a": {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "required": ["a"]}
        },
        "$ref": "#/$defs/a",
    }
    with pytest.raises(SchemaError):
        generate(schema, seed="s")


def test_openai_json_schema_response() -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": EXTRACTION}}
    content = openai_text(chat("review 1", response_format=rf))
    assert json.loads(content) == expected_json(EXTRACTION, "review 1", model=MODEL)
    assert schema_errors(EXTRACTION, json.loads(content)) == []
    assert content != openai_text(chat("review 2", response_format=rf))


def test_openai_json_object_response() -> None:
    content = openai_text(chat("hello", response_format={"type": "json_object"}))
    assert json.loads(content) == {"answer": expected_text("hello", model=MODEL)}


def test_openai_forced_tools() -> None:
    tool = {"type": "function", "function": {"name": "grade", "parameters": EXTRACTION}}
    other = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}
    named = {"type": "function", "function": {"name": "grade"}}
    answer = openai_chat_response(chat("r", tools=[other, tool], tool_choice=named))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "grade"
    assert schema_errors(EXTRACTION, json.loads(call["function"]["arguments"])) == []
    required = openai_chat_response(chat("r", tools=[tool], tool_choice="required"))
    assert required["choices"][0]["finish_reason"] == "tool_calls"
    auto = openai_chat_response(chat("r", tools=[tool]))
    assert auto["choices"][0]["message"]["content"] == expected_text("r", model=MODEL)


def test_anthropic_tool_use() -> None:
    tools = [
        {"type": "web_search_20250305", "name": "web_search"},
        {"name": "grade", "description": "grade it", "input_schema": EXTRACTION},
    ]
    for choice in ({"type": "tool", "name": "grade"}, {"type": "any"}):
        message = anthropic_message_response(claude("review", tools=tools, tool_choice=choice))
        assert message["stop_reason"] == "tool_use"
        (block,) = message["content"]
        assert (block["type"], block["name"]) == ("tool_use", "grade")
        assert block["input"] == expected_json(EXTRACTION, "review", model=CLAUDE)
        assert schema_errors(EXTRACTION, block["input"]) == []
    auto = anthropic_message_response(claude("review", tools=tools, tool_choice={"type": "auto"}))
    assert auto["content"][0]["type"] == "text"
    with pytest.raises(InvalidRequestError, match="unknown tool"):
        anthropic_message_response(
            claude("r", tools=tools, tool_choice={"type": "tool", "name": "x"})
        )


def test_anthropic_output_format() -> None:
    fmt = {"type": "json_schema", "schema": EXTRACTION}
    for extra in ({"output_config": {"format": fmt}}, {"output_format": fmt}):
        message = anthropic_message_response(claude("review", **extra))
        assert message["stop_reason"] == "end_turn"
        value = json.loads(message["content"][0]["text"])
        assert value == expected_json(EXTRACTION, "review", model=CLAUDE)


# -- embeddings ---------------------------------------------------------------------------------


def test_embeddings() -> None:
    body = {"model": "text-embedding-3-small", "input": ["a", "b", "a"], "encoding_format": "float"}
    answer = openai_embedding_response(body)
    vectors = [d["embedding"] for d in answer["data"]]
    assert [len(v) for v in vectors] == [1536] * 3
    assert vectors[0] == vectors[2] != vectors[1]
    assert math.isclose(sum(x * x for x in vectors[0]), 1.0, rel_tol=1e-4)
    assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    encoded = openai_embedding_response({**body, "encoding_format": "base64", "dimensions": 8})
    raw = base64.b64decode(encoded["data"][1]["embedding"])
    floats = struct.unpack("<8f", raw)
    small = openai_embedding_response({**body, "dimensions": 8})["data"][1]["embedding"]
    assert floats == pytest.approx(small)
    tokens = openai_embedding_response({"model": "m", "input": [[1, 2, 3]], "dimensions": 2})
    assert tokens["usage"]["prompt_tokens"] == 3
    large = openai_embedding_response(
        {"model": "text-embedding-3-large", "input": "x", "encoding_format": "float"}
    )
    assert len(large["data"][0]["embedding"]) == 3072
    with pytest.raises(InvalidRequestError):
        openai_embedding_response({"model": "m", "input": [{"x": 1}]})


# -- speed ----------------------------------------------------------------------------------------


def test_fifty_thousand_answers_are_fast() -> None:
    bodies = [
        chat(f"Classify review {i}: arrived late but works.", max_completion_tokens=100)
        for i in range(50_000)
    ]
    params = [claude(f"Summarise document {i} in one line.") for i in range(50_000)]
    start = time.perf_counter()
    for body in bodies:
        openai_chat_response(body)
    for p in params:
        anthropic_message_response(p)
    elapsed = time.perf_counter() - start
    # ~0.6 s here for 100,000 answers; the bound leaves room for a busy shared machine.
    assert elapsed < 4.0, f"100,000 answers took {elapsed:.2f} s"
