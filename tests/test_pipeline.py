"""End to end: DataFrame -> provider batches on the emulator -> Delta output, exactly once.

Every test runs for each provider (``provider``: OpenAI's Batch API, Anthropic's Message Batches),
through the real SDKs; the emulator's ledger checks that each request is billed once. Tests
parametrized with ``OPENAI_FIRST`` run Anthropic only in the slow suite (``make test-slow``).
"""

from __future__ import annotations

import datetime
import logging
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic
import openai
import pytest

from spark_llm_batch.config import BatchLimits
from spark_llm_batch.emulator import _answers
from tests.pipeline_helpers import (
    MODELS,
    OPENAI_FIRST,
    SYSTEM,
    base_url,
    billed_counts,
    pipeline_options,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import SparkSession

    from spark_llm_batch.emulator import Emulator

API_KEY = "sk-test-secret-4f7a9c"


@pytest.fixture(params=["openai", "anthropic"])
def provider(request: pytest.FixtureRequest) -> str:
    """The provider a pipeline test runs against."""
    return str(request.param)


@pytest.fixture
def options(provider: str) -> Callable[..., dict[str, Any]]:
    """``options(emu, store, **extra)``: ``llm_batch`` options for the test's provider."""

    def make(emu: Emulator, store: Path, **extra: Any) -> dict[str, Any]:
        return pipeline_options(
            emu, store, max_requests=40, api_key=API_KEY, provider=provider, **extra
        )

    return make


def _some_batch_expired(emu: Emulator, provider: str) -> bool:
    """Whether the emulator holds a batch in which some request expired."""
    url = base_url(emu, provider)
    if provider == "openai":
        client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)
        return any(b.status == "expired" for b in client.batches.list())
    claude = anthropic.Anthropic(base_url=url, api_key="sk-test", max_retries=0)
    return any(b.request_counts.expired for b in claude.messages.batches.list())


def _expected(provider: str, prompt: str) -> str:
    return _answers.expected_text(prompt, model=MODELS[provider], system=SYSTEM)


@pytest.fixture
def quick_emulator(fresh_emulator: Callable[..., Emulator]) -> Emulator:
    return fresh_emulator(processing_seconds=1.0, clock_speed=50.0)


def test_every_row_gets_its_own_answer_billed_once(
    spark: SparkSession,
    quick_emulator: Emulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    options: Callable[..., dict[str, Any]],
    provider: str,
) -> None:
    rows = [(i, f"Summarise item number {i}") for i in range(150)]
    df = spark.createDataFrame(rows, "id long, prompt string").repartition(7)

    from pyspark.sql import functions as F

    with caplog.at_level(logging.DEBUG, logger="spark_llm_batch"):
        out = df.llm_batch("prompt", id_col="id", **options(quick_emulator, tmp_path / "store"))

    got = {r["id"]: r for r in out.select("id", "prompt", "llm.*").collect()}
    assert len(got) == out.count() == 150
    for i, prompt in rows:
        row = got[i]
        assert row["status"] == "succeeded", row
        assert row["text"] == _expected(provider, prompt)
        assert row["input_tokens"] > 0
        assert row["output_tokens"] > 0
        assert row["attempts"] == 1
    assert len({r["batch_id"] for r in got.values()}) >= 4  # 150 requests, 40 per batch
    billed = billed_counts(quick_emulator)
    assert len(billed) == 150
    assert set(billed.values()) == {1}
    # Invariant 5: the key reaches neither the logs nor any table or staged file of the store.
    assert "staged" in caplog.text
    assert API_KEY not in caplog.text
    for path in (tmp_path / "store").rglob("*"):
        if path.is_file():  # staged chunk files, Delta logs (Parquet data may be compressed:
            assert API_KEY.encode() not in path.read_bytes(), path  # so read the tables too)
    for table in ("batches", "results"):
        stored = spark.read.format("delta").load(str(tmp_path / "store" / table))
        rows = [r[0] for r in stored.select(F.to_json(F.struct("*"))).collect()]
        assert rows
        assert not [row for row in rows if API_KEY in row], table
    # The staged lines are dropped once their batches are collected.
    assert spark.read.format("delta").load(str(tmp_path / "store" / "chunks")).count() == 0


