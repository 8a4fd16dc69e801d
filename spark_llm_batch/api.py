"""The one real entry point: :func:`llm_batch`."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from spark_llm_batch import _columns as C
from spark_llm_batch.config import BatchConfig

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from spark_llm_batch._orchestrator import Orchestrator
    from spark_llm_batch._store import Store

__all__ = ["RESULT_FIELDS", "llm_batch"]

log = logging.getLogger("spark_llm_batch")

RESULT_FIELDS = (
    "text",
    "status",
    "error_class",
    "error_message",
    "finish_reason",
    "input_tokens",
    "output_tokens",
    "model",
    "batch_id",
    "attempts",
    "request_hash",
)
"""The fields of the result struct column, in order."""


def llm_batch(
    df: DataFrame, prompt_col: str, *, config: BatchConfig | None = None, **options: Any
) -> DataFrame:
    """Run one LLM request per row of ``df`` through the provider's batch API.

    Every step is checkpointed in the store, so calling it again (after a crash, or on the same
    data) resumes without paying twice, and a grown table pays only for its new rows.

    Args:
        df: the input rows. Any DataFrame (classic or Spark Connect) whose ``prompt_col`` is a string.
        prompt_col: the column holding each row's prompt.
        config: a ready :class:`~spark_llm_batch.config.BatchConfig`; ``options`` override its fields.
        **options: any :class:`~spark_llm_batch.config.BatchConfig` field: ``model`` and ``store`` are
            required, and ``system``, ``params``, ``response_format``, ``id_col``, ``output``,
            ``result_col``, ``provider``, ``limits``, ``max_in_flight``, ``retry``, ``poll``,
            ``provider_settings`` are optional.

    Returns:
        The output Delta table, read back: every input column plus the struct column
        ``result_col`` holding :data:`RESULT_FIELDS`. Exactly one row per input row.

    Raises:
        ConfigError: bad input (names what to fix), raised before any request is sent.
        AuthenticationError: the provider refused the credentials.
        StoreError: the store is unreadable or inconsistent.

    Example:
        >>> out = llm_batch(df, "prompt", model="gpt-4o-mini", store="/lake/llm_store")  # doctest: +SKIP
        >>> out.select("id", "llm.text", "llm.status").show()  # doctest: +SKIP
    """
    from spark_llm_batch import _encode, _validate
    from spark_llm_batch._chunk_files import sweep_orphans
    from spark_llm_batch._orchestrator import Orchestrator
    from spark_llm_batch._store import Store
    from spark_llm_batch.providers import get_provider

    cfg = _resolve_config(config, options)
    _validate.check_input(df, prompt_col, cfg)
    provider = get_provider(cfg)  # resolves credentials: a missing key fails here, before spending
    spark = df.sparkSession
    store = Store.open(spark, cfg.store)
    sweep_orphans(store.staging_uri, store.live_chunk_names)

    encoder = _encode.RequestEncoder.build(spark, provider, cfg)
    # Persisted without the lines: the output needs only the input, the hash and encode failures;
    # lines are built (in the JVM) for pending rows only, from the same persisted rows.
    encoded = encoder.annotate(df, prompt_col).persist()
    try:
        orchestrator = Orchestrator(spark, store, provider, cfg)
        lines = encoder.line_column(encoded[f"`{prompt_col}`"], encoded[C.HASH])
        staged = _stage_pending(encoded, lines, cfg, provider, store, orchestrator)
        log.info("staged %d new batch(es) for %s", len(staged), cfg.model)
        summary = orchestrator.run()
        log.info("orchestration finished: %s", summary)
        output = _join_results(encoded, store, cfg)
        return _write_output(output, cfg, prompt_col)
    finally:
        encoded.unpersist()


def _resolve_config(config: BatchConfig | None, options: dict[str, Any]) -> BatchConfig:
    if config is None:
        return BatchConfig.build(options)
    if not options:
        return config
    return BatchConfig.build({**config.model_dump(exclude_unset=True), **options})


def _stage_pending(
    encoded: DataFrame,
    line: Column,
    cfg: BatchConfig,
    provider: Any,
    store: Store,
    orchestrator: Orchestrator,
) -> list[Any]:
    """Stage every request not yet answered nor in flight; return the staged chunks.

    Duplicate requests (equal hashes) need no shuffle here: packing sorts equal hashes next to
    each other and keeps one.
    """
    from pyspark.sql import functions as F

    pending = (
        encoded.where(encoded[C.ERR_CLASS].isNull())
        .select(C.HASH, C.NBYTES, line.alias(C.LINE))
        .join(store.final_hashes(), C.HASH, "left_anti")
        .join(store.inflight_hashes(), C.HASH, "left_anti")
        .join(store.attempts(), C.HASH, "left")
    )
    pending = pending.withColumn(C.ATTEMPT, F.coalesce(F.col(C.ATTEMPT) + 1, F.lit(1)))
    staged = orchestrator.stage(pending)
    if staged.chunks:
        store.record_staged(staged, provider=provider.name, endpoint=cfg.endpoint)
    return list(staged.chunks)


def _join_results(encoded: DataFrame, store: Store, cfg: BatchConfig) -> DataFrame:
    """All input columns plus the result struct, one row per input row."""
    from pyspark.sql import functions as F

    results = store.results_df().select(
        F.col(C.HASH), *[F.col(name).alias(f"__r_{name}") for name in _stored_result_fields()]
    )
    joined = encoded.join(results, C.HASH, "left")
    input_cols = [c for c in encoded.columns if not c.startswith(C.RESERVED_PREFIX)]
    return joined.select(*input_cols, _result_struct().alias(cfg.result_col))


def _stored_result_fields() -> tuple[str, ...]:
    """The results table's per-request fields (not its key nor its bookkeeping columns)."""
    from spark_llm_batch._store_tables import RESULT_COLUMNS

    bookkeeping = {"hash", "final", "updated_at", "format_version"}
    return tuple(name for name, _ in RESULT_COLUMNS if name not in bookkeeping)


