"""The status figures: batches by state, requests, tokens, cost at batch prices, age in flight.

The cost must equal the price table applied to the tokens the emulator's ledger billed, with
retries (each attempt billed) and for both providers' billing rules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from spark_llm_batch._prices import DEFAULT_PRICES, Price, PriceTable
from spark_llm_batch.config import RetryPolicy
from spark_llm_batch.emulator import marker
from spark_llm_batch.errors import ConfigError
from tests.pipeline_helpers import MODELS, OPENAI_FIRST, pipeline_options

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import SparkSession

    from spark_llm_batch.emulator import Emulator

REPO = Path(__file__).resolve().parents[1]


def _ledger_tokens(emu: Emulator) -> dict[str, tuple[int, int]]:
    """Billed batch tokens per model, from the ledger."""
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for entry in emu.ledger():
        if entry["batch_id"]:
            sums[entry["model"]][0] += entry["input_tokens"]
            sums[entry["model"]][1] += entry["output_tokens"]
    return {model: (i, o) for model, (i, o) in sums.items()}


@pytest.mark.parametrize("provider", OPENAI_FIRST)
def test_cost_is_the_price_table_applied_to_the_ledgers_billed_tokens(
    spark: SparkSession,
    fresh_emulator: Callable[..., Emulator],
    tmp_path: Path,
    provider: str,
) -> None:
    import spark_llm_batch

    emu = fresh_emulator(processing_seconds=1.0, clock_speed=50.0)
    store = tmp_path / "store"
    broken = {3, 7}  # structured answers that break the schema: asked twice, so billed twice
    rows = [
        (i, f"Review {i}: fine." + (marker("malformed") if i in broken else "")) for i in range(20)
    ]
    rows += [(100, "Review 1: fine.")]  # a duplicate prompt: one request
    df = spark.createDataFrame(rows, "id long, prompt string")
    opts = pipeline_options(emu, store, max_requests=8, provider=provider)
    out = df.llm_batch(
        "prompt",
        response_format="label STRING, stars INT",
        retry=RetryPolicy(invalid_output=2),
        **opts,
    )
    assert out.count() == 21

    report = spark_llm_batch.status(str(store), spark=spark)
    billed = _ledger_tokens(emu)
    assert set(billed) == {MODELS[provider]}
    (inp, outp) = billed[MODELS[provider]]
    assert inp > 0
    assert outp > 0
    overall = report.overall
    assert (overall.input_tokens, overall.output_tokens) == (inp, outp)
    price = PriceTable.load().price(MODELS[provider])
    assert price is not None
    assert overall.cost == pytest.approx(price.cost(inp, outp))
    assert overall.cost > 0
    assert overall.unpriced == ()
    # One job, the output the call wrote; every batch collected; nothing pending.
    assert len(report.jobs) == 1
    job = report.jobs[0]
    assert job.job.startswith(f"{store}/outputs/")  # the output the call wrote
    assert job.cost == pytest.approx(overall.cost)
    assert job.requests_done == 18
    assert job.requests_failed == 2
    assert job.requests_pending == 0
    assert job.in_flight == 0
    assert job.batches["collected"] >= 3
    assert job.oldest_in_flight_seconds is None
    text = str(report)
    assert "cost so far" in text
    assert "done 18, failed 2, pending 0" in text


def test_a_job_in_flight_shows_its_pending_requests_and_age(
    spark: SparkSession, fresh_emulator: Callable[..., Emulator], tmp_path: Path
) -> None:
    import spark_llm_batch

    emu = fresh_emulator(processing_seconds=10_000.0, clock_speed=1.0)  # nothing ends meanwhile
    store = tmp_path / "store"
    df = spark.createDataFrame([(i, f"Question {i}") for i in range(12)], "id long, prompt string")
    output = str(tmp_path / "out")
    run = df.llm_batch(
        "prompt", output=output, wait=False, **pipeline_options(emu, store, max_requests=5)
    )
    assert not run.complete
    assert run.output is None
    assert run.job == output
    assert run.status.batches["submitted"] == 3
    assert run.status.requests_pending == 12
    assert run.status.requests_done == 0
    assert run.status.cost == 0
    report = spark_llm_batch.status(str(store), spark=spark)
    age = report.job(output).oldest_in_flight_seconds
    assert age is not None
    assert 0 <= age < 600
    assert "in flight: 3 batch(es)" in str(run)
    with pytest.raises(spark_llm_batch.StoreError, match="not complete"):
        run.result()
    assert emu.ledger() == []


def test_price_table_prefixes_extension_and_bad_files(tmp_path: Path) -> None:
    assert DEFAULT_PRICES is not None
    assert DEFAULT_PRICES.name == "prices.yaml"
    table = PriceTable.load()
    assert table.price("gpt-4o-mini-2024-07-18") == table.price("gpt-4o-mini")
    assert table.price("gpt-4o-2024-08-06") == table.price("gpt-4o")  # not gpt-4o-mini's
    assert table.price("some-local-model") is None
    mine = tmp_path / "mine.yaml"
    mine.write_text("per_million_tokens:\n  some-local-model: {input: 1, output: 2}\n"
                    "  gpt-4o-mini: {input: 9, output: 9}\n")  # fmt: skip
    extended = PriceTable.load(mine)
    assert extended.price("some-local-model") == Price(1.0, 2.0)
    assert extended.price("gpt-4o-mini") == Price(9.0, 9.0)  # a later file wins
    assert extended.price("claude-haiku-4-5") == table.price("claude-haiku-4-5")
    cases = {
        "per_million_tokens:\n  m: {input: 1}\n": "per_million_tokens.m must be",
        "per_million_tokens:\n  m: {input: x, output: 1}\n": "non-number",
        "per_million_tokens:\n  m: {input: -1, output: 1}\n": "negative",
        "prices: {}\n": "expected a mapping",
        "currency: EUR\nper_million_tokens: {}\n": "is in EUR, the others in USD",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            PriceTable.load(bad)
    with pytest.raises(ConfigError, match="not found"):
        PriceTable.load(tmp_path / "absent.yaml")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spark_llm_batch", *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env=env,
    )


def test_status_command_prints_the_figures_and_refuses_a_missing_store(
    spark: SparkSession, fresh_emulator: Callable[..., Emulator], tmp_path: Path
) -> None:
    emu = fresh_emulator(processing_seconds=1.0, clock_speed=50.0)
    store = tmp_path / "store"
    df = spark.createDataFrame([(i, f"Item {i}") for i in range(6)], "id long, prompt string")
    df.llm_batch("prompt", **pipeline_options(emu, store, max_requests=4))
    done = _cli("status", "--store", str(store), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    figures: dict[str, Any] = json.loads(done.stdout)
    (inp, outp) = _ledger_tokens(emu)[MODELS["openai"]]
    assert figures["overall"]["input_tokens"] == inp
    assert figures["overall"]["output_tokens"] == outp
    assert figures["overall"]["requests_done"] == 6
    assert figures["overall"]["batches"]["collected"] == 2
    missing = _cli("status", "--store", str(tmp_path / "typo"))
    assert missing.returncode == 2
    assert "no store at" in missing.stderr
    assert not (tmp_path / "typo").exists()  # a reader creates nothing


def test_a_waiting_call_shows_a_progress_bar_and_logs_a_periodic_line(
    spark: SparkSession,
    fresh_emulator: Callable[..., Emulator],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from spark_llm_batch.config import PollPolicy

    emu = fresh_emulator(processing_seconds=3.0, clock_speed=1.0)  # polled a few times
    df = spark.createDataFrame([(i, f"Bar {i}") for i in range(9)], "id long, prompt string")
    opts = pipeline_options(emu, tmp_path / "store", max_requests=5)
    opts["poll"] = PollPolicy(
        initial_seconds=0.2, max_seconds=0.5, progress_seconds=0.5, progress_bar=True
    )
    with caplog.at_level("INFO", logger="spark_llm_batch"):
        assert df.llm_batch("prompt", **opts).count() == 9
    bar = capsys.readouterr().err
    assert "llm_batch" in bar
    assert "9/9" in bar
    assert "req" in bar
    assert any(r.getMessage().startswith("progress: batches:") for r in caplog.records)


def test_watch_refreshes_the_figures_until_interrupted(
    spark: SparkSession,
    fresh_emulator: Callable[..., Emulator],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from spark_llm_batch import __main__ as cli

    emu = fresh_emulator(processing_seconds=10_000.0, clock_speed=1.0)
    store = tmp_path / "store"
    df = spark.createDataFrame([(i, f"Watch {i}") for i in range(4)], "id long, prompt string")
    df.llm_batch("prompt", wait=False, **pipeline_options(emu, store, max_requests=4))
    naps: list[float] = []

    def nap(seconds: float) -> None:  # the second wait is "interrupted" (Ctrl-C)
        naps.append(seconds)
        if len(naps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_nap", nap)
    assert cli.main(["status", "--store", str(store), "--watch", "5"]) == 0
    printed = capsys.readouterr().out
    assert naps == [5.0, 5.0]
    assert printed.count("oldest batch in flight:") == 4  # 2 refreshes x (the job + overall)
    assert printed.count("pending 4") == 4
    assert cli.main(["status", "--store", str(store), "--watch", "0"]) == 2
