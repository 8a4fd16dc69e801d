"""Attaches ``llm_batch`` and ``llm_embed`` to ``pyspark.sql.DataFrame``: few-line aliases of the
real functions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["attach"]


def _llm_batch_method(self: DataFrame, prompt_col: str | None = None, **options: Any) -> DataFrame:
    """``df.llm_batch(prompt_col, model=..., store=...)`` or ``df.llm_batch(template=..., ...)``:
    see :func:`spark_llm_batch.llm_batch`."""
    from spark_llm_batch.api import llm_batch

    return llm_batch(self, prompt_col, **options)


def _llm_embed_method(self: DataFrame, text_col: str | None = None, **options: Any) -> DataFrame:
    """``df.llm_embed(text_col, model=..., store=...)``: see :func:`spark_llm_batch.llm_embed`."""
    from spark_llm_batch.api import llm_embed

    return llm_embed(self, text_col, **options)


def attach() -> None:
    """Add ``DataFrame.llm_batch`` and ``DataFrame.llm_embed``, each unless something else already
    owns that attribute.

    ``pyspark.sql.DataFrame`` is the parent of both the classic and the Spark Connect DataFrame in
    Spark 4, so one attribute serves both.
    """
    from pyspark.sql import DataFrame

    for attribute, method in (("llm_batch", _llm_batch_method), ("llm_embed", _llm_embed_method)):
        existing = getattr(DataFrame, attribute, None)
        if existing is None:
            setattr(DataFrame, attribute, method)
        elif existing is not method and getattr(existing, "__module__", "") != __name__:
            import warnings

            warnings.warn(
                f"DataFrame.{attribute} already exists and was left alone; "
                f"call spark_llm_batch.{attribute}(df, ...) instead",
                stacklevel=3,
            )