def _result_struct() -> Column:
    """The result struct: encode failures first, then the stored result, else 'pending'."""
    from pyspark.sql import functions as F

    encode_failed = F.col(C.ERR_CLASS).isNotNull()
    answered = F.col("__r_status").isNotNull()

    def pick(stored: str, on_encode_failure: Column, otherwise: Column) -> Column:
        return (
            F.when(encode_failed, on_encode_failure)
            .when(answered, F.col(stored))
            .otherwise(otherwise)
        )

    null_str = F.lit(None).cast("string")
    null_long = F.lit(None).cast("long")
    return F.struct(
        pick("__r_text", null_str, null_str).alias("text"),
        pick("__r_status", F.lit("failed"), F.lit("pending")).alias("status"),
        pick("__r_error_class", F.col(C.ERR_CLASS), F.lit("pending")).alias("error_class"),
        pick(
            "__r_error_message",
            F.col(C.ERR_MSG),
            F.lit(
                "not answered yet: its batch is still in flight; run the same call again to collect it"
            ),
        ).alias("error_message"),
        pick("__r_finish_reason", null_str, null_str).alias("finish_reason"),
        pick("__r_input_tokens", null_long, null_long).cast("long").alias("input_tokens"),
        pick("__r_output_tokens", null_long, null_long).cast("long").alias("output_tokens"),
        pick("__r_model", null_str, null_str).alias("model"),
        pick("__r_batch_id", null_str, null_str).alias("batch_id"),
        pick("__r_attempt", F.lit(0), F.lit(0)).cast("int").alias("attempts"),
        F.when(encode_failed, null_str).otherwise(F.col(C.HASH)).alias("request_hash"),
    )


def _write_output(output: DataFrame, cfg: BatchConfig, prompt_col: str) -> DataFrame:
    """Write the output Delta table (overwriting a previous run's) and read it back."""
    spark = output.sparkSession
    target = cfg.output or _default_output_path(cfg, prompt_col)
    writer = output.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if _is_table_name(target):
        writer.saveAsTable(target)
        return spark.read.table(target)
    writer.save(target)
    return spark.read.format("delta").load(target)


def _is_table_name(target: str) -> bool:
    return "/" not in target and ":" not in target


def _default_output_path(cfg: BatchConfig, prompt_col: str) -> str:
    """A stable path under the store, one per distinct call (model, prompt column, request options)."""
    identity = json.dumps(
        {
            "model": cfg.model,
            "prompt_col": prompt_col,
            "system": cfg.system,
            "params": cfg.params,
            "response_format": cfg.response_format,
            "result_col": cfg.result_col,
        },
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    if _is_table_name(cfg.store):
        return f"{cfg.store}.llm_output_{digest}"
    return f"{cfg.store.rstrip('/')}/outputs/{digest}"
