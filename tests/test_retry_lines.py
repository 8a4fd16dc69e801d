"""Retries re-send the exact staged lines, read back from the batch's rows in ``chunks``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pyspark.sql import SparkSession

from spark_llm_batch import _columns as C
from spark_llm_batch._retry_lines import retry_requests
from spark_llm_batch._store import Store
from spark_llm_batch._store_tables import RESULT_COLUMNS, ddl
from tests.orchestrator_fakes import prompts, stage_rows

ENDPOINT = "/v1/chat/completions"


def _open_results(
    spark: SparkSession,
    store: Store,
    hashes: list[str],
    *,
    final: bool,
    error_class: str = "expired",
) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    rows = [
        (h, "failed", None, None, error_class, "it failed", None, None, "m", "b1", 1, final, now, 1)
        for h in hashes
    ]
    store.merge_results(spark.createDataFrame(rows, ddl(RESULT_COLUMNS).replace("`", "")))


def test_open_requests_come_back_with_their_staged_bytes_and_the_next_attempt(
    spark: SparkSession, tmp_path: Path
) -> None:
    store = Store.open(spark, str(tmp_path / "store"))
    rows = prompts(5)
    staged = stage_rows(spark, rows, per_chunk=3, sink=store)
    records = store.record_staged(staged, provider="fake", endpoint=ENDPOINT)
    assert len(records) == 2
    open_hashes = [rows[0][0], rows[4][0]]  # one in each chunk
    _open_results(spark, store, open_hashes, final=False)
    _open_results(spark, store, [rows[1][0]], final=True)  # answered for good: not re-sent

    got = retry_requests(store, records).collect()

    lines = {h: line for h, line, _ in rows}
    assert sorted(r[C.HASH] for r in got) == sorted(open_hashes)
    for row in got:
        assert row[C.LINE] == lines[row[C.HASH]]
        assert row[C.NBYTES] == len(lines[row[C.HASH]].encode()) + 1
        assert row[C.ATTEMPT] == 2


def test_auth_refusals_and_requests_in_flight_elsewhere_are_not_retried(
    spark: SparkSession, tmp_path: Path
) -> None:
    store = Store.open(spark, str(tmp_path / "store"))
    rows = prompts(4)
    records = store.record_staged(
        stage_rows(spark, rows, per_chunk=4, sink=store), provider="fake", endpoint=ENDPOINT
    )
    expired, refused, elsewhere, answered = (h for h, _, _ in rows)
    _open_results(spark, store, [expired, elsewhere], final=False)
    _open_results(spark, store, [refused], final=False, error_class="auth")  # the next run's
    _open_results(spark, store, [answered], final=True)
    # ``elsewhere`` is also a member of another batch still in flight (a later run staged it).
    other = stage_rows(spark, [rows[2]], per_chunk=1, sink=store)
    store.record_staged(other, provider="fake", endpoint=ENDPOINT)

    got = retry_requests(store, records).collect()

    assert [(r[C.HASH], r[C.ATTEMPT]) for r in got] == [(expired, 2)]
