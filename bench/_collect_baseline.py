"""The collection path as it was before the single-pass rewrite (frozen, for ``collect_bench``).

A copy of ``spark_llm_batch._collect.collect_batches`` / ``batch_outcomes`` and
``Store.merge_results`` as of 2026-11-27: parse on executors (``mapInArrow``, one task per batch),
shuffle-join with the members, ``groupBy(hash)`` to one row per hash, MERGE (both clauses), then
``batch_outcomes`` joins members with results again. Kept only so the benchmark compares old and
new in the same process; not used by the library.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from spark_llm_batch._collect import provider_batch
from spark_llm_batch._results import (
    RETRYABLE,
    _message,
    _responses_text,
    _str,
    _usage,
    classify_http_error,
)
from spark_llm_batch._store_tables import FORMAT_VERSION, BatchRecord
from spark_llm_batch.config import RetryPolicy
from spark_llm_batch.providers.base import Provider, ProviderBatch, ResultRecord

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame

    from spark_llm_batch._store import Store

__all__ = ["batch_outcomes", "collect_batches", "old_openai_results"]

_ROWS_PER_BATCH = 4096
_PARSED_SCHEMA = (
    "hash STRING, batch_key STRING, status STRING, text STRING, finish_reason STRING, "
    "error_class STRING, error_message STRING, input_tokens BIGINT, output_tokens BIGINT, model STRING"
)
_RECORD_FIELDS = tuple(f.name for f in fields(ResultRecord) if f.name != "custom_id")


@dataclass(frozen=True)
class _Spec:
    key: str
    batch: ProviderBatch | None


class _Parser:
    def __init__(self, provider: Provider, specs: Sequence[_Spec], parse: Any = None) -> None:
        self.provider = provider
        self.specs = list(specs)
        self.parse = parse  # the old line parser (records from raw lines); None: the provider's

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for ids in batches:
            for index in ids.column(0).to_pylist():
                spec = self.specs[index]
                if spec.batch is not None:
                    yield from self._parse(spec.key, self._records(spec.batch))

    def _records(self, batch: ProviderBatch) -> Iterator[ResultRecord]:
        if self.parse is None:
            return self.provider.iter_results(batch)
        return self.parse(self.provider, batch)

    @staticmethod
    def _parse(key: str, records: Iterator[ResultRecord]) -> Iterator[pa.RecordBatch]:
        as_tuple = attrgetter("custom_id", *_RECORD_FIELDS)
        rows: list[tuple[Any, ...]] = []
        for record in records:
            rows.append(as_tuple(record))
            if len(rows) >= _ROWS_PER_BATCH:
                yield _record_batch(key, rows)
                rows = []
        if rows:
            yield _record_batch(key, rows)


def _record_batch(key: str, rows: list[tuple[Any, ...]]) -> pa.RecordBatch:
    import pyarrow as pa

    schema = _arrow_schema()
    columns = list(zip(*rows, strict=True))
    arrays = [pa.array(columns[0], pa.string()), pa.array([key] * len(rows), pa.string())]
    arrays += [
        pa.array(values, f.type) for values, f in zip(columns[1:], list(schema)[2:], strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _arrow_schema() -> pa.Schema:
    import pyarrow as pa

    text = ("hash", "batch_key", "status", "text", "finish_reason", "error_class", "error_message")
    tokens = [pa.field("input_tokens", pa.int64()), pa.field("output_tokens", pa.int64())]
    return pa.schema(
        [*(pa.field(n, pa.string()) for n in text), *tokens, pa.field("model", pa.string())]
    )


def collect_batches(
    store: Store,
    provider: Provider,
    records: Sequence[BatchRecord],
    *,
    retry: RetryPolicy,
    failed_whole: dict[str, str] | None = None,
    parse: Any = None,
) -> None:
    failed_whole = failed_whole or {}
    specs = [_Spec(r.key, None if r.key in failed_whole else provider_batch(r)) for r in records]
    ids = store.spark.range(0, len(specs), 1, numPartitions=max(len(specs), 1))
    parsed = ids.mapInArrow(_Parser(provider, specs, parse), _PARSED_SCHEMA)
    rows = _member_rows(store, records, parsed, failed_whole)
    _merge_results(store, _finalize(_one_per_hash(rows), retry))


def _member_rows(
    store: Store, records: Sequence[BatchRecord], parsed: DataFrame, failed_whole: dict[str, str]
) -> DataFrame:
    from pyspark.sql import functions as F

    meta_rows = [
        (
            r.key,
            r.batch_id,
            r.attempt,
            r.model,
            "batch_failed" if r.key in failed_whole else "missing",
            failed_whole.get(r.key, f"no result line for this request in batch {r.batch_id}"),
        )
        for r in records
    ]
    meta = store.spark.createDataFrame(
        meta_rows,
        "batch_key STRING, batch_id STRING, attempt INT, b_model STRING, fill_class STRING, fill_msg STRING",
    )
    members = (
        store.table("members")
        .where(F.col("batch_key").isin([r.key for r in records]))
        .drop("attempt")
        .join(F.broadcast(meta), "batch_key")
    )
    joined = members.join(parsed, ["hash", "batch_key"], "left")
    answered = F.col("status").isNotNull()
    return joined.select(
        "hash",
        F.coalesce("status", F.lit("failed")).alias("status"),
        "text",
        "finish_reason",
        F.when(answered, F.col("error_class")).otherwise(F.col("fill_class")).alias("error_class"),
        F.when(answered, F.col("error_message"))
        .otherwise(F.col("fill_msg"))
        .alias("error_message"),
        "input_tokens",
        "output_tokens",
        F.coalesce("model", "b_model").alias("model"),
        "batch_id",
        "attempt",
    )


def _one_per_hash(rows: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    rank = F.when(F.col("status") == "succeeded", 1).otherwise(0) * 1_000_000 + F.col("attempt")
    payload = [c for c in rows.columns if c != "hash"]
    best = rows.groupBy("hash").agg(F.max_by(F.struct(*payload), rank).alias("r"))
    return best.select("hash", *[F.col(f"r.{c}").alias(c) for c in payload])


def _finalize(rows: DataFrame, retry: RetryPolicy) -> DataFrame:
    from pyspark.sql import functions as F

    return rows.select(
        *rows.columns,
        F.when(F.col("status") == "succeeded", F.lit(True))
        .otherwise(~_retry_left(retry))
        .alias("final"),
        F.current_timestamp().alias("updated_at"),
        F.lit(FORMAT_VERSION).alias("format_version"),
    )


def _retry_left(retry: RetryPolicy) -> Column:
    from pyspark.sql import functions as F

    condition = F.lit(False)
    for failure_class in sorted(RETRYABLE):
        allowed = retry.attempts_for(failure_class)
        condition = condition | (
            (F.col("error_class") == failure_class) & (F.col("attempt") < allowed)
        )
    return F.coalesce(condition, F.lit(False))


def _merge_results(store: Store, source: DataFrame) -> None:
    view = f"llm_batch_results_{uuid.uuid4().hex}"
    source.createOrReplaceTempView(view)
    try:
        store.spark.sql(
            f"MERGE INTO {store.table_ref('results')} t USING {view} s ON t.hash = s.hash "
            "WHEN MATCHED AND NOT t.final AND s.attempt >= t.attempt THEN UPDATE SET * "
            "WHEN NOT MATCHED THEN INSERT *"
        )
    finally:
        store.spark.catalog.dropTempView(view)


def batch_outcomes(store: Store, keys: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    from pyspark.sql import functions as F

    results = store.table("results").select(
        "hash", "status", "final", F.col("attempt").alias("r_attempt")
    )
    members = store.table("members").where(F.col("batch_key").isin(list(keys)))
    joined = members.join(results, "hash").where(F.col("r_attempt") == F.col("attempt"))
    counts = joined.groupBy("batch_key").agg(
        F.sum(F.when(F.col("status") == "succeeded", 1).otherwise(0)).alias("ok"),
        F.sum(F.when((F.col("status") != "succeeded") & F.col("final"), 1).otherwise(0)).alias(
            "bad"
        ),
        F.sum(F.when(~F.col("final"), 1).otherwise(0)).alias("retry"),
    )
    out = {key: (0, 0, 0) for key in keys}
    for row in counts.collect():
        out[row["batch_key"]] = (int(row["ok"]), int(row["bad"]), int(row["retry"]))
    return out


# ---- the OpenAI result parser as it was (json.loads + a frozen dataclass per line) ------------------


def old_openai_results(provider: Any, batch: ProviderBatch) -> Iterator[ResultRecord]:
    """``OpenAIProvider.iter_results`` as it was: one ``ResultRecord`` per line, via ``json.loads``."""
    for file_id in batch.result_refs:
        for raw in provider._stream_lines(file_id):
            try:
                record = _old_parse_openai_line(raw)
            except ValueError:
                continue  # the old code logged it; its request surfaced as missing
            yield record


def _old_parse_openai_line(line: str | bytes) -> ResultRecord:
    """Parse one line of an OpenAI batch output or error file.

    Raises:
        ValueError: the line is not a JSON object with a ``custom_id``.

    """
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"result line is not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
        raise ValueError("result line has no custom_id")
    return _old_openai_record(obj)


def _old_openai_record(obj: dict[str, Any]) -> ResultRecord:
    """Classify one decoded OpenAI result line (see the module's table)."""
    custom_id = obj["custom_id"]
    response = obj.get("response")
    raw_error = obj.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    if not isinstance(response, dict):
        # Non-HTTP failures (expired, cancelled, timeout) carry no response at all.
        code = _str(error.get("code"))
        return _old_failed(
            custom_id, classify_http_error(None, code=code), error.get("message") or code
        )
    status = response.get("status_code")
    raw_body = response.get("body")
    body: dict[str, Any] = raw_body if isinstance(raw_body, dict) else {}
    if status != 200:
        body_error = body.get("error")
        err: dict[str, Any] = body_error if isinstance(body_error, dict) else error
        error_class = classify_http_error(
            status if isinstance(status, int) else None,
            _str(err.get("type")),
            _str(err.get("code")),
        )
        message = err.get("message") or f"HTTP {status}"
        return _old_failed(custom_id, error_class, message, model=_str(body.get("model")))
    return _old_answer(custom_id, body)


def _old_answer(custom_id: str, body: dict[str, Any]) -> ResultRecord:
    """A 200 response: an answer, a refusal, or an empty truncation."""
    text, refusal, finish_reason = _old_extract(body)
    input_tokens, output_tokens = _usage(body.get("usage"))
    status, error_class, message = "succeeded", None, None
    if refusal is not None or finish_reason == "content_filter":
        finish_reason = finish_reason or "content_filter"
        status, error_class = "failed", "refused"
        message = _message(refusal or "the provider's content filter stopped the answer")
    elif finish_reason == "length" and not text:
        status, error_class = "failed", "truncated"
        message = "the answer hit the token limit before any text was produced: raise max_tokens"
    return ResultRecord(
        custom_id,
        status,
        text=text,
        finish_reason=finish_reason,
        error_class=error_class,
        error_message=message,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        model=_str(body.get("model")),
    )


def _old_extract(body: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """``(text, refusal, finish_reason)`` of a chat, completions or responses body."""
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        finish = _str(choice.get("finish_reason"))
        message = choice.get("message")
        if isinstance(message, dict):  # /v1/chat/completions
            return _str(message.get("content")), _str(message.get("refusal")) or None, finish
        return _str(choice.get("text")), None, finish  # /v1/completions
    output = body.get("output")
    if isinstance(output, list):  # /v1/responses
        return _responses_text(body, output)
    if "data" in body:  # /v1/embeddings and others: keep the whole answer as JSON text
        return json.dumps(body.get("data"), separators=(",", ":")), None, None
    return None, None, None


def _old_failed(
    custom_id: str, error_class: str, message: Any, *, model: str | None = None
) -> ResultRecord:
    return ResultRecord(
        custom_id, "failed", error_class=error_class, error_message=_message(message), model=model
    )