def test_a_batch_costs_at_most_four_calls_besides_polls(
    spark: SparkSession,
    quick_emulator: Emulator,
    tmp_path: Path,
    options: Callable[..., dict[str, Any]],
    provider: str,
) -> None:
    # A fresh run: no lookups (batches.list) and no error files to download when every request
    # succeeded. OpenAI: upload, create, the output file, the input file's delete; Anthropic:
    # create (the lines inline) and its results.
    df = spark.createDataFrame([(i, f"count me {i}") for i in range(30)], "id long, prompt string")
    quick_emulator.clear_calls()
    out = df.llm_batch(
        "prompt", **options(quick_emulator, tmp_path / "store", limits=BatchLimits(max_requests=10))
    )
    batches = len({r["batch_id"] for r in out.select("llm.batch_id").collect()})
    assert batches == 3
    calls = quick_emulator.calls()[provider]
    polls = calls.pop("batch_retrieve")
    assert polls >= batches
    per_batch = (
        {"file_upload": 1, "batch_create": 1, "file_content": 1, "file_delete": 1}
        if provider == "openai"
        else {"batch_create": 1, "batch_results": 1}
    )
    assert calls == {kind: n * batches for kind, n in per_batch.items()}
    assert sum(calls.values()) <= 4 * batches


def test_rerun_submits_nothing_and_new_rows_only_pay_for_themselves(
    spark: SparkSession,
    quick_emulator: Emulator,
    tmp_path: Path,
    options: Callable[..., dict[str, Any]],
    provider: str,
) -> None:
    opts = options(quick_emulator, tmp_path / "store")
    first = spark.createDataFrame([(i, f"prompt {i}") for i in range(60)], "id long, prompt string")
    out1 = first.llm_batch("prompt", **opts)
    answers1 = {r["id"]: r["text"] for r in out1.select("id", "llm.text").collect()}
    assert len(billed_counts(quick_emulator)) == 60

    # A crashed run left staged lines no batch names, two days ago: the next run drops them.
    chunks = str(tmp_path / "store" / "chunks")
    orphan = uuid.uuid4().hex
    two_days_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
    spark.createDataFrame(
        [(orphan, "h", 1, 3, "{}", two_days_ago)],
        "batch_key STRING, hash STRING, attempt INT, nbytes BIGINT, line STRING, staged_at TIMESTAMP",
    ).write.format("delta").mode("append").save(chunks)

    out2 = first.llm_batch("prompt", **opts)
    assert {r["id"]: r["text"] for r in out2.select("id", "llm.text").collect()} == answers1
    assert len(quick_emulator.ledger()) == 60
    assert spark.read.format("delta").load(chunks).where(f"batch_key = '{orphan}'").count() == 0

    grown = spark.createDataFrame([(i, f"prompt {i}") for i in range(75)], "id long, prompt string")
    out3 = grown.llm_batch("prompt", **opts)
    assert out3.count() == 75
    billed = billed_counts(quick_emulator)
    assert len(billed) == 75
    assert set(billed.values()) == {1}


@pytest.mark.parametrize("provider", OPENAI_FIRST)
def test_the_batch_log_is_read_again_after_staging_only_when_another_batch_was_in_flight(
    spark: SparkSession,
    quick_emulator: Emulator,
    tmp_path: Path,
    options: Callable[..., dict[str, Any]],
    provider: str,
) -> None:
    from spark_llm_batch import _failpoints
    from spark_llm_batch._store import Store

    class Died(BaseException):
        """The driver dying right after staging (as the ``after_stage`` failpoint does)."""

    opts = options(quick_emulator, tmp_path / "store")
    reads: list[dict[str, Any]] = []
    real_read, real_hit = Store.current_batches, _failpoints.hit

    def read(self: Store, **kwargs: Any) -> Any:
        if not kwargs.get("include_terminal"):  # the batches in flight (not a lookup of ids)
            reads.append(kwargs)
        return real_read(self, **kwargs)

    def die_after_stage(name: str) -> None:
        if name == "after_stage":
            raise Died
        real_hit(name)

    def questions(first: int) -> Any:
        rows = [(i, f"question {i}") for i in range(first, first + 20)]
        return spark.createDataFrame(rows, "id long, prompt string")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Store, "current_batches", read)
        assert questions(0).llm_batch("prompt", **opts).count() == 20
        assert len(reads) == 1  # staging found nothing in flight: it is all the run drives
        patch.setattr(_failpoints, "hit", die_after_stage)
        with pytest.raises(Died):
            questions(20).llm_batch("prompt", **opts)  # its batch stays staged, unsent
        patch.setattr(_failpoints, "hit", real_hit)
        reads.clear()
        out = questions(40).llm_batch("prompt", **opts)
        # Staging saw the dead run's batch in flight: the run reads the log again after staging,
        # and drives that batch too.
        assert len(reads) == 2
    assert out.where("llm.status = 'succeeded'").count() == 20
    assert Store.open(spark, str(tmp_path / "store")).current_batches() == []
    billed = billed_counts(quick_emulator)
    assert len(billed) == 60
    assert set(billed.values()) == {1}


