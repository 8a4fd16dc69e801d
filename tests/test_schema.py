"""Structured answers: response_format as a pydantic model, a DDL string or a JSON schema."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from spark_llm_batch._schema import resolve, spark_type
from spark_llm_batch.config import BatchConfig
from spark_llm_batch.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class Mood(str, enum.Enum):
    happy = "happy"
    sad = "sad"


class Aspect(BaseModel):
    name: str
    score: float


class Review(BaseModel):
    mood: Mood
    stars: int
    recommended: bool
    tags: list[str]
    aspects: list[Aspect]
    summary: str | None = None


def _objects(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [o for item in node for o in _objects(item)]
    if not isinstance(node, dict):
        return []
    here = [node] if node.get("type") == "object" else []
    return here + [o for value in node.values() for o in _objects(value)]


def test_a_pydantic_model_becomes_a_strict_schema_and_a_typed_struct() -> None:
    config = BatchConfig(model="gpt-4o-mini", store="/tmp/s", response_format=Review)
    schema = config.response_schema
    assert isinstance(schema, dict)
    objects = _objects(schema)
    assert len(objects) == 2  # Review and Aspect (in $defs)
    for obj in objects:  # OpenAI's strict mode: closed, every property required, no defaults
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    assert "default" not in str(schema)
    assert spark_type(schema).simpleString() == (
        "struct<mood:string,stars:bigint,recommended:boolean,tags:array<string>,"
        "aspects:array<struct<name:string,score:double>>,summary:string>"
    )


def test_a_ddl_string_is_its_own_spark_type_and_a_strict_schema(spark: SparkSession) -> None:
    ddl = "label STRING, score DOUBLE, n INT, tags ARRAY<STRING>, at STRUCT<city: STRING>"
    config = BatchConfig(model="claude-haiku-4-5", store="/tmp/s", response_format=ddl)
    with pytest.raises(ConfigError, match="DDL string"):
        _ = config.response_schema  # a provider cannot send it before llm_batch resolves it
    resolved, parsed = resolve(config, spark)
    assert parsed is not None
    assert parsed.kind.simpleString() == (
        "struct<label:string,score:double,n:int,tags:array<string>,at:struct<city:string>>"
    )
    assert parsed.required == ("label", "score", "n", "tags", "at")
    schema = resolved.response_schema
    assert schema == {
        "type": "object",
        "properties": {
            "label": {"type": "string"},
            "score": {"type": "number"},
            "n": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "at": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "additionalProperties": False,
                "required": ["city"],
            },
        },
        "additionalProperties": False,
        "required": ["label", "score", "n", "tags", "at"],
    }


@pytest.mark.parametrize(
    ("ddl", "says"),
    [("label STRNG", "not a Spark DDL schema"), ("m MAP<STRING, INT>", "no structured-output")],
)
def test_a_ddl_that_cannot_be_a_schema_is_a_config_error(
    spark: SparkSession, ddl: str, says: str
) -> None:
    config = BatchConfig(model="gpt-4o-mini", store="/tmp/s", response_format=ddl)
    with pytest.raises(ConfigError, match=says):
        resolve(config, spark)


def test_a_json_schema_is_sent_as_given_and_only_object_or_array_answers_are_parsed(
    spark: SparkSession,
) -> None:
    given = {"type": "object", "properties": {"a": {"type": ["integer", "null"]}}}
    config = BatchConfig(model="gpt-4o-mini", store="/tmp/s", response_format=given)
    resolved, parsed = resolve(config, spark)
    assert resolved.response_schema == given
    assert parsed is not None
    assert parsed.kind.simpleString() == "struct<a:bigint>"
    assert parsed.required == ()  # not required, and nullable
    free = BatchConfig(model="gpt-4o-mini", store="/tmp/s", response_format={"type": "json_object"})
    assert resolve(free, spark)[1] is None
    union = {
        "type": "object",
        "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
    }
    assert spark_type(union).simpleString() == "struct<x:string>"  # kept as its JSON text


def test_required_fields_are_the_required_ones_that_cannot_be_null() -> None:
    from spark_llm_batch._schema import required_fields, structured_of

    config = BatchConfig(model="gpt-4o-mini", store="/tmp/s", response_format=Review)
    structured = structured_of(config)
    assert structured is not None
    # summary is required by the strict schema, but may be null: an answer may leave it so.
    assert structured.required == ("mood", "stars", "recommended", "tags", "aspects")
    assert (
        required_fields({"properties": {"a": {"type": ["string", "null"]}}, "required": ["a"]})
        == ()
    )
