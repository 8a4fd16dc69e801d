"""Structured answers: ``response_format`` as a JSON schema for the provider, a Spark type for the output.

``response_format=`` takes a pydantic model class, a Spark DDL string
(``"label STRING, score DOUBLE, tags ARRAY<STRING>"``) or a JSON schema. What the provider gets is
always a JSON schema; the two the library derives itself are written for strict structured
output (every object closed with ``additionalProperties: false`` and every property listed in
``required``; a field that may be missing is nullable instead, as OpenAI's strict mode requires).
A JSON schema given as such is sent as given.

The answer comes back as text (compact JSON) and is parsed in the JVM with ``from_json`` into the
output's ``parsed`` field (an answer that does not parse, or lacks a required top-level field, is
an ``invalid_output`` failure in the output, its text kept), typed after the format: nested models become structs, lists arrays,
optionals nullable fields, enums strings, integers ``bigint``, numbers ``double``, booleans
``boolean``; a DDL string is its own Spark type. A schema node with no single type (a union of
several) is kept as its JSON text (``string``).

Example:
    >>> schema = {"type": "object", "properties": {"label": {"enum": ["a", "b"]},
    ...           "score": {"type": "number"}, "tags": {"type": "array", "items": {"type": "string"}}}}
    >>> spark_type(schema).simpleString()
    'struct<label:string,score:double,tags:array<string>>'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spark_llm_batch.errors import ConfigError

if TYPE_CHECKING:
    from typing import TypeAlias

    from pydantic import BaseModel
    from pyspark.sql import SparkSession
    from pyspark.sql.types import ArrayType, DataType, StructType

    from spark_llm_batch.config import BatchConfig

__all__ = [
    "ParsedType",
    "Structured",
    "from_model",
    "json_schema_of",
    "required_fields",
    "resolve",
    "spark_type",
    "strict",
]

ParsedType: TypeAlias = "StructType | ArrayType"
"""What ``from_json`` parses an answer into: the output's ``parsed`` field."""


def from_model(model: type[BaseModel]) -> dict[str, Any]:
    """The strict JSON schema of a pydantic model class (nested models as ``$defs``)."""
    return strict(model.model_json_schema())