def test_duplicates_bad_prompts_and_faults_are_rows_not_crashes(
    spark: SparkSession,
    quick_emulator: Emulator,
    tmp_path: Path,
    options: Callable[..., dict[str, Any]],
    provider: str,
) -> None:
    rows = [
        (1, "same prompt"),
        (2, "same prompt"),
        (3, None),
        (4, "   "),
        (5, "please [[emulator:invalid_request]]"),
        (6, "please [[emulator:refused]]"),
        (7, "x" * 5000),
        (8, "fine"),
    ]
    df = spark.createDataFrame(rows, "id long, prompt string")
    opts = options(quick_emulator, tmp_path / "store", limits=BatchLimits(max_bytes=4000))
    out = {r["id"]: r for r in df.llm_batch("prompt", **opts).select("id", "llm.*").collect()}

    assert len(out) == 8
    assert out[1]["text"] == out[2]["text"] is not None
    assert out[1]["request_hash"] == out[2]["request_hash"]
    assert out[3]["error_class"] == out[4]["error_class"] == "invalid_input"
    assert out[5]["error_class"] == "invalid_request"
    assert out[6]["error_class"] == "refused"
    assert out[7]["error_class"] == "too_large"
    assert out[8]["status"] == "succeeded"
    for failed in (3, 4, 5, 6, 7):
        assert out[failed]["status"] == "failed"
        assert out[failed]["error_message"]
    # The duplicate prompt was sent (and billed) once; the bad rows were never sent.
    billed = billed_counts(quick_emulator)
    assert set(billed.values()) == {1}
    # Billed: the shared prompt once, the refusal (a 200 answer) and "fine"; not the 400.
    assert len(billed) == 3


@pytest.mark.parametrize("provider", OPENAI_FIRST)
def test_transient_failures_are_retried_in_new_batches_until_answered(
    spark: SparkSession,
    fresh_emulator: Callable[..., Emulator],
    tmp_path: Path,
    options: Callable[..., dict[str, Any]],
    provider: str,
) -> None:
    from spark_llm_batch.emulator import Fault

    rates = {Fault.RATE_LIMITED: 0.15, Fault.SERVER_ERROR: 0.05}
    emu = fresh_emulator(processing_seconds=1.0, clock_speed=50.0, request_fault_rates=rates)
    rows = [(i, f"classify {i}") for i in range(80)]
    df = spark.createDataFrame(rows, "id long, prompt string")

    # Draws are seeded per batch (its creation order) and request, so which rows fail depends on
    # the order the batches are created in; at 20 % a row fails 8 attempts in a row with odds of
    # 3e-6 (2e-4 per run of 80 rows): "until answered" holds whatever that order.
    retry = {"rate_limited": 8, "server_error": 8}
    opts = options(emu, tmp_path / "s", retry=retry)
    out = {r["id"]: r for r in df.llm_batch("prompt", **opts).collect()}

    assert len(out) == 80
    assert {r["llm"]["status"] for r in out.values()} == {"succeeded"}
    attempts = Counter(r["llm"]["attempts"] for r in out.values())
    assert attempts[1] < 80  # some rows needed a second (or later) batch
    assert max(attempts) >= 2
    for i, prompt in rows:
        assert out[i]["llm"]["text"] == _expected(provider, prompt)
    billed = billed_counts(emu)
    assert len(billed) == 80
    assert set(billed.values()) == {1}


