"""Prompt templates over columns: parsing, the checks before anything is sent, JVM rendering."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from spark_llm_batch._template import PromptTemplate
from spark_llm_batch.config import BatchConfig
from spark_llm_batch.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def test_placeholders_are_column_names_and_double_braces_are_literal() -> None:
    template = PromptTemplate.parse("{a}: {my col} / {a.b} {{not: {a}}}")
    assert template.columns == ("a", "my col", "a.b")
    assert template.pieces == (("", "a"), (": ", "my col"), (" / ", "a.b"), (" {not: ", "a"),
                               ("}", None))  # fmt: skip


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("Review: {review!r}", "format spec or conversion"),
        ("Review: {review:>10}", "format spec or conversion"),
        ("Review: {}", "empty placeholder"),
        ("Review: { }", "empty placeholder"),
        ("Review: {review", "does not parse"),
        ("Review: review}", "does not parse"),
        ("Review: {{review}}", "no placeholder"),
    ],
)
def test_templates_that_cannot_render_are_config_errors(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        PromptTemplate.parse(text)
    # Refused when the config is built, before any DataFrame is looked at.
    with pytest.raises(ConfigError, match=says):
        BatchConfig.build({"model": "gpt-4o-mini", "store": "/tmp/s", "template": text})


def test_a_placeholder_without_its_column_is_named_with_the_columns_there_are() -> None:
    template = PromptTemplate.parse("{review} {product} {stars}")
    template.check({"review", "product", "stars", "other"})
    with pytest.raises(ConfigError, match=r"\{product\} name no column.*: review, stars$"):
        template.check({"review", "stars"})


def test_rendering_casts_values_and_applies_the_null_rule(spark: SparkSession) -> None:
    df = spark.createDataFrame(
        [("great", 5, 4.5, True, ["a", "b"]), (None, None, None, None, None), ('q"\n', 1, 0.0, False, [])],
        "review string, stars int, score double, ok boolean, tags array<string>",
    )  # fmt: skip
    template = PromptTemplate.parse("R={review} S={stars} X={score} B={ok} T={tags} {{}}")
    invalid = df.select(template.render("invalid").alias("p"), template.null_message().alias("m"))
    rows = invalid.collect()
    assert rows[0]["p"] == "R=great S=5 X=4.5 B=true T=[a, b] {}"
    assert rows[1]["p"] is None
    assert rows[1]["m"] == "template column(s) null: review, stars, score, ok, tags"
    assert rows[2]["p"] == 'R=q"\n S=1 X=0.0 B=false T=[] {}'
    empty = [r["p"] for r in df.select(template.render("empty").alias("p")).collect()]
    assert empty[1] == "R= S= X= B= T= {}"
    assert empty[0] == rows[0]["p"]
