"""The pipeline over Spark Connect (invariant 6): run by ``tests/test_connect.py`` in its own process.

Not collected by a plain ``pytest`` run (the name does not start with ``test_``): a process is
either classic or Connect (see ``tests/connect_fixtures.py``). Run it alone with
``pytest tests/connect_cases.py``.

The server shares no temporary files with this client (``tests/connect_fixtures.py``), so store
locations are paths only the server resolves (the ``server_dir`` fixture), and these tests read the
store through Spark, never from the client's disk: a client on Databricks serverless has none of
the server's files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import spark_llm_batch
from spark_llm_batch.emulator import _answers
from tests.pipeline_helpers import MODELS, SYSTEM, billed_counts, pipeline_options
from tests.test_sql import sql_args

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import SparkSession

    from spark_llm_batch.emulator import Emulator

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def server_dir() -> Iterator[str]:
    """A fresh directory path that only the Connect server resolves (in its private ``/tmp``).

    The server's private ``/tmp`` goes away with it, so there is nothing to remove there. After the
    test the client must still have nothing at that path: anything there was written by the
    client, which on a real remote client would have gone nowhere (it is removed, so that it does
    not pile up in the client's ``/tmp``).
    """
    path = f"/tmp/llm-connect-{uuid.uuid4().hex}"
    yield path
    if os.path.lexists(path):
        found = sorted(str(p) for p in Path(path).rglob("*"))[:20]
        shutil.rmtree(path, ignore_errors=True)
        pytest.fail(f"the client wrote at the server-only location {path}: {found}")


def _options(emu: Emulator, store: str, provider: str) -> dict[str, Any]:
    # pipeline_helpers spells the store with str(); a Path here is only a way to pass the string.
    return pipeline_options(emu, Path(store), max_requests=15, provider=provider)


def test_dataframes_get_llm_batch_and_get_session_finds_the_connect_session(
    connect_spark: SparkSession,
) -> None:
    from pyspark.sql import DataFrame
    from pyspark.sql.connect.dataframe import DataFrame as ConnectDataFrame
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    assert isinstance(connect_spark, ConnectSession)
    assert isinstance(connect_spark.range(1), ConnectDataFrame)
    assert ConnectDataFrame.llm_batch is DataFrame.llm_batch
    assert spark_llm_batch.get_session() is connect_spark
    # Another thread has no active session of its own: it gets the default one, not a new one.
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(spark_llm_batch.get_session).result() is connect_spark


def test_get_session_connects_to_spark_remote_without_local_settings(connect_url: str) -> None:
    # A fresh client process with SPARK_REMOTE set and no session yet: get_session connects to the
    # server as it is (local_session would push shuffle partitions 8 and its other defaults).
    probe = (
        "import spark_llm_batch; s = spark_llm_batch.get_session(); "
        "print(type(s).__module__, s.conf.get('spark.sql.shuffle.partitions'))"
    )
    env = {**os.environ, "SPARK_REMOTE": connect_url}
    env.pop("SPARK_CONNECT_MODE_ENABLED", None)
    run = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["pyspark.sql.connect.session", "4"]


def test_server_and_client_share_no_temporary_files(
    connect_spark: SparkSession, server_dir: str, tmp_path: Path
) -> None:
    from pyspark.errors import AnalysisException

    # Control: the repository is shared on purpose (a cluster has the library installed), so the
    # misses below are the private mounts at work, not a server that cannot read files at all.
    assert connect_spark.read.text(str(REPO / "pyproject.toml")).count() > 0

    # The client's own files, in pytest's tmp_path (and its base directory), are not on the server.
    client_file = tmp_path / "client-only.txt"
    client_file.write_text("written by the client\n")
    with pytest.raises(AnalysisException, match="PATH_NOT_FOUND"):
        connect_spark.read.text(str(client_file)).collect()
    with pytest.raises(AnalysisException, match="PATH_NOT_FOUND"):
        connect_spark.sql(f"SELECT * FROM text.`{tmp_path.parent}`").collect()

    # What the server writes in its /tmp, it reads back, and the client's disk does not have.
    probe = f"{server_dir}/probe"
    connect_spark.createDataFrame([("written by the server",)], "value string").write.text(probe)
    assert [r.value for r in connect_spark.read.text(probe).collect()] == ["written by the server"]
    assert not os.path.lexists(server_dir)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_llm_batch_on_connect_answers_every_row_once_and_reruns_for_free(
    connect_spark: SparkSession,
    fresh_emulator: Callable[..., Emulator],
    server_dir: str,
    provider: str,
) -> None:
    emu = fresh_emulator(processing_seconds=1.0, clock_speed=50.0)
    store = f"{server_dir}/store"
    options = _options(emu, store, provider)
    rows = [(i, f"Summarise item number {i}") for i in range(40)]
    df = connect_spark.createDataFrame(rows, "id long, prompt string").repartition(3)

    out = df.llm_batch("prompt", id_col="id", **options)

    got = {r["id"]: r for r in out.select("id", "prompt", "llm.*").collect()}
    assert len(got) == out.count() == len(rows)
    for i, prompt in rows:
        assert got[i]["status"] == "succeeded", got[i]
        assert got[i]["text"] == _answers.expected_text(
            prompt, model=MODELS[provider], system=SYSTEM
        )
        assert got[i]["attempts"] == 1
    assert len({r["batch_id"] for r in got.values()}) >= 3  # 40 requests, 15 per batch
    billed = billed_counts(emu)
    assert len(billed) == len(rows)
    assert set(billed.values()) == {1}
    # The store is the server's: read through Spark, it holds one final answer per request.
    results = connect_spark.read.format("delta").load(f"{store}/results")
    assert results.filter("final AND status = 'succeeded'").count() == len(rows)

    # df.transform composes, and a re-run of the same call submits nothing.
    again = df.transform(lambda d: d.llm_batch("prompt", id_col="id", **options))
    assert {r["id"]: r["text"] for r in again.select("id", "llm.text").collect()} == {
        i: row["text"] for i, row in got.items()
    }
    assert len(emu.ledger()) == len(rows)


def test_templates_conversations_and_typed_answers_on_connect(
    connect_spark: SparkSession, fresh_emulator: Callable[..., Emulator], server_dir: str
) -> None:
    # What the client builds (a template, a DDL response_format parsed by the server, a
    # conversation column) runs on Connect as on classic Spark.
    emu = fresh_emulator(processing_seconds=1.0, clock_speed=50.0)
    options = _options(emu, f"{server_dir}/store", "anthropic")
    rows = [(i, f"product {i}", f"review {i}") for i in range(6)]
    df = connect_spark.createDataFrame(rows, "id long, product string, review string")
    typed = df.llm_batch(
        template="Classify {review} of {product}",
        response_format="label STRING, stars INT",
        id_col="id",
        **options,
    )
    assert typed.schema["llm"].dataType["parsed"].dataType.simpleString() == (
        "struct<label:string,stars:int>"
    )
    assert typed.where("llm.status = 'succeeded' AND llm.parsed.stars IS NOT NULL").count() == 6
    chats = connect_spark.createDataFrame(
        [(i, [{"role": "user", "content": f"hi {i}"}]) for i in range(4)],
        "id long, messages array<struct<role: string, content: string>>",
    )
    out = chats.llm_batch("messages", id_col="id", **options)
    got = {r["id"]: r["text"] for r in out.select("id", "llm.text").collect()}
    for i in range(4):
        assert got[i] == _answers.expected_text(
            [("user", f"hi {i}")], model=MODELS["anthropic"], system=SYSTEM
        )
    assert set(billed_counts(emu).values()) == {1}


@pytest.fixture
def sql_emulator(
    connect_spark: SparkSession,
    fresh_emulator: Callable[..., Emulator],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Emulator]:
    """An emulator whose OpenAI credentials are in the environment (SQL takes them from there),
    with the SQL forms registered on the Connect session; unregistered after."""
    emu = fresh_emulator(processing_seconds=1.0, clock_speed=50.0)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-emulator")
    monkeypatch.setenv("OPENAI_BASE_URL", emu.openai_base_url)
    spark_llm_batch.register_sql(connect_spark)
    try:
        yield emu
    finally:
        vars(connect_spark).pop("sql", None)
        connect_spark.sql("DROP TEMPORARY FUNCTION IF EXISTS llm_query")


def test_sql_forms_on_connect(
    connect_spark: SparkSession, sql_emulator: Emulator, server_dir: str
) -> None:
    # register_sql wraps the Connect session's sql: the table function runs the pipeline from
    # this client, the scalar runs in the server's Python workers with the client's credentials.
    emu = sql_emulator
    store, table = f"{server_dir}/store", f"{server_dir}/questions"
    rows = [(i, f"Question {i}") for i in range(12)]
    connect_spark.createDataFrame(rows, "id long, prompt string").write.format("delta").save(table)
    api = (
        connect_spark.read.format("delta")
        .load(table)
        .llm_batch("prompt", id_col="id", **_options(emu, store, "openai"))
    )
    expected = {r["id"]: (r["text"], r["status"]) for r in api.select("id", "llm.*").collect()}
    billed = billed_counts(emu)
    assert len(billed) == len(rows)

    args = sql_args("openai", store, max_requests=15)
    out = connect_spark.sql(
        f"SELECT id, llm.text, llm.status FROM llm_batch(TABLE(delta.`{table}`), {args}) "
        "WHERE id >= 0"
    )
    assert {r["id"]: (r["text"], r["status"]) for r in out.collect()} == expected
    assert billed_counts(emu) == billed  # answered from the server's store: nothing sent

    scalar = connect_spark.sql(
        f"SELECT id, prompt, llm_query('gpt-4o-mini', prompt) AS answer "
        f"FROM delta.`{table}` WHERE id < 3"
    )
    got = {r["id"]: r["answer"] for r in scalar.collect()}
    assert got == {
        i: _answers.expected_text(f"Question {i}", model=MODELS["openai"]) for i in range(3)
    }
    assert [e["batch_id"] for e in emu.ledger()[len(rows) :]] == [None] * 3


def test_a_daily_sql_statement_on_connect_appends_only_the_grown_rows(
    connect_spark: SparkSession, sql_emulator: Emulator, server_dir: str
) -> None:
    # SQL over a lakehouse table from a Connect client: the table function's TABLE(delta.`...`)
    # runs llm_batch_table, whose second run reads the change feed and appends to the output.
    emu = sql_emulator
    store, table, output = (f"{server_dir}/{name}" for name in ("store", "faq", "answers"))
    connect_spark.sql(
        f"CREATE TABLE delta.`{table}` (id BIGINT, prompt STRING) USING DELTA "
        "TBLPROPERTIES (delta.enableChangeDataFeed = true)"
    )

    def grow(first: int, last: int) -> None:
        rows = [(i, f"Daily question {i}") for i in range(first, last)]
        frame = connect_spark.createDataFrame(rows, "id long, prompt string")
        frame.write.format("delta").mode("append").save(table)

    def answered() -> list[int]:
        rows = connect_spark.sql(
            f"SELECT id, llm.status, llm.text FROM llm_batch(TABLE(delta.`{table}`), "
            f"{sql_args('openai', store, max_requests=15)}, output => '{output}')"
        ).collect()
        for row in rows:
            expected = _answers.expected_text(
                f"Daily question {row['id']}", model=MODELS["openai"], system=SYSTEM
            )
            assert (row["status"], row["text"]) == ("succeeded", expected)
        return sorted(row["id"] for row in rows)

    grow(0, 8)
    assert answered() == list(range(8))
    grow(8, 12)
    emu.clear_ledger()
    assert answered() == list(range(12))
    billed = billed_counts(emu)
    assert set(billed.values()) == {1}
    assert len(billed) == 4  # the grown rows alone were sent
    history = connect_spark.sql(f"DESCRIBE HISTORY delta.`{output}`").collect()
    latest = max(history, key=lambda row: row["version"])
    # The second statement appended the new rows' answers (one commit): it read the feed.
    assert (latest["operation"], latest["operationParameters"]["mode"]) == ("WRITE", "Append")
    assert len(history) == 2