@pytest.mark.parametrize("provider", OPENAI_FIRST)
def test_expired_batch_keeps_its_answers_and_retries_the_rest(
    spark: SparkSession,
    fresh_emulator: Callable[..., Emulator],
    tmp_path: Path,
    options: Callable[..., dict[str, Any]],
    provider: str,
) -> None:
    # Each batch needs 10 simulated seconds but expires after 4: the first batch expires with
    # part of its requests answered; once it has, the window is relaxed for the retries.
    emu = fresh_emulator(processing_seconds=10.0, completion_window_seconds=4.0, clock_speed=20.0)
    rows = [(i, f"expire {i}") for i in range(30)]
    df = spark.createDataFrame(rows, "id long, prompt string")

    stop = threading.Event()

    def relax_window_once_a_batch_expired() -> None:
        while not stop.wait(0.05):
            if _some_batch_expired(emu, provider):
                emu.configure(completion_window_seconds=86400.0)
                return

    watcher = threading.Thread(target=relax_window_once_a_batch_expired, daemon=True)
    watcher.start()
    try:
        out = df.llm_batch("prompt", **options(emu, tmp_path / "s"))
    finally:
        stop.set()
        watcher.join()
    result = {r["id"]: r["llm"] for r in out.collect()}

    assert len(result) == 30
    assert {r["status"] for r in result.values()} == {"succeeded"}
    attempts = Counter(r["attempts"] for r in result.values())
    assert 0 < attempts[1] < 30  # the expired batch's finished requests were kept, not re-sent
    billed = billed_counts(emu)
    assert len(billed) == 30
    assert set(billed.values()) == {1}


@pytest.mark.parametrize("provider", OPENAI_FIRST)
def test_the_driver_transport_answers_every_row_once_and_reruns_for_free(
    spark: SparkSession,
    quick_emulator: Emulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    options: Callable[..., dict[str, Any]],
    provider: str,
) -> None:
    rows = [(i, f"Drive item {i}") for i in range(90)]
    df = spark.createDataFrame(rows, "id long, prompt string").repartition(3)
    opts = options(quick_emulator, tmp_path / "store", transport="driver")
    with caplog.at_level(logging.INFO, logger="spark_llm_batch"):
        out = df.llm_batch("prompt", id_col="id", **opts)
    got = {r["id"]: r for r in out.select("id", "llm.*").collect()}
    assert len(got) == 90
    for i, prompt in rows:
        assert got[i]["status"] == "succeeded", got[i]
        assert got[i]["text"] == _expected(provider, prompt)
    billed = billed_counts(quick_emulator)
    assert len(billed) == 90
    assert set(billed.values()) == {1}
    # What the driver downloaded was staged in the store, then dropped once merged.
    assert spark.read.format("delta").load(str(tmp_path / "store" / "downloads")).count() == 0
    again = df.llm_batch("prompt", id_col="id", **opts)
    assert again.count() == 90
    assert len(quick_emulator.ledger()) == 90


def test_auto_transport_says_which_it_took(
    spark: SparkSession,
    quick_emulator: Emulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    options: Callable[..., dict[str, Any]],
    provider: str,
) -> None:
    df = spark.createDataFrame([(i, f"auto {i}") for i in range(5)], "id long, prompt string")
    with caplog.at_level(logging.INFO, logger="spark_llm_batch"):
        df.llm_batch("prompt", **options(quick_emulator, tmp_path / "store"))
    # Local executors reach the emulator on 127.0.0.1; tests/cluster_cases.py covers the other way.
    assert "transport: executors (executors can reach 127.0.0.1:" in caplog.text


