"""Attaches ``llm_batch`` to ``pyspark.sql.DataFrame``: a few-line alias of the real function."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["attach"]

_ATTRIBUTE = "llm_batch"


def _llm_batch_method(self: DataFrame, prompt_col: str | None = None, **options: Any) -> DataFrame:
    """``df.llm_batch(prompt_col, model=..., store=...)`` or ``df.llm_batch(template=..., ...)``:
    see :func:`spark_llm_batch.llm_batch`."""
    from spark_llm_batch.api import llm_batch

    return llm_batch(self, prompt_col, **options)


def attach() -> None:
    """Add ``DataFrame.llm_batch`` unless something else already owns that attribute.

    ``pyspark.sql.DataFrame`` is the parent of both the classic and the Spark Connect DataFrame in
    Spark 4, so one attribute serves both.
    """
    from pyspark.sql import DataFrame

    existing = getattr(DataFrame, _ATTRIBUTE, None)
    if existing is None:
        setattr(DataFrame, _ATTRIBUTE, _llm_batch_method)
    elif existing is not _llm_batch_method and getattr(existing, "__module__", "") != __name__:
        import warnings

        warnings.warn(
            f"DataFrame.{_ATTRIBUTE} already exists and was left alone; "
            "call spark_llm_batch.llm_batch(df, ...) instead",
            stacklevel=3,
        )
