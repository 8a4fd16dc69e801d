"""Bad input fails before any request is sent, with a message that says what to fix."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import spark_llm_batch
from spark_llm_batch.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_llm_batch.emulator import Emulator


@pytest.fixture
def df(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([(1, "a", 5), (2, "b", 6)], "id long, prompt string, n int")


def _options(emulator: Emulator, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "store": str(tmp_path / "store"),
        "provider_settings": {"api_key": "sk-test-emulator", "base_url": emulator.openai_base_url},
        **extra,
    }


@pytest.mark.parametrize(
    ("prompt_col", "extra", "message"),
    [
        (
            "question",
            {},
            r"prompt column 'question' is not in the DataFrame; its columns are: id, n, prompt",
        ),
        (
            "n",
            {},
            r"prompt column 'n' has type int: a prompt column holds strings, or conversations",
        ),
        ("prompt", {"model": "llama-3"}, r"cannot tell the provider of model 'llama-3'"),
        ("prompt", {"model": "mistral:large"}, r"unknown provider 'mistral'"),
        ("prompt", {"result_col": "n"}, r"result column 'n' already exists in the input"),
        ("prompt", {"id_col": "key"}, r"id_col 'key' is not in the DataFrame"),
        ("prompt", {"temperature": 0}, r"temperature: Extra inputs are not permitted"),
    ],
)
def test_bad_options_fail_before_spending(
    df: DataFrame,
    emulator: Emulator,
    tmp_path: Path,
    prompt_col: str,
    extra: dict[str, Any],
    message: str,
) -> None:
    before = len(emulator.ledger())
    with pytest.raises(ConfigError, match=message):
        spark_llm_batch.llm_batch(df, prompt_col, **_options(emulator, tmp_path, **extra))
    assert len(emulator.ledger()) == before
    assert not (tmp_path / "store").exists()


def test_duplicate_ids_are_listed(spark: SparkSession, emulator: Emulator, tmp_path: Path) -> None:
    df = spark.createDataFrame(
        [(1, "a"), (1, "b"), (2, "c"), (3, "d"), (3, "e")], "id long, prompt string"
    )
    with pytest.raises(
        ConfigError, match=r"id_col 'id' must be unique.*1 \(2 rows\).*3 \(2 rows\)"
    ):
        df.llm_batch("prompt", **_options(emulator, tmp_path, id_col="id"))


def test_missing_api_key_names_the_variable(df: DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        df.llm_batch("prompt", model="gpt-4o-mini", store=str(tmp_path / "store"))


def test_reserved_column_names(spark: SparkSession, emulator: Emulator, tmp_path: Path) -> None:
    df = spark.createDataFrame([(1, "a")], "__llm_hash long, prompt string")
    with pytest.raises(ConfigError, match="reserved"):
        df.llm_batch("prompt", **_options(emulator, tmp_path))


def test_unwritable_store(df: DataFrame, emulator: Emulator, tmp_path: Path) -> None:
    # A path below a regular file cannot be created, whoever runs the test (root ignores modes).
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    before = len(emulator.ledger())
    with pytest.raises(ConfigError, match="store"):
        df.llm_batch("prompt", **_options(emulator, tmp_path, store=str(blocker / "store")))
    assert len(emulator.ledger()) == before