@pytest.mark.parametrize("provider", OPENAI_FIRST)
def test_retry_failed_sends_stored_failures_again(
    spark: SparkSession,
    quick_emulator: Emulator,
    tmp_path: Path,
    options: Callable[..., dict[str, Any]],
    provider: str,
) -> None:
    rows = [
        (1, "fine"),
        (2, "please [[emulator:refused]]"),
        (3, "bad [[emulator:invalid_request]]"),
    ]
    df = spark.createDataFrame(rows, "id long, prompt string")
    opts = options(quick_emulator, tmp_path / "store")

    def run(**extra: Any) -> dict[int, Any]:
        return {r["id"]: r["llm"] for r in df.llm_batch("prompt", **opts, **extra).collect()}

    first = run()
    assert (first[2]["error_class"], first[3]["error_class"]) == ("refused", "invalid_request")
    # A refusal is a 200 answer: billed. The 400 is not.
    assert billed_counts(quick_emulator)[first[2]["request_hash"]] == 1
    # Default: failures are final, a re-run sends nothing.
    assert {i: r["attempts"] for i, r in run().items()} == {1: 1, 2: 1, 3: 1}
    # Only the named class goes again, with the next attempt number.
    again = run(retry_failed=["refused"])
    assert {i: r["attempts"] for i, r in again.items()} == {1: 1, 2: 2, 3: 1}
    assert billed_counts(quick_emulator)[first[2]["request_hash"]] == 2
    # True: every failure class; successes are never sent again.
    every = run(retry_failed=True)
    assert {i: r["attempts"] for i, r in every.items()} == {1: 1, 2: 3, 3: 2}
    assert billed_counts(quick_emulator)[first[1]["request_hash"]] == 1


@pytest.mark.parametrize("provider", OPENAI_FIRST)
def test_two_inputs_with_the_same_options_get_two_outputs(
    spark: SparkSession,
    quick_emulator: Emulator,
    tmp_path: Path,
    options: Callable[..., dict[str, Any]],
    provider: str,
) -> None:
    opts = options(quick_emulator, tmp_path / "store")
    a = spark.createDataFrame([(1, "alpha")], "id long, prompt string")
    b = spark.createDataFrame([(1, "beta"), (2, "gamma")], "id long, prompt string")
    out_a = a.llm_batch("prompt", **opts)
    out_b = b.llm_batch("prompt", **opts)
    assert [r["prompt"] for r in out_a.collect()] == ["alpha"]  # not overwritten by b's run
    assert sorted(r["prompt"] for r in out_b.collect()) == ["beta", "gamma"]

    # The same input again is the same output location (overwritten in place).
    def folders(frame: Any) -> set[str]:
        return {f.rsplit("/", 1)[0] for f in frame.inputFiles()}

    assert folders(a.llm_batch("prompt", **opts)) == folders(out_a)
    assert folders(out_a) != folders(out_b)


@pytest.mark.parametrize("provider", OPENAI_FIRST)
def test_a_template_over_columns_is_rendered_checked_and_its_nulls_follow_the_rule(
    spark: SparkSession,
    quick_emulator: Emulator,
    tmp_path: Path,
    options: Callable[..., dict[str, Any]],
    provider: str,
) -> None:
    from spark_llm_batch.errors import ConfigError

    rows = [
        (i, f"review {i}", None if i % 5 == 0 else f"product {i}", i % 5 + 1) for i in range(30)
    ]
    df = spark.createDataFrame(rows, "id long, review string, product string, stars int")
    store = tmp_path / "store"
    template = "Classify: {review}\nProduct: {product} ({stars} stars) {{json}}"

    def rendered(review: str, product: str | None, stars: int) -> str:
        return f"Classify: {review}\nProduct: {product or ''} ({stars} stars) {{json}}"

    # Checked before anything is sent: a placeholder without its column, or two prompt sources.
    with pytest.raises(ConfigError, match=r"\{prodcut\} name no column.*id, product, review"):
        df.llm_batch(template="{review} {prodcut}", **options(quick_emulator, store))
    with pytest.raises(ConfigError, match="not both"):
        df.llm_batch("review", template=template, **options(quick_emulator, store))
    assert quick_emulator.ledger() == []

    out = df.llm_batch(template=template, id_col="id", **options(quick_emulator, store))
    assert out.columns == ["id", "review", "product", "stars", "llm"]  # no rendered column
    got = {r["id"]: r for r in out.select("id", "llm.*").collect()}
    assert len(got) == 30
    for i, review, product, stars in rows:
        if product is None:  # the default rule: nothing sent, the row says which column was null
            assert (got[i]["status"], got[i]["error_class"]) == ("failed", "invalid_input")
            assert got[i]["error_message"] == "template column(s) null: product"
        else:
            assert got[i]["status"] == "succeeded", got[i]
            assert got[i]["text"] == _expected(provider, rendered(review, product, stars))
    assert set(billed_counts(quick_emulator).values()) == {1}
    assert len(billed_counts(quick_emulator)) == 24

    # template_nulls="empty": the null rows render with empty text and are sent; the others
    # render as before, so they are answered from the store and not paid again.
    out = df.llm_batch(
        template=template, template_nulls="empty", id_col="id", **options(quick_emulator, store)
    )
    got = {r["id"]: r for r in out.select("id", "llm.*").collect()}
    for i, review, product, stars in rows:
        assert got[i]["status"] == "succeeded", got[i]
        assert got[i]["text"] == _expected(provider, rendered(review, product, stars))
    billed = billed_counts(quick_emulator)
    assert len(billed) == 30
    assert set(billed.values()) == {1}


