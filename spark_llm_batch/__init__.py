"""spark-llm-batch: LLM prompts over whole Spark tables through the providers' batch APIs.

Importing the package attaches :func:`llm_batch` to ``pyspark.sql.DataFrame`` (the common parent of
classic and Spark Connect DataFrames), so both spellings work:

    >>> import spark_llm_batch                                            # doctest: +SKIP
    >>> out = df.llm_batch("prompt", model="gpt-4o-mini", store="/lake/llm_store")  # doctest: +SKIP
    >>> out = spark_llm_batch.llm_batch(df, "prompt", model="gpt-4o-mini", store="/lake/llm_store")  # doctest: +SKIP

From SQL, after ``spark_llm_batch.register_sql(spark)``: the table function
``llm_batch(TABLE(<table>), prompt => 'prompt', model => ..., store => ...)`` and the real-time
scalar ``llm_query(model, prompt)`` (see :mod:`spark_llm_batch.sql`).

Heavy modules (the SDKs, the emulator's server, Spark's JVM) load only when first used.
"""

from __future__ import annotations

from spark_llm_batch._extension import attach as _attach
from spark_llm_batch._handle import BatchRun
from spark_llm_batch._status import JobStatus, StoreStatus, status
from spark_llm_batch.api import llm_batch, llm_batch_table, llm_embed
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
from spark_llm_batch.sql import register_sql

__all__ = [
    "AuthenticationError",
    "BatchConfig",
    "BatchFailedError",
    "BatchLimits",
    "BatchRun",
    "ConfigError",
    "JobStatus",
    "PollPolicy",
    "ProviderError",
    "ProviderSettings",
    "RetryPolicy",
    "SparkLLMBatchError",
    "StoreError",
    "StoreStatus",
    "__version__",
    "get_session",
    "llm_batch",
    "llm_batch_table",
    "llm_embed",
    "local_session",
    "register_sql",
    "status",
]

__version__ = "0.1.0"

_attach()
