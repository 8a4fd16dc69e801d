"""The YAML job: ``spark-submit jobs/run_job.py --config FILE`` end to end, its inputs, and the
field-named errors that stop a bad file before anything is sent.

The spark-submit case runs the job in its own JVM, started by ``spark-submit`` with a local
master and the Delta package and SQL extension on its command line (the JVM is up before Python
runs, so a session's settings can no longer add them); the emulator, in this process, bills.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from spark_llm_batch import _job
from spark_llm_batch.config import JobConfig
from spark_llm_batch.emulator import _answers
from spark_llm_batch.session import _DELTA_CONF
from tests.pipeline_helpers import MODEL, SYSTEM, billed_counts

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import SparkSession

    from spark_llm_batch.emulator import Emulator

REPO = Path(__file__).resolve().parents[1]
SUBMIT_TIMEOUT = 600.0
"""Bound of the spark-submit run (JVM start, Ivy resolution from the cache, the job)."""
KEY = "sk-test-emulator"


def _write_input(root: Path, n: int, *, distinct: int) -> Path:
    """A parquet input of ``n`` rows whose prompts repeat every ``distinct`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "reviews"
    folder.mkdir()
    prompts = [f"Job question {i % distinct}" for i in range(n)]
    table = pa.table({"id": pa.array(range(n), pa.int64()), "prompt": pa.array(prompts)})
    pq.write_table(table, folder / "part-0.parquet")
    return folder


def _batch(emu: Emulator, root: Path, **extra: Any) -> dict[str, Any]:
    """A job's batch section on ``emu`` (the key and URL come from the environment)."""
    return {
        "model": MODEL,
        "store": str(root / "store"),
        "output": str(root / "answers"),
        "id_col": "id",
        "system": SYSTEM,
        "params": {"temperature": 0},
        "limits": {"max_requests": 8},
        "poll": {"initial_seconds": 0.05, "max_seconds": 0.2, "progress_seconds": 1.0},
        **extra,
    }


def _write_job(root: Path, job: dict[str, Any], name: str = "job.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def _provider_env(monkeypatch: pytest.MonkeyPatch, emu: Emulator) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", emu.openai_base_url)


def _expected(prompt: str) -> str:
    return _answers.expected_text(prompt, model=MODEL, system=SYSTEM)


def _delta_submit_args() -> list[str]:
    """The Delta package (as ``configure_spark_with_delta_pip`` names it) and SQL confs."""
    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    package = f"io.delta:delta-spark_{spark_minor}_2.13:{metadata.version('delta-spark')}"
    confs = [arg for key, value in _DELTA_CONF.items() for arg in ("--conf", f"{key}={value}")]
    return ["--packages", package, *confs]


def test_the_example_job_validates() -> None:
    job = JobConfig.from_file(REPO / "conf/example_job.yaml")
    assert (job.input, job.query, job.prompt_col, job.wait) == (
        "lake.reviews",
        None,
        "review_text",
        True,
    )
    assert isinstance(job.batch.response_format, str)  # a DDL string, resolved by llm_batch


@pytest.mark.timeout(SUBMIT_TIMEOUT + 120)
def test_spark_submit_runs_the_job_and_writes_the_output_table(
    spark: SparkSession, fresh_emulator: Callable[..., Emulator], tmp_path: Path
) -> None:
    emu = fresh_emulator(processing_seconds=1.0, clock_speed=100.0)
    inputs = _write_input(tmp_path, 30, distinct=24)
    job = {
        "input": str(inputs),
        "input_format": "parquet",
        "prompt_col": "prompt",
        "batch": _batch(emu, tmp_path),
    }
    config = _write_job(tmp_path, job)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env |= {
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": emu.openai_base_url,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    argv = [
        str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]",
        *_delta_submit_args(),
        # The job must keep what spark-submit was told, not build a local session over it.
        "--conf", "spark.sql.shuffle.partitions=3", "--conf", "spark.ui.enabled=false",
        str(REPO / "jobs/run_job.py"), "--config", str(config),
    ]  # fmt: skip
    done = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    # spark-submit passes on the Python driver's stderr merged into its stdout.
    printed = done.stdout + done.stderr
    assert "rows: 30 (succeeded 30)" in printed
    assert "complete: every row answered" in printed
    assert "spark session: master local[2]" in printed
    assert KEY not in printed

    out = spark.read.format("delta").load(str(tmp_path / "answers"))
    rows = {r["id"]: r for r in out.select("id", "prompt", "llm.status", "llm.text").collect()}
    assert sorted(rows) == list(range(30))
    for row in rows.values():
        assert row["status"] == "succeeded"
        assert row["text"] == _expected(row["prompt"])
    billed = billed_counts(emu)
    assert len(billed) == 24  # the distinct prompts, each billed once
    assert set(billed.values()) == {1}


def test_a_query_input_runs_in_process(
    spark: SparkSession,
    fresh_emulator: Callable[..., Emulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emu = fresh_emulator(processing_seconds=1.0, clock_speed=100.0)
    _provider_env(monkeypatch, emu)
    inputs = _write_input(tmp_path, 12, distinct=12)
    query = f"SELECT id, upper(prompt) AS question FROM parquet.`{inputs}` WHERE id < 10"
    config = _write_job(
        tmp_path, {"query": query, "prompt_col": "question", "batch": _batch(emu, tmp_path)}
    )
    assert _job.main(str(config)) == 0
    printed = capsys.readouterr().out
    assert f"rows: 10 (succeeded 10); output: {tmp_path / 'answers'}" in printed
    out = spark.read.format("delta").load(str(tmp_path / "answers"))
    got = {
        r["id"]: (r["question"], r["text"])
        for r in out.select("id", "question", "llm.text").collect()
    }
    assert sorted(got) == list(range(10))
    assert all(text == _expected(question) for question, text in got.values())
    assert set(billed_counts(emu).values()) == {1}
    assert len(billed_counts(emu)) == 10


def test_a_template_job_counts_failed_rows_and_exits_1(
    spark: SparkSession,
    fresh_emulator: Callable[..., Emulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emu = fresh_emulator(processing_seconds=1.0, clock_speed=100.0)
    _provider_env(monkeypatch, emu)
    inputs = _write_input(tmp_path, 6, distinct=6)
    # Row 5's prompt asks the emulator to refuse it: one failed row, the rest answered.
    query = (
        f"SELECT id, CASE WHEN id = 5 THEN '[[emulator:refused]] no' ELSE prompt END AS prompt "
        f"FROM parquet.`{inputs}`"
    )
    batch = _batch(emu, tmp_path, template="Q: {prompt}")
    config = _write_job(tmp_path, {"query": query, "batch": batch})
    assert _job.main(str(config)) == 1
    printed = capsys.readouterr().out
    assert "rows: 6 (failed 1, succeeded 5)" in printed
    assert "not answered: refused 1" in printed


BATCH = {"model": "gpt-4o-mini", "store": "/tmp/never-created-store"}
BAD_JOBS: list[tuple[str, dict[str, Any], str]] = [
    ("bad type", {"input": "t", "prompt_col": "p", "wait": "maybe", "batch": BATCH}, "wait: "),
    ("unknown top-level field", {"input": "t", "prompt_col": "p", "inptu": "x", "batch": BATCH},
     "inptu: Extra inputs are not permitted"),
    ("unknown nested field", {"input": "t", "prompt_col": "p", "batch": {**BATCH, "modle": "x"}},
     "batch.modle: Extra inputs are not permitted"),
    ("unknown retry class", {"input": "t", "prompt_col": "p",
                             "batch": {**BATCH, "retry": {"expird": 2}}}, "batch.retry.expird: "),
    ("input and query", {"input": "t", "query": "SELECT 1", "prompt_col": "p", "batch": BATCH},
     "input, query: give exactly one"),
    ("neither input nor query", {"prompt_col": "p", "batch": BATCH}, "neither was given"),
    ("prompt_col and template", {"input": "t", "prompt_col": "p",
                                 "batch": {**BATCH, "template": "Q: {p}"}},
     "prompt_col, batch.template: give either"),
    ("no prompt source", {"input": "t", "batch": BATCH}, "prompt_col, batch.template"),
    ("bad retry value", {"input": "t", "prompt_col": "p",
                         "batch": {**BATCH, "retry": {"expired": 0}}},
     "batch.retry.expired: Input should be greater than or equal to 1"),
    ("bad limits", {"input": "t", "prompt_col": "p",
                    "batch": {**BATCH, "limits": {"max_requests": -5}}},
     "batch.limits.max_requests: Input should be greater than 0"),
    ("bad transport", {"input": "t", "prompt_col": "p",
                       "batch": {**BATCH, "transport": "carrier-pigeon"}}, "batch.transport: "),
    ("bad poll", {"input": "t", "prompt_col": "p",
                  "batch": {**BATCH, "poll": {"initial_seconds": 0}}}, "batch.poll.initial_seconds"),
    ("missing model", {"input": "t", "prompt_col": "p", "batch": {"store": "/s"}},
     "batch.model: Field required"),
    ("input_format for a table", {"input": "lake.t", "input_format": "csv", "prompt_col": "p",
                                  "batch": BATCH}, "input_format: only a path input"),
    ("empty prompt_col", {"input": "t", "prompt_col": "", "batch": BATCH}, "prompt_col: "),
]  # fmt: skip


@pytest.mark.parametrize(("job", "named"), [c[1:] for c in BAD_JOBS], ids=[c[0] for c in BAD_JOBS])
def test_a_bad_field_exits_2_naming_it_and_sends_nothing(
    job: dict[str, Any],
    named: str,
    fresh_emulator: Callable[..., Emulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emu = fresh_emulator()
    _provider_env(monkeypatch, emu)
    assert _job.main(str(_write_job(tmp_path, job))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid job config in ")
    assert named in err
    assert emu.ledger() == []


def test_a_bad_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _job.main(str(tmp_path / "missing.yaml")) == 2
    assert "config file not found" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("input: [unclosed\n")
    assert _job.main(str(broken)) == 2
    assert "is not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ({"input": "no_such_schema.no_such_table"}, "input: cannot read table"),
        ({"input": "/no/such/path", "input_format": "parquet"}, "input: cannot read parquet path"),
        ({"query": "SELEC id FROM nowhere"}, "query: cannot read the query"),
        ({"query": "SELECT 1 AS id, 'x' AS text"}, "prompt"),  # no column 'prompt': named
    ],
    ids=["missing table", "missing path", "bad query", "missing prompt column"],
)
def test_an_input_that_cannot_be_read_exits_2_and_sends_nothing(
    source: dict[str, str],
    named: str,
    spark: SparkSession,
    fresh_emulator: Callable[..., Emulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emu = fresh_emulator()
    _provider_env(monkeypatch, emu)
    config = _write_job(
        tmp_path, {**source, "prompt_col": "prompt", "batch": _batch(emu, tmp_path)}
    )
    assert _job.main(str(config)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert named in err
    assert emu.ledger() == []


def test_the_script_takes_config_and_names_a_bad_field(tmp_path: Path) -> None:
    config = _write_job(
        tmp_path, {"input": "t", "prompt_col": "p", "batch": {**BATCH, "retry": {"expired": 0}}}
    )
    script = str(REPO / "jobs/run_job.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    done = subprocess.run(
        [sys.executable, script, "--config", str(config)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "batch.retry.expired: Input should be greater than or equal to 1" in done.stderr
    bare = subprocess.run(
        [sys.executable, script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert bare.returncode == 2
    assert "--config" in bare.stderr


def test_a_detached_job_exits_0_in_flight_and_completes_when_run_again(
    spark: SparkSession,
    fresh_emulator: Callable[..., Emulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emu = fresh_emulator(processing_seconds=3600.0, clock_speed=1.0)  # in flight until advanced
    _provider_env(monkeypatch, emu)
    inputs = _write_input(tmp_path, 10, distinct=10)
    job = {"input": str(inputs), "input_format": "parquet", "prompt_col": "prompt"}
    waited = _write_job(tmp_path, {**job, "batch": _batch(emu, tmp_path)}, "waited.yaml")
    assert _job.main(str(waited), no_wait=True) == 0  # --no-wait wins over the file's wait: true
    printed = capsys.readouterr().out
    assert "in flight" in printed
    assert "run the same command again later" in printed
    assert not (tmp_path / "answers").exists()

    emu.advance(7200.0)
    detached = _write_job(
        tmp_path, {**job, "wait": False, "batch": _batch(emu, tmp_path)}, "detached.yaml"
    )
    assert _job.main(str(detached)) == 0
    printed = capsys.readouterr().out
    assert f"rows: 10 (succeeded 10); output: {tmp_path / 'answers'}" in printed
    assert "complete: every row answered" in printed
    out = spark.read.format("delta").load(str(tmp_path / "answers"))
    assert {r["status"] for r in out.select("llm.status").collect()} == {"succeeded"}
    billed = billed_counts(emu)
    assert len(billed) == 10
    assert set(billed.values()) == {1}