@pytest.mark.parametrize("provider", OPENAI_FIRST)
def test_a_conversation_column_is_sent_as_the_messages_after_the_system_prompt(
    spark: SparkSession,
    quick_emulator: Emulator,
    tmp_path: Path,
    options: Callable[..., dict[str, Any]],
    provider: str,
) -> None:
    def chat(i: int) -> list[dict[str, str]] | None:
        if i == 7:
            return None
        if i == 8:
            return [{"role": "system", "content": "not a turn"}, {"role": "user", "content": "x"}]
        return [
            {"role": "user", "content": f"Name a colour, {i}"},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": f"Another one for {i}?"},
        ]

    rows = [(i, chat(i)) for i in range(20)]
    ddl = "id long, messages array<struct<role: string, content: string>>"
    df = spark.createDataFrame(rows, ddl)
    store = tmp_path / "store"

    out = df.llm_batch("messages", id_col="id", **options(quick_emulator, store))
    got = {r["id"]: r for r in out.select("id", "llm.*").collect()}
    assert len(got) == 20
    sent = [i for i in range(20) if i != 7 and (i != 8 or provider == "openai")]
    for i, messages in rows:
        if i not in sent:  # a null conversation; a system turn Anthropic takes only as system=
            assert (got[i]["status"], got[i]["error_class"]) == ("failed", "invalid_input")
            continue
        assert messages is not None
        turns = [(m["role"], m["content"]) for m in messages]
        expected = _answers.expected_text(turns, model=MODELS[provider], system=SYSTEM)
        assert got[i]["text"] == expected, got[i]
    billed = billed_counts(quick_emulator)
    assert len(billed) == len(sent)
    assert set(billed.values()) == {1}
    # Run again: every conversation is answered from the store, nothing is paid twice.
    again = df.llm_batch("messages", id_col="id", **options(quick_emulator, store))
    assert again.where("llm.status = 'succeeded'").count() == len(sent)
    assert billed_counts(quick_emulator) == billed


