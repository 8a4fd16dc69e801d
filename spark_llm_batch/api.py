"""The one real entry point: :func:`llm_batch`."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

from spark_llm_batch import _columns as C
from spark_llm_batch._handle import BatchRun
from spark_llm_batch.config import EMBEDDINGS, BatchConfig

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from spark_llm_batch._orchestrator import Orchestrator
    from spark_llm_batch._schema import Structured
    from spark_llm_batch._store import Store
    from spark_llm_batch._store_tables import BatchRecord

__all__ = ["RESULT_FIELDS", "BatchRun", "llm_batch", "llm_batch_table", "llm_embed"]

log = logging.getLogger("spark_llm_batch")

_OUTPUT_NAMES = {"attempt": "attempts", "hash": "request_hash"}
_BOOKKEEPING = ("final", "updated_at", "format_version")


def _output_columns() -> list[tuple[str, str, str]]:
    """(stored name, output name, SQL type) of the result struct, from the results table's one
    declaration (:data:`~spark_llm_batch._store_tables.RESULT_COLUMNS`), the key last."""
    from spark_llm_batch._store_tables import RESULT_COLUMNS

    fields = [(n, t) for n, t in RESULT_COLUMNS if n not in _BOOKKEEPING and n != "hash"]
    fields.append(("hash", "STRING"))
    return [(n, _OUTPUT_NAMES.get(n, n), t) for n, t in fields]


RESULT_FIELDS = tuple(name for _, name, _ in _output_columns())
"""The fields of the result struct column, in order: the stored result's fields, ``attempts`` (the
stored ``attempt``) and ``request_hash``."""


@overload
def llm_batch(
    df: DataFrame,
    prompt_col: str | None = ...,
    *,
    config: BatchConfig | None = ...,
    wait: Literal[True] = ...,
    **options: Any,
) -> DataFrame: ...


@overload
def llm_batch(
    df: DataFrame,
    prompt_col: str | None = ...,
    *,
    config: BatchConfig | None = ...,
    wait: Literal[False],
    **options: Any,
) -> BatchRun: ...


@overload
def llm_batch(
    df: DataFrame,
    prompt_col: str | None = ...,
    *,
    config: BatchConfig | None = ...,
    wait: bool,
    **options: Any,
) -> DataFrame | BatchRun: ...


def llm_batch(
    df: DataFrame,
    prompt_col: str | None = None,
    *,
    config: BatchConfig | None = None,
    wait: bool = True,
    **options: Any,
) -> DataFrame | BatchRun:
    """Run one LLM request per row of ``df`` through the provider's batch API.

    Every step is checkpointed in the store, so calling it again (after a crash, or on the same
    data) resumes without paying twice, and a grown table pays only for its new rows.

    With ``wait=False`` (a detached run) the call goes as far as it can without waiting for the
    provider: it stages, uploads and submits what is new, collects whatever has ended, and
    returns a :class:`BatchRun` with the job's status; the cluster may then go away. The same
    call later (or a job scheduled every hour) picks up where it stopped, and the one that finds
    everything collected writes the output table (``BatchRun.complete``, ``BatchRun.result()``).

    Args:
        df: the input rows. Any DataFrame (classic or Spark Connect).
        prompt_col: the column holding each row's prompt: a string, or a whole conversation (an
            array of ``role``/``content`` structs, sent as the request's messages after
            ``system``); or none, with ``template=``.
        config: a ready :class:`~spark_llm_batch.config.BatchConfig`; ``options`` override its fields.
        wait: wait until every batch is collected (default), or return once nothing more can be
            done without waiting (a :class:`BatchRun`).
        **options: any :class:`~spark_llm_batch.config.BatchConfig` field: ``model`` and ``store`` are
            required, and ``template`` (prompts rendered from columns, instead of ``prompt_col``:
            ``"Classify: {review}"``), ``template_nulls``, ``system``, ``params``,
            ``response_format``, ``id_col``, ``output``,
            ``result_col``, ``provider``, ``limits``, ``max_in_flight``, ``transport``,
            ``retry``, ``retry_failed``, ``poll``, ``provider_settings`` are optional.

    Returns:
        The output Delta table, read back: every input column plus the struct column
        ``result_col`` holding :data:`RESULT_FIELDS`. Exactly one row per input row. With
        ``wait=False``, a :class:`BatchRun` instead.

    Raises:
        ConfigError: bad input (names what to fix), raised before any request is sent.
        AuthenticationError: the provider refused the credentials.
        StoreError: the store is unreadable or inconsistent.

    Example:
        >>> out = llm_batch(df, "prompt", model="gpt-4o-mini", store="/lake/llm_store")  # doctest: +SKIP
        >>> out.select("id", "llm.text", "llm.status").show()  # doctest: +SKIP
        >>> out = llm_batch(df, template="Classify: {review}", model="claude-haiku-4-5",
        ...                 store="/lake/llm_store")  # doctest: +SKIP
    """
    cfg = _resolve_config(config, options)
    answered = answer_rows(df, prompt_col, cfg, wait=wait, settle=not wait)
    spark, target = df.sparkSession, answered.target
    if answered.open:
        return BatchRun.of(spark, answered.store, target, complete=False)
    written = write_output(answered.rows, target)
    return written if wait else BatchRun.of(spark, answered.store, target, complete=True)


@dataclass(frozen=True)
class Answered:
    """What :func:`answer_rows` leaves: the output rows (a plan, not written), where they go, the
    store, and whether some row is still unanswered or in flight (known only when asked for:
    ``settle``)."""

    rows: DataFrame
    target: str
    store: Store
    open: bool


def answer_rows(
    df: DataFrame,
    prompt_col: str | None,
    cfg: BatchConfig,
    *,
    wait: bool,
    settle: bool = True,
    target: str | None = None,
) -> Answered:
    """Stage, submit, wait (or not) and collect every request of ``df``; the output rows (at
    ``target``, else the call's default location). With ``settle``, find out whether some row
    is still open (a detached run, or a waited one that gave up).

    Nothing of the input is cached: each pass (staging, the open check, the output join) reads it
    again and re-derives its hashes in the JVM, so no task holds more than a partition's stream,
    whatever the input's partitioning (and serverless, which has no cache, runs the same plan).
    """
    from spark_llm_batch import _encode, _schema, _transport, _validate
    from spark_llm_batch._leases import STAGE, Leases
    from spark_llm_batch._orchestrator import Orchestrator
    from spark_llm_batch._store import Store
    from spark_llm_batch.providers import get_provider

    spark = df.sparkSession
    cfg, structured = _schema.resolve(cfg, spark)
    target = target or cfg.output or default_output(df, cfg, prompt_col)
    _validate.check_input(df, prompt_col, cfg)
    provider = get_provider(cfg)  # resolves credentials: a missing key fails here, before spending
    store = Store.open(spark, cfg.store)
    transport = _transport.choose(cfg.transport, store, provider)

    source, prompt, why_null = _prompts(df, prompt_col, cfg)
    chats = _validate.holds_conversations(source, prompt)
    encoder = _encode.RequestEncoder.build(spark, provider, cfg, messages=chats)
    leases = Leases(store, ttl=cfg.lease_seconds)
    # The output needs only the input, the hash and encode failures; lines are built (in the
    # JVM) for pending rows only.
    encoded = encoder.annotate(source, prompt, why_null)
    with leases.heartbeat():
        orchestrator = Orchestrator(
            spark, store, provider, cfg, transport=transport, leases=leases, job=target
        )
        lines = encoder.line_column(encoded[f"`{prompt}`"], encoded[C.HASH])
        # One run stages at a time: what another run has in flight is skipped, not sent twice.
        with leases.holding(STAGE):
            staged, alone = _stage_pending(encoded, lines, cfg, store, orchestrator)
        log.info("staged %d new batch(es) for %s", len(staged), cfg.model)
        # Nothing else was in flight: what it staged is all the run drives (no second read).
        summary = orchestrator.run(wait=wait, known=staged if alone else None)
    log.info("orchestration finished: %s", summary)
    # A waited run leaves rows open only when it gave up waiting.
    still_open = settle and (not wait or summary.timed_out) and _still_open(encoded, store)
    return Answered(_join_results(encoded, store, cfg, structured), target, store, still_open)


def llm_batch_table(
    spark: SparkSession,
    table: str,
    prompt_col: str | None = None,
    *,
    config: BatchConfig | None = None,
    wait: bool = True,
    incremental: bool = True,
    **options: Any,
) -> DataFrame | BatchRun:
    """:func:`llm_batch` over a table, reading only what changed since the last run.

    ``table`` is a table name (``lake.reviews``) or the path of a Delta table. When it is a Delta
    table with the change data feed on (``ALTER TABLE ... SET TBLPROPERTIES
    (delta.enableChangeDataFeed = true)``), a run after the first reads only the rows inserted
    since the version the output covers, and appends their answers to the output in one commit
    that records the new version. Anything else (the first run, updates or deletes in the input,
    no change feed, another call or input schema, an output changed by someone else, or
    ``incremental=False``) answers the whole table at its current version and overwrites the
    output, as :func:`llm_batch` does. Each row is paid for once either way: the requests go
    through the same store.

    Args:
        spark: the session.
        table: the input: a table name, or a path (read as Delta; another format is read whole).
        prompt_col, config, wait, **options: as for :func:`llm_batch`.
        incremental: read only the changes when possible (default), or always the whole table.

    Returns:
        As :func:`llm_batch`: the output table (one row per input row), or a :class:`BatchRun`.
        A waited run that gives up with changed rows unanswered returns the output plus those
        rows (``pending``) without writing them; the next run reads the same changes again.

    Example:
        >>> out = llm_batch_table(spark, "lake.reviews", "review", model="gpt-4o-mini",
        ...                       store="/lake/llm_store", output="lake.reviews_llm")  # doctest: +SKIP
    """
    from spark_llm_batch._incremental import answer_table

    cfg = _resolve_config(config, options)
    return answer_table(spark, table, prompt_col, cfg, wait=wait, incremental=incremental)


def _still_open(encoded: DataFrame, store: Store) -> bool:
    """Whether some row's request is unanswered or in flight (a retry included)."""
    from pyspark.sql import functions as F

    sent = encoded.where(F.col(C.ERR_CLASS).isNull()).select(C.HASH)
    unanswered = sent.join(store.final_hashes(), C.HASH, "left_anti")
    flying = sent.join(store.inflight_hashes(), C.HASH, "left_semi")
    return bool(unanswered.limit(1).collect() or flying.limit(1).collect())


def _prompts(
    df: DataFrame, prompt_col: str | None, cfg: BatchConfig
) -> tuple[DataFrame, str, Column | None]:
    """The rows with their prompt column, its name, and why a prompt is null (``None``: the
    default reason). A template is rendered into the reserved column :data:`C.PROMPT`, which the
    output leaves out."""
    from spark_llm_batch._template import PromptTemplate

    if cfg.template is None:
        return df, prompt_col or "", None
    template = PromptTemplate.parse(cfg.template)
    rendered = df.withColumn(C.PROMPT, template.render(cfg.template_nulls))
    return rendered, C.PROMPT, template.null_message()


def llm_embed(
    df: DataFrame, text_col: str | None = None, *, config: BatchConfig | None = None, **options: Any
) -> DataFrame:
    """One embedding per row of ``df`` through OpenAI's batch ``/v1/embeddings`` endpoint.

    :func:`llm_batch` with ``openai={"endpoint": "/v1/embeddings"}``: the same store, resume,
    dedup and billing guarantees; each request embeds one text (so a batch holds at most the
    endpoint's 50,000 inputs). The result struct holds ``embedding`` (``array<float>``) in place of
    ``text``; ``params`` may set ``dimensions`` (and ``user``).

    Raises:
        ConfigError: the model is not OpenAI's, or the call sets what embeddings do not take
            (``system``, ``response_format``, other params, a conversation column).

    Example:
        >>> out = llm_embed(df, "text", model="text-embedding-3-small", store="/lake/s")  # doctest: +SKIP
        >>> out.select("id", "llm.embedding").show()  # doctest: +SKIP
    """
    from spark_llm_batch.errors import ConfigError

    cfg = _resolve_config(config, options)
    if cfg.provider_id != "openai":
        raise ConfigError(
            f"embeddings run through OpenAI's batch {EMBEDDINGS} endpoint: model {cfg.model!r} "
            "is not OpenAI's (e.g. model='text-embedding-3-small')"
        )
    embeds = cfg.openai.model_copy(update={"endpoint": EMBEDDINGS})
    return llm_batch(df, text_col, config=cfg.model_copy(update={"openai": embeds}))


def _resolve_config(config: BatchConfig | None, options: dict[str, Any]) -> BatchConfig:
    """``config`` with ``options`` over its fields (or a config of ``options`` alone)."""
    if config is None:
        return BatchConfig.build(options)
    if not options:
        return config
    return BatchConfig.build({**config.model_dump(exclude_unset=True), **options})


def _stage_pending(
    encoded: DataFrame,
    line: Column,
    cfg: BatchConfig,
    store: Store,
    orchestrator: Orchestrator,
) -> tuple[list[BatchRecord], bool]:
    """Stage every request not yet answered nor in flight; return the staged batches, and whether
    no other batch was in flight (of any provider or model).

    Duplicate requests (equal hashes) need no shuffle here: packing sorts equal hashes next to
    each other and keeps one.
    """
    sent = encoded.where(encoded[C.ERR_CLASS].isNull()).select(C.HASH, C.NBYTES, line.alias(C.LINE))
    in_flight = store.current_batches()
    pending = store.unsent(sent, cfg.retry_classes, in_flight=in_flight)
    return orchestrator.stage_and_record(pending), not in_flight


def _join_results(
    encoded: DataFrame, store: Store, cfg: BatchConfig, structured: Structured | None = None
) -> DataFrame:
    """All input columns plus the result struct, one row per input row (with ``parsed``, the
    answer parsed as ``structured`` says, when it is given)."""
    from pyspark.sql import functions as F

    stored = [name for name, _, _ in _output_columns() if name != "hash"]
    results = store.results_df().select(
        F.col(C.HASH), *[F.col(name).alias(f"__r_{name}") for name in stored]
    )
    joined = encoded.join(results, C.HASH, "left")
    input_cols = [c for c in encoded.columns if not c.startswith(C.RESERVED_PREFIX)]
    embeds = cfg.openai.endpoint == EMBEDDINGS
    result = _result_struct(structured, embeds)
    return joined.select(*input_cols, result.alias(cfg.result_col))


_PENDING_MESSAGE = (
    "not answered yet: its batch is still in flight; run the same call again to collect it"
)


def _result_struct(structured: Structured | None = None, embeds: bool = False) -> Column:
    """The result struct: encode failures first, then the stored result, else ``pending``; with
    ``structured``, a succeeded answer parsed in the JVM follows ``text`` as ``parsed``
    (collection recorded the answers that do not parse as ``invalid_output``). With ``embeds``,
    ``embedding`` (``array<float>``, read in the JVM from the stored answer) replaces ``text``."""
    from pyspark.sql import functions as F

    encode_failed = F.col(C.ERR_CLASS).isNotNull()
    answered = F.col("__r_status").isNotNull()
    # What a field says for a row that failed to encode, and for one not answered yet (else null).
    on_failure = {"status": F.lit("failed"), "error_class": F.col(C.ERR_CLASS),
                  "error_message": F.col(C.ERR_MSG), "attempt": F.lit(0)}  # fmt: skip
    pending = {"status": F.lit("pending"), "error_class": F.lit("pending"),
               "error_message": F.lit(_PENDING_MESSAGE), "attempt": F.lit(0)}  # fmt: skip
    fields = []
    for stored, name, kind in _output_columns():
        if stored == "hash":
            value = F.when(encode_failed, F.lit(None)).otherwise(F.col(C.HASH))
        else:
            null = F.lit(None)
            value = (
                F.when(encode_failed, on_failure.get(stored, null))
                .when(answered, F.col(f"__r_{stored}"))
                .otherwise(pending.get(stored, null))
            )
        if stored == "text" and embeds:
            vectors = F.from_json(F.col("__r_text"), "array<struct<embedding: array<float>>>")
            fields.append(F.when(answered, vectors[0]["embedding"]).alias("embedding"))
            continue
        fields.append(value.cast(kind).alias(name))
        if stored == "text" and structured is not None:
            succeeded = answered & (F.col("__r_status") == "succeeded")
            parsed = F.from_json(F.col("__r_text"), structured.kind)
            fields.append(F.when(succeeded, parsed).alias("parsed"))
    return F.struct(*fields)


def write_output(
    output: DataFrame, target: str, *, append: bool = False, note: str | None = None
) -> DataFrame:
    """Write the output Delta table at ``target`` (overwriting a previous run's, or with
    ``append`` adding to it) in one commit whose ``userMetadata`` is ``note``; read it back."""
    from spark_llm_batch._handle import is_table_name, read_output

    writer = output.write.format("delta")
    if append:
        writer = writer.mode("append")
    else:
        writer = writer.mode("overwrite").option("overwriteSchema", "true")
    if note is not None:
        writer = writer.option("userMetadata", note)
    if is_table_name(target):
        writer.saveAsTable(target)
    else:
        writer.save(target)
    return read_output(output.sparkSession, target)


def default_output(df: DataFrame, cfg: BatchConfig, prompt_col: str | None) -> str:
    """A stable location under the store, one per distinct input and call.

    The input counts by its query plan (``semanticHash``: the same table read the same way is the
    same input, grown or not; two tables are two outputs), the call by :func:`call_identity`.
    """
    from spark_llm_batch._handle import is_table_name

    identity = json.dumps(
        {"input": df.semanticHash(), **call_identity(cfg, prompt_col)}, sort_keys=True, default=str
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    if is_table_name(cfg.store):
        return f"{cfg.store}.llm_output_{digest}"
    return f"{cfg.store.rstrip('/')}/outputs/{digest}"


def call_identity(cfg: BatchConfig, prompt_col: str | None) -> dict[str, Any]:
    """What makes two calls answer the same rows alike: the model, prompt column, request
    options and result column (not the store, limits or polling)."""
    return {
        "model": cfg.model,
        "prompt_col": prompt_col,
        "system": cfg.system,
        "params": cfg.params,
        "response_format": cfg.response_format,
        "result_col": cfg.result_col,
        # Only when set: calls without a template keep the locations they had.
        **({"template": [cfg.template, cfg.template_nulls]} if cfg.template else {}),
        **({"endpoint": cfg.openai.endpoint} if cfg.openai.endpoint == EMBEDDINGS else {}),
    }
