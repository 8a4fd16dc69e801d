"""Retries re-send the exact staged lines, read back from the batch's chunk file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from spark_llm_batch import _columns as C
from spark_llm_batch._retry_lines import retry_requests
from spark_llm_batch._store import Store
from spark_llm_batch._store_tables import RESULT_COLUMNS, ddl
from spark_llm_batch.errors import StoreError
from tests.orchestrator_fakes import FakeProvider, prompts, stage_rows

ENDPOINT = "/v1/chat/completions"


def _open_results(spark: SparkSession, store: Store, hashes: list[str], *, final: bool) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    rows = [
        (
            h,
            "failed",
            None,
            None,
            "expired",
            "batch expired",
            None,
            None,
            "m",
            "b1",
            1,
            final,
            now,
            1,
        )
        for h in hashes
    ]
    store.merge_results(spark.createDataFrame(rows, ddl(RESULT_COLUMNS).replace("`", "")))


def test_open_requests_come_back_with_their_staged_bytes_and_the_next_attempt(
    spark: SparkSession, tmp_path: Path
) -> None:
    store = Store.open(spark, str(tmp_path / "store"))
    rows = prompts(5)
    staged = stage_rows(spark, rows, tmp_path, per_chunk=3, record_members=store.append_members)
    records = store.record_staged(staged, provider="fake", endpoint=ENDPOINT)
    assert len(records) == 2
    open_hashes = [rows[0][0], rows[4][0]]  # one in each chunk file
    _open_results(spark, store, open_hashes, final=False)
    _open_results(spark, store, [rows[1][0]], final=True)  # answered for good: not re-sent

    got = retry_requests(store, FakeProvider.build(), records).collect()

    lines = {h: line for h, line, _ in rows}
    assert sorted(r[C.HASH] for r in got) == sorted(open_hashes)
    for row in got:
        assert row[C.LINE] == lines[row[C.HASH]]
        assert row[C.NBYTES] == len(lines[row[C.HASH]].encode()) + 1
        assert row[C.ATTEMPT] == 2


def test_a_vanished_chunk_file_is_a_store_error_naming_the_batch(
    spark: SparkSession, tmp_path: Path
) -> None:
    store = Store.open(spark, str(tmp_path / "store"))
    rows = prompts(2)
    records = store.record_staged(
        stage_rows(spark, rows, tmp_path, per_chunk=2, record_members=store.append_members),
        provider="fake",
        endpoint=ENDPOINT,
    )
    _open_results(spark, store, [rows[0][0]], final=False)
    Path(records[0].uri).unlink()
    with pytest.raises(StoreError, match=records[0].key):
        retry_requests(store, FakeProvider.build(), records).collect()