@pytest.mark.parametrize("provider", OPENAI_FIRST)
def test_structured_answers_come_back_as_a_typed_parsed_struct(
    spark: SparkSession,
    quick_emulator: Emulator,
    tmp_path: Path,
    options: Callable[..., dict[str, Any]],
    provider: str,
) -> None:
    from pydantic import BaseModel

    from spark_llm_batch.config import BatchConfig

    class Aspect(BaseModel):
        name: str
        score: float

    class Verdict(BaseModel):
        label: str
        stars: int
        tags: list[str]
        aspects: list[Aspect]
        note: str | None = None

    from spark_llm_batch.emulator import marker

    broken = {5, 9}  # answers that break the schema (injected): invalid_output, text kept
    rows = [(i, f"Review number {i}: fine." + (marker("malformed") if i in broken else ""))
            for i in range(12)]  # fmt: skip
    df = spark.createDataFrame(rows, "id long, prompt string")
    sent = BatchConfig(model=MODELS[provider], store="/tmp/x", response_format=Verdict)
    schema = sent.response_schema
    assert schema is not None

    from spark_llm_batch.config import RetryPolicy

    again = RetryPolicy(invalid_output=2)  # ask once more for an answer that breaks the schema
    first = options(quick_emulator, tmp_path / "a", retry=again)
    out = df.llm_batch("prompt", id_col="id", response_format=Verdict, **first)
    parsed = out.schema["llm"].dataType["parsed"].dataType
    assert parsed.simpleString() == (
        "struct<label:string,stars:bigint,tags:array<string>,"
        "aspects:array<struct<name:string,score:double>>,note:string>"
    )
    got = {r["id"]: r for r in out.select("id", "llm.*").collect()}
    for i, prompt in rows:
        if i in broken:
            assert (got[i]["status"], got[i]["error_class"]) == ("failed", "invalid_output")
            assert got[i]["text"] is not None
            assert got[i]["parsed"] is None
            assert "does not match response_format" in got[i]["error_message"]
            assert got[i]["attempts"] == 2  # asked again, and broken again (the marker stays)
            continue
        expected = _answers.expected_json(schema, prompt, model=MODELS[provider], system=SYSTEM)
        assert got[i]["status"] == "succeeded", got[i]
        assert got[i]["parsed"].asDict(recursive=True) == {
            **expected, "note": expected.get("note")
        }, got[i]["text"]  # fmt: skip
    # A DDL string: the parsed field has the DDL's own types.
    ddl = "label STRING, stars INT, tags ARRAY<STRING>"
    out = df.llm_batch("prompt", response_format=ddl, **options(quick_emulator, tmp_path / "b"))
    assert out.schema["llm"].dataType["parsed"].dataType.simpleString() == (
        "struct<label:string,stars:int,tags:array<string>>"
    )
    assert out.where("llm.parsed.label IS NOT NULL AND size(llm.parsed.tags) >= 0").count() == 10
    assert out.where("llm.error_class = 'invalid_output'").count() == 2
    billed = billed_counts(quick_emulator)  # the broken answers were answered: billed too
    assert len(billed) == 24
    twice = {h for h, n in billed.items() if n == 2}
    assert set(billed.values()) == {1, 2}
    assert twice == {r["request_hash"] for r in got.values() if r["id"] in broken}


def test_embeddings_give_one_vector_of_the_model_dimension_per_row_billed_once(
    spark: SparkSession, quick_emulator: Emulator, tmp_path: Path
) -> None:
    import math

    from spark_llm_batch.emulator._answers import openai_embedding_response
    from spark_llm_batch.errors import ConfigError

    rows = [(i, f"text number {i % 25}" if i != 3 else None) for i in range(60)]  # 25 distinct
    df = spark.createDataFrame(rows, "id long, text string")
    options = pipeline_options(quick_emulator, tmp_path / "store", max_requests=10)
    model = "text-embedding-3-small"
    embed = {**options, "model": model, "system": None, "params": {"dimensions": 8}}

    with pytest.raises(ConfigError, match="not OpenAI's"):
        df.llm_embed("text", **{**embed, "model": "claude-3-5-haiku-latest"})
    with pytest.raises(ConfigError, match="embeddings take only the params"):
        df.llm_embed("text", **{**embed, "params": {"temperature": 0}})
    assert quick_emulator.ledger() == []

    out = df.llm_embed("text", id_col="id", **embed)
    assert out.schema["llm"].dataType["embedding"].dataType.simpleString() == "array<float>"
    assert "text" not in out.schema["llm"].dataType.fieldNames()
    got = {r["id"]: r for r in out.select("id", "text", "llm.*").collect()}
    assert len(got) == 60
    for i, text in rows:
        if text is None:
            assert (got[i]["status"], got[i]["error_class"]) == ("failed", "invalid_input")
            continue
        assert got[i]["status"] == "succeeded", got[i]
        vector = got[i]["embedding"]
        assert len(vector) == 8
        assert math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-4)  # a unit vector
        body = {"model": model, "input": text, "encoding_format": "float", "dimensions": 8}
        expected = openai_embedding_response(body)["data"][0]["embedding"]
        assert vector == pytest.approx(expected, rel=1e-6)
        assert got[i]["input_tokens"] > 0
    billed = billed_counts(quick_emulator)
    assert len(billed) == 25  # identical texts are embedded once
    assert set(billed.values()) == {1}
    again = df.llm_embed("text", id_col="id", **embed)  # answered from the store
    assert again.where("llm.status = 'succeeded'").count() == 59
    assert billed_counts(quick_emulator) == billed
