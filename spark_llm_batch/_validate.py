"""Checks on the user's DataFrame that run before anything is spent.

Each check raises :class:`~spark_llm_batch.errors.ConfigError` with a message that says what to fix:
the missing column and the ones that exist, the duplicated ids, the colliding names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spark_llm_batch._columns import RESERVED_PREFIX
from spark_llm_batch._template import PromptTemplate
from spark_llm_batch.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pyspark.sql import DataFrame

    from spark_llm_batch.config import BatchConfig

__all__ = ["check_input", "holds_conversations"]

_SHOWN_DUPLICATES = 5


def check_input(df: DataFrame, prompt_col: str | None, config: BatchConfig) -> None:
    """Validate ``df`` for one ``llm_batch`` call: its prompts come from ``prompt_col`` or from
    ``config.template``, exactly one of them.

    Raises:
        ConfigError: both or neither prompt source, the prompt column is missing or not a
            string, a template placeholder names no column, a column uses the reserved prefix,
            the result column collides with an input column, or ``id_col`` is missing or holds
            duplicates.
    """
    fields = {f.name: f.dataType for f in df.schema.fields}
    existing = ", ".join(sorted(fields)) or "(none)"
    if (prompt_col is None) == (config.template is None):
        raise ConfigError(
            "pass the prompts either as a column (llm_batch(df, 'prompt', ...)) or as a template "
            "over columns (template='... {column} ...'), "
            + ("not both" if prompt_col is not None else "one of them")
        )
    if config.template is not None:
        PromptTemplate.parse(config.template).check(fields)
    else:
        _check_prompt_col(prompt_col or "", fields, existing)
    reserved = sorted(name for name in fields if name.startswith(RESERVED_PREFIX))
    if reserved:
        raise ConfigError(
            f"columns starting with {RESERVED_PREFIX!r} are reserved for spark-llm-batch: rename {reserved}"
        )
    if config.result_col in fields:
        raise ConfigError(
            f"result column {config.result_col!r} already exists in the input: pass result_col=... "
            f"with another name (the input's columns are: {existing})"
        )
    if config.id_col is not None:
        _check_ids(df, config.id_col, fields, existing)


def holds_conversations(df: DataFrame, prompt_col: str) -> bool:
    """Whether ``prompt_col`` holds conversations (else text; :func:`check_input` checked it is
    one of the two)."""
    return _is_conversation(df.schema[prompt_col].dataType)


def _is_conversation(kind: object) -> bool:
    """An array of structs with string ``role`` and ``content`` fields (others are ignored)."""
    from pyspark.sql.types import ArrayType, StringType, StructType

    if not isinstance(kind, ArrayType) or not isinstance(kind.elementType, StructType):
        return False
    fields = {f.name: f.dataType for f in kind.elementType.fields}
    return all(isinstance(fields.get(name), StringType) for name in ("role", "content"))


def _check_prompt_col(prompt_col: str, fields: Mapping[str, object], existing: str) -> None:
    from pyspark.sql.types import DataType, StringType

    if prompt_col not in fields:
        raise ConfigError(
            f"prompt column {prompt_col!r} is not in the DataFrame; its columns are: {existing}"
        )
    kind = fields[prompt_col]
    if not isinstance(kind, StringType) and not _is_conversation(kind):
        shown = kind.simpleString() if isinstance(kind, DataType) else str(kind)
        raise ConfigError(
            f"prompt column {prompt_col!r} has type {shown}: a prompt column holds strings, or "
            "conversations as array<struct<role: string, content: string>>. Cast it first, e.g. "
            f"df.withColumn({prompt_col!r}, F.col({prompt_col!r}).cast('string')), or use "
            f"template='{{{prompt_col}}}'"
        )


def _check_ids(df: DataFrame, id_col: str, fields: Mapping[str, object], existing: str) -> None:
    from pyspark.sql import functions as F

    if id_col not in fields:
        raise ConfigError(f"id_col {id_col!r} is not in the DataFrame; its columns are: {existing}")
    nulls = df.where(F.col(id_col).isNull()).limit(1).count()
    if nulls:
        raise ConfigError(
            f"id_col {id_col!r} has null values: every row needs a unique, non-null id"
        )
    duplicated = (
        df.groupBy(id_col).count().where(F.col("count") > 1).limit(_SHOWN_DUPLICATES).collect()
    )
    if duplicated:
        shown = ", ".join(f"{row[id_col]!r} ({row['count']} rows)" for row in duplicated)
        raise ConfigError(
            f"id_col {id_col!r} must be unique, but some values repeat: {shown}"
            f"{' ...' if len(duplicated) == _SHOWN_DUPLICATES else ''}"
        )
