"""spark-llm-batch: LLM prompts over whole Spark tables through the providers' batch APIs.

Importing the package attaches :func:`llm_batch` to ``pyspark.sql.DataFrame`` (the common parent of
classic and Spark Connect DataFrames), so both spellings work:

    >>> import spark_llm_batch                                            # doctest: +SKIP
    >>> out = df.llm_batch("prompt", model="gpt-4o-mini", store="/lake/llm_store")  # doctest: +SKIP
    >>> out = spark_llm_batch.llm_batch(df, "prompt", model="gpt-4o-mini", store="/lake/llm_store")  # doctest: +SKIP

Heavy modules (the SDKs, the emulator's server, Spark's JVM) load only when first used.
"""

from __future__ import annotations

from spark_llm_batch._extension import attach as _attach
from spark_llm_batch.api import llm_batch, llm_embed
from spark_llm_batch.config import (
    BatchConfig,
    BatchLimits,
    PollPolicy,
    ProviderSettings,
    RetryPolicy,
)
from spark_llm_batch.errors import (
    AuthenticationError,
    BatchFailedError,
    ConfigError,
    ProviderError,
    SparkLLMBatchError,
    StoreError,
)
from spark_llm_batch.session import get_session, local_session

__all__ = [
    "AuthenticationError",
    "BatchConfig",
    "BatchFailedError",
    "BatchLimits",
    "ConfigError",
    "PollPolicy",
    "ProviderError",
    "ProviderSettings",
    "RetryPolicy",
    "SparkLLMBatchError",
    "StoreError",
    "__version__",
    "get_session",
    "llm_batch",
    "llm_embed",
    "local_session",
]

__version__ = "0.1.0"

_attach()
