"""The SQL forms (``spark_llm_batch.sql``): the batch table function ``llm_batch(TABLE(...), ...)``
and the real-time scalar ``llm_query``, after ``register_sql(spark)``.

The table function answers as the DataFrame API does (same rows, classes, store: a SQL run after
a DataFrame run bills nothing); the scalar answers as the emulator does, billed at real time (no
batch id in the ledger), and refuses a task with more rows than its cap. The parser's cases run
without Spark.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from spark_llm_batch import register_sql
from spark_llm_batch._sql_parse import find_calls, tokens
from spark_llm_batch.emulator import Fault, _answers, marker
from spark_llm_batch.errors import ConfigError
from tests.pipeline_helpers import (
    MODELS,
    OPENAI_FIRST,
    SYSTEM,
    base_url,
    billed_counts,
    pipeline_options,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from spark_llm_batch.emulator import Emulator

API_KEY = "sk-test-sql-" + "k3y" * 6


def sql_args(provider: str, store: str, prompt: str = "prompt", max_requests: int = 40) -> str:
    """The table function's arguments matching ``pipeline_options(..., max_requests=...)``
    (credentials aside: SQL takes them from the environment)."""
    poll = '{"initial_seconds": 0.05, "max_seconds": 0.2, "progress_seconds": 1.0}'
    return (
        f"prompt => '{prompt}', model => '{MODELS[provider]}', store => '{store}', "
        f"id_col => 'id', system => '{SYSTEM}', params => '{{\"temperature\": 0}}', "
        f"limits => '{{\"max_requests\": {max_requests}}}', poll => '{poll}'"
    )


@pytest.fixture
def quick_emulator(fresh_emulator: Callable[..., Emulator]) -> Emulator:
    return fresh_emulator(processing_seconds=1.0, clock_speed=50.0)


@pytest.fixture
def sql_spark(
    spark: SparkSession, quick_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SparkSession]:
    """``spark`` with the SQL forms registered, credentials of ``quick_emulator`` in the
    environment; unregistered after (the session is shared with other tests)."""
    for provider, prefix in (("openai", "OPENAI"), ("anthropic", "ANTHROPIC")):
        monkeypatch.setenv(f"{prefix}_API_KEY", API_KEY)
        monkeypatch.setenv(f"{prefix}_BASE_URL", base_url(quick_emulator, provider))
    original = spark.sql
    register_sql(spark)
    yield spark
    vars(spark).pop("sql", None)
    assert spark.sql == original
    spark.sql("DROP TEMPORARY FUNCTION IF EXISTS llm_query")


def _input_rows() -> list[tuple[int, str | None]]:
    rows: list[tuple[int, str | None]] = [(i, f"Review number {i}") for i in range(20)]
    rows[3] = (3, None)  # invalid_input, never sent
    rows[4] = (4, rows[5][1])  # a duplicate prompt, sent once
    rows[6] = (6, f"Review six {marker(Fault.REFUSED)}")  # refused (billed: it was answered)
    return rows


def _by_id(df: Any) -> dict[int, tuple[Any, ...]]:
    rows = df.select("id", "llm.text", "llm.status", "llm.error_class").collect()
    return {r["id"]: (r["text"], r["status"], r["error_class"]) for r in rows}


@pytest.mark.parametrize("provider", OPENAI_FIRST)
def test_the_table_function_answers_as_the_dataframe_api_and_bills_nothing_twice(
    sql_spark: SparkSession, quick_emulator: Emulator, tmp_path: Path, provider: str
) -> None:
    rows = _input_rows()
    table = str(tmp_path / "reviews")
    sql_spark.createDataFrame(rows, "id long, prompt string").write.format("delta").save(table)
    store = str(tmp_path / "store")

    options = pipeline_options(quick_emulator, Path(store), max_requests=40, provider=provider)
    api = sql_spark.read.format("delta").load(table).llm_batch("prompt", id_col="id", **options)
    expected = _by_id(api)
    billed = billed_counts(quick_emulator)
    assert set(billed.values()) == {1}
    assert len(billed) == len({p for _, p in rows if p is not None})  # the duplicate once
    assert expected[3][1:] == ("failed", "invalid_input")
    assert expected[6][1:] == ("failed", "refused")
    assert expected[0] == (
        _answers.expected_text(rows[0][1] or "", model=MODELS[provider], system=SYSTEM),
        "succeeded",
        None,
    )

    out = sql_spark.sql(
        f"SELECT * FROM llm_batch(TABLE(delta.`{table}`), {sql_args(provider, store)})"
    )
    assert out.count() == len(rows)
    assert _by_id(out) == expected
    assert out.columns == api.columns
    assert billed_counts(quick_emulator) == billed  # answered from the store: nothing sent


def test_queries_several_calls_and_sql_around_them(
    sql_spark: SparkSession, quick_emulator: Emulator, tmp_path: Path
) -> None:
    rows = [(i, f"Question {i}") for i in range(8)]
    sql_spark.createDataFrame(rows, "id long, prompt string").createOrReplaceTempView("sql_faq")
    store = str(tmp_path / "store")
    statement = f"""
        -- a comment naming llm_batch(TABLE(nowhere)) is not a call
        SELECT a.id, a.llm.text AS answer, b.llm.text AS shouted,
               'llm_batch(TABLE(nowhere), x => 1)' AS literal
        FROM LLM_Batch(TABLE(sql_faq), {sql_args("openai", store)}) AS a
        JOIN llm_batch(
            TABLE(SELECT id, upper(prompt) AS shout FROM sql_faq WHERE id < 5 /* ) */),
            {sql_args("openai", store, prompt="shout")}
        ) AS b ON a.id = b.id
        WHERE a.llm.status = 'succeeded' /* llm_batch(TABLE(nowhere)) */
    """
    got = {r["id"]: r for r in sql_spark.sql(statement).collect()}

    assert sorted(got) == [0, 1, 2, 3, 4]
    model = MODELS["openai"]
    for i, row in got.items():
        assert row["answer"] == _answers.expected_text(f"Question {i}", model=model, system=SYSTEM)
        shouted = _answers.expected_text(f"QUESTION {i}", model=model, system=SYSTEM)
        assert row["shouted"] == shouted
        assert row["literal"] == "llm_batch(TABLE(nowhere), x => 1)"
    billed = billed_counts(quick_emulator)
    assert len(billed) == 8 + 5
    assert set(billed.values()) == {1}


def test_a_daily_statement_over_a_grown_delta_table_reads_only_its_new_rows(
    sql_spark: SparkSession, quick_emulator: Emulator, tmp_path: Path
) -> None:
    table, output, store = tmp_path / "faq", tmp_path / "answers", str(tmp_path / "store")
    sql_spark.sql(
        f"CREATE TABLE delta.`{table}` (id BIGINT, prompt STRING) USING DELTA "
        "TBLPROPERTIES (delta.enableChangeDataFeed = true)"
    )

    def grow(first: int, last: int) -> None:
        rows = [(i, f"Daily question {i}") for i in range(first, last)]
        sql_spark.createDataFrame(rows, "id long, prompt string").write.format("delta").mode(
            "append"
        ).save(str(table))

    def statement(extra: str = "") -> str:
        return (
            f"SELECT id, llm.status, llm.text FROM llm_batch(TABLE(delta.`{table}`), "
            f"{sql_args('openai', store)}, output => '{output}'{extra})"
        )

    def answered(rows: list[Any]) -> list[int]:
        model = MODELS["openai"]
        for row in rows:
            prompt = f"Daily question {row['id']}"
            expected = _answers.expected_text(prompt, model=model, system=SYSTEM)
            assert (row["status"], row["text"]) == ("succeeded", expected)
        return sorted(row["id"] for row in rows)

    grow(0, 12)
    assert answered(sql_spark.sql(statement()).collect()) == list(range(12))
    assert len(billed_counts(quick_emulator)) == 12

    old_files = set(table.glob("*.parquet"))
    grow(12, 16)
    aside = tmp_path / "aside"
    aside.mkdir()
    for path in old_files:  # a statement that read the first 12 rows again would fail now
        shutil.move(path, aside / path.name)
    quick_emulator.clear_ledger()
    assert answered(sql_spark.sql(statement()).collect()) == list(range(16))
    billed = billed_counts(quick_emulator)
    assert len(billed) == 4  # the new rows alone were read and sent
    assert set(billed.values()) == {1}

    for path in aside.iterdir():
        shutil.move(path, table / path.name)
    quick_emulator.clear_ledger()  # incremental => false: the whole table, answered by the store
    assert answered(sql_spark.sql(statement(", incremental => false")).collect()) == list(range(16))
    assert billed_counts(quick_emulator) == {}


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ("llm_batch(TABLE(sql_bad), prompt => 'prompt', modle => 'gpt-4o-mini', store => 's')",
         "unknown argument.*modle"),
        ("llm_batch(sql_bad, prompt => 'prompt', model => 'gpt-4o-mini', store => 's')",
         r"TABLE\(<table name>\)"),
        ("llm_batch(TABLE(sql_bad), prompt => 'prompt', store => 's')", "model: Field required"),
        ("llm_batch(TABLE(sql_bad), prompt => 'prompt', model => 'gpt-4o-mini', store => 's', "
         "params => '{temperature: 0}')", "'params' is not valid JSON"),
        ("llm_batch(TABLE(sql_bad), 'prompt', model => 'gpt-4o-mini', store => 's')",
         "every argument is named"),
        ("llm_batch(TABLE(sql_bad), prompt => 'prompt', model => 'gpt-4o-mini', store => 's', "
         "max_in_flight => 'many')", "max_in_flight"),
        ("llm_batch(TABLE(sql_bad), prompt => prompt, model => 'gpt-4o-mini', store => 's')",
         "'prompt' must be a SQL literal"),
        ("llm_batch(TABLE(sql_bad), model => 'gpt-4o-mini', store => 's')",
         "give prompt => '<column>'"),
        ("llm_batch(TABLE(sql_bad), prompt => 'prompt', model => 'gpt-4o-mini', store => 's', "
         "incremental => 'yes')", "incremental must be true or false"),
        ("llm_batch(TABLE(SELECT * FROM sql_bad), prompt => 'prompt', model => 'gpt-4o-mini', "
         "store => 's', incremental => true)", r"incremental applies to TABLE\(<table name>\)"),
    ],
)  # fmt: skip
def test_bad_arguments_raise_config_error_before_anything_is_sent(
    sql_spark: SparkSession, quick_emulator: Emulator, tmp_path: Path, call: str, error: str
) -> None:
    sql_spark.createDataFrame([(1, "hi")], "id long, prompt string").createOrReplaceTempView(
        "sql_bad"
    )
    good = f"llm_batch(TABLE(sql_bad), {sql_args('openai', str(tmp_path / 'store'))})"
    with pytest.raises(ConfigError, match=error):
        # The good call comes first: every call is checked before any runs.
        sql_spark.sql(f"SELECT * FROM {good} JOIN {call} USING (id)")
    assert quick_emulator.ledger() == []
    assert not (tmp_path / "store").exists()


def test_statements_without_a_call_pass_through(sql_spark: SparkSession) -> None:
    original = sql_spark.sql.__wrapped__  # type: ignore[attr-defined]
    wrapped = sql_spark.sql
    register_sql(sql_spark)  # registering again wraps nothing twice
    assert sql_spark.sql is wrapped
    assert sql_spark.sql.__wrapped__ == original  # type: ignore[attr-defined]
    row = sql_spark.sql("SELECT 'llm_batch(TABLE(t))' AS s, {v} AS v", v=3).first()
    assert row is not None
    # kwargs (Python format arguments) reach the original, which formats them.
    assert (row["s"], row["v"]) == ("llm_batch(TABLE(t))", 3)


def test_the_wrapper_hands_statement_args_and_kwargs_to_the_original() -> None:
    # Parameter markers are bound by Spark (which in this environment binds none, wrapped or
    # not): a stand-in session shows what reaches the original.
    class Session:
        udf = SimpleNamespace(register=lambda name, function: None)

        def sql(self, sqlQuery: str, args: Any = None, **kwargs: Any) -> Any:
            return (sqlQuery, args, kwargs)

    session = Session()
    register_sql(session)  # type: ignore[arg-type]
    statement = "SELECT :n, '{v}' -- llm_batch(TABLE(t))"
    assert session.sql(statement, {"n": 1}, v=2) == (statement, {"n": 1}, {"v": 2})


def test_the_scalar_answers_in_real_time_and_caps_rows_per_task(
    sql_spark: SparkSession, quick_emulator: Emulator
) -> None:
    options = '{"system": "Be brief.", "params": {"temperature": 0}}'
    statement = f"""
        SELECT id, llm_query('gpt-4o-mini', concat('Question ', id)) AS gpt,
               llm_query('{MODELS["anthropic"]}', concat('Question ', id), '{options}') AS claude,
               llm_query('gpt-4o-mini', CAST(NULL AS STRING)) AS nothing
        FROM range(4)
    """
    got = {r["id"]: r for r in sql_spark.sql(statement).collect()}

    for i in range(4):
        prompt = f"Question {i}"
        assert got[i]["gpt"] == _answers.expected_text(prompt, model="gpt-4o-mini")
        assert got[i]["claude"] == _answers.expected_text(
            prompt, model=MODELS["anthropic"], system="Be brief."
        )
        assert got[i]["nothing"] is None  # a null prompt is not sent
    ledger = quick_emulator.ledger()
    assert sorted((e["provider"], e["batch_id"]) for e in ledger) == sorted(
        [("openai", None)] * 4 + [("anthropic", None)] * 4
    )

    # One task with more rows than the cap fails before sending any of them.
    register_sql(sql_spark, max_realtime_rows=5)
    with pytest.raises(Exception, match="llm_query got more than 5 rows in one Spark task"):
        sql_spark.sql("SELECT llm_query('gpt-4o-mini', 'x' || id) FROM range(0, 6, 1, 1)").collect()
    # Five rows in one task are fine; a refused answer fails the query with its class.
    five = sql_spark.sql("SELECT llm_query('gpt-4o-mini', 'y' || id) AS a FROM range(0, 5, 1, 1)")
    assert all(row["a"].startswith("Emulated answer ") for row in five.collect())
    refused = f"SELECT llm_query('gpt-4o-mini', '{marker(Fault.REFUSED)}')"
    with pytest.raises(Exception, match=r"did not answer the prompt \(refused\)") as info:
        sql_spark.sql(refused).collect()
    assert API_KEY not in str(info.value)
    assert len(quick_emulator.ledger()) == 8 + 5 + 1


# ---- the parser (no Spark) -----------------------------------------------------------------------


def test_tokens_respect_strings_escapes_comments_and_backticks() -> None:
    sql = r"""a=>'it\'s' "q\"x" r'\n' /* x /* nested */ y */ `b``c` -- rest
    'a' 'b' 1.5e3"""
    toks = tokens(sql)
    assert [(t.kind, t.text) for t in toks] == [
        ("word", "a"), ("punct", "=>"), ("string", "it's"), ("string", 'q"x'),
        ("string", r"\n"), ("quoted", "`b``c`"), ("string", "a"), ("string", "b"),
        ("word", "1"), ("punct", "."), ("word", "5e3"),
    ]  # fmt: skip
    assert tokens("'\\u00e9\\t'")[0].text == "é\t"


def test_find_calls_reads_tables_queries_and_literals() -> None:
    sql = (
        "SELECT * FROM Llm_Batch(TABLE(`my db`.reviews), prompt => 'p', max_in_flight => 3, "
        "lease_seconds => 1.5, retry_failed => true, system => 'a' 'b', output => null) "
        'JOIN llm_batch ( TABLE ( SELECT f(x, (1)) FROM t ) , prompt => "q" ) USING (id)'
    )
    first, second = find_calls(sql)
    assert (first.source, first.is_table) == ("`my db`.reviews", True)
    assert first.args == {"prompt": "p", "max_in_flight": 3, "lease_seconds": 1.5,
                          "retry_failed": True, "system": "ab", "output": None}  # fmt: skip
    assert sql[first.start : first.end].startswith("Llm_Batch(")
    assert sql[first.end - 1] == ")"
    assert (second.source, second.is_table) == ("SELECT f(x, (1)) FROM t", False)
    assert second.args == {"prompt": "q"}
    assert find_calls("SELECT llm_batch_x(TABLE(t)), 'llm_batch(' -- llm_batch(\n") == []
    assert find_calls("SELECT 'unterminated llm_batch(TABLE(t)") == []  # Spark reports it