def strict(schema: Any) -> Any:
    """``schema`` with every object closed and all its properties required (``default`` values
    dropped: a strict schema has none). Properties that were optional keep their null branch."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {key: strict(value) for key, value in schema.items() if key != "default"}
    if out.get("type") == "object" or "properties" in out:
        out["additionalProperties"] = False
        out["required"] = list(out.get("properties", {}))
    return out


def json_schema_of(struct: StructType) -> dict[str, Any]:
    """The strict JSON schema of a Spark struct: every field required and not null (the model
    must answer each), arrays and nested structs alike."""
    return strict(_json_of(struct))


def _json_of(kind: DataType) -> dict[str, Any]:
    from pyspark.sql import types as T

    if isinstance(kind, T.StructType):
        properties = {f.name: _json_of(f.dataType) for f in kind.fields}
        return {"type": "object", "properties": properties}
    if isinstance(kind, T.ArrayType):
        return {"type": "array", "items": _json_of(kind.elementType)}
    if isinstance(kind, T.BooleanType):
        return {"type": "boolean"}
    if isinstance(kind, T.ByteType | T.ShortType | T.IntegerType | T.LongType):
        return {"type": "integer"}
    if isinstance(kind, T.FloatType | T.DoubleType | T.DecimalType):
        return {"type": "number"}
    if isinstance(kind, T.StringType | T.CharType | T.VarcharType):
        return {"type": "string"}
    if isinstance(kind, T.DateType):
        return {"type": "string", "format": "date"}
    if isinstance(kind, T.TimestampType | T.TimestampNTZType):
        return {"type": "string", "format": "date-time"}
    raise ConfigError(
        f"response_format type {kind.simpleString()} has no structured-output equivalent: use "
        "strings, numbers, booleans, dates, timestamps, arrays and structs"
    )


def spark_type(schema: Mapping[str, Any]) -> DataType:
    """The Spark type of the values ``schema`` describes (``$ref`` into ``$defs`` resolved)."""
    return _spark_of(schema, schema, depth=0)


def _spark_of(node: Any, root: Mapping[str, Any], depth: int) -> DataType:
    from pyspark.sql import types as T

    if depth > 32 or not isinstance(node, Mapping):  # recursive schemas end as JSON text
        return T.StringType()
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        return _spark_of(target, root, depth + 1)
    for union in ("anyOf", "oneOf"):
        branches = [b for b in node.get(union, []) if not _is_null(b)]
        if union in node:
            return _spark_of(branches[0], root, depth + 1) if len(branches) == 1 else T.StringType()
    kinds = node.get("type")
    if isinstance(kinds, list):
        rest = [k for k in kinds if k != "null"]
        kinds = rest[0] if len(rest) == 1 else None
    if kinds == "object" or (kinds is None and "properties" in node):
        props = node.get("properties", {})
        return T.StructType(
            [T.StructField(name, _spark_of(sub, root, depth + 1)) for name, sub in props.items()]
        )
    if kinds == "array":
        return T.ArrayType(_spark_of(node.get("items", {}), root, depth + 1))
    simple = {"integer": T.LongType(), "number": T.DoubleType(), "boolean": T.BooleanType()}
    return simple.get(str(kinds), T.StringType())


def _is_null(branch: Any) -> bool:
    return isinstance(branch, Mapping) and branch.get("type") == "null"


@dataclass(frozen=True)
class Structured:
    """How structured answers are read back.

    Attributes:
        kind: the Spark type an answer is parsed into (the result's ``parsed`` field).
        required: the top-level fields a valid answer gives, not null (an answer without one,
            or that does not parse, is an ``invalid_output`` failure).
    """

    kind: ParsedType
    required: tuple[str, ...] = ()


def required_fields(schema: Mapping[str, Any]) -> tuple[str, ...]:
    """The properties of an object ``schema`` that are required and cannot be null."""
    props = schema.get("properties", {})
    required = schema.get("required", [])
    return tuple(name for name in required if name in props and not _nullable(props[name]))


def _nullable(node: Any) -> bool:
    if not isinstance(node, Mapping):
        return True
    kinds = node.get("type")
    if kinds == "null" or (isinstance(kinds, list) and "null" in kinds):
        return True
    branches = [*node.get("anyOf", []), *node.get("oneOf", [])]
    return any(_is_null(b) for b in branches) or bool(node.get("nullable"))


def structured_of(config: BatchConfig) -> Structured | None:
    """How the answers of ``config`` (its ``response_format`` a JSON schema by now) are read back,
    from the schema alone: what collection checks them against."""
    from pyspark.sql import types as T

    given = config.response_schema
    if given is None or given.get("type") in ("json_object", "text"):
        return None
    schema = (
        given.get("json_schema", {}).get("schema") if given.get("type") == "json_schema" else given
    )
    if not isinstance(schema, Mapping):
        return None
    kind = spark_type(schema)
    if isinstance(kind, T.StructType):
        return Structured(kind, required_fields(schema))
    return Structured(kind) if isinstance(kind, T.ArrayType) else None


def resolve(config: BatchConfig, spark: SparkSession) -> tuple[BatchConfig, Structured | None]:
    """``config`` with its ``response_format`` as the JSON schema sent, and how answers are
    parsed (``None``: no structured answer, or one without an object or array schema, such as
    ``{"type": "json_object"}``).

    Raises:
        ConfigError: a DDL string that does not parse, or with a type JSON cannot carry.
    """
    given = config.response_format
    if isinstance(given, str):  # a DDL string: the output keeps its own types
        struct = _ddl(spark, given)
        schema = json_schema_of(struct)
        sent = config.model_copy(update={"response_format": schema})
        return sent, Structured(struct, required_fields(schema))
    return config, structured_of(config)


def _ddl(spark: SparkSession, ddl: str) -> StructType:
    try:
        return spark.createDataFrame([], ddl).schema
    except Exception as exc:  # the parser's own error says where: keep its first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"response_format {ddl!r} is not a Spark DDL schema: {first}") from None
