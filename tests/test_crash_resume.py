"""Crash and resume: a job SIGKILLed anywhere is finished by the next run, paying nothing twice.

Each test runs ``tests/crash_job.py`` in a subprocess (its own JVM) against an emulator living in
this process, kills it (a failpoint of :mod:`spark_llm_batch._failpoints`, or SIGKILL from outside),
checks that it really died where intended, runs it again without the failpoint, and then pins:

- the re-run exits 0 and its output has exactly one row per input row, every row ``succeeded``
  with the emulator's answer to its own prompt, on its first attempt;
- the emulator's ledger bills every distinct request exactly once (no ``custom_id`` twice), and
  only our requests;
- no batch was created twice: each of our batch keys tagged at most one provider batch, every
  provider batch created was billed, and there are no more batches than the packing bound allows.

The emulator runs on a real-time clock (``clock_speed=1``): the provider's clock agrees with ours,
as with the real service, so a reconciliation window that is too narrow is not masked by a
simulated clock running ahead. Batches take a few seconds, and 20 s for ``while_polling`` and the
random kill, so those land while batches are still in progress (checked, not assumed).

The matrix runs for both providers (OpenAI tags a batch with our key, so a crash after create is
reconciled by key; Anthropic cannot, so by request count and time: see
``spark_llm_batch.providers.anthropic``) and with both transports (``transport="executors"``: uploads and downloads in Spark
tasks; ``"driver"``: the driver streams lines out of Spark and results back through the store's
``downloads`` table). One case runs by default (:data:`DEFAULT_CASES`); the others and the
random kill are ``slow`` (each test starts two JVMs). Anthropic has no upload, so no
``after_upload`` case. Set ``CRASH_RESUME_SEED`` to replay a random kill.

Once resumed, the store stages nothing any more: every batch was collected, so the run's sweep
dropped all ``chunks`` rows, and the driver's ``downloads`` are dropped after each collection.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from spark_llm_batch._failpoints import ENV_VAR as FAILPOINT_ENV
from spark_llm_batch.emulator import _answers
from tests import crash_job
from tests.pipeline_helpers import base_url

if TYPE_CHECKING:
    from collections.abc import Callable

    from spark_llm_batch.emulator import Emulator

REPO = Path(__file__).resolve().parents[1]
JOB_SCRIPT = Path(crash_job.__file__).resolve()
API_KEY = "sk-test-emulator"

N_ROWS = 40
DISTINCT_PROMPTS = 36  # rows i and i + 36 share a prompt: one request, billed once, two rows
MAX_REQUESTS = 10  # 36 requests -> 4 batches
MAX_IN_FLIGHT = 4  # failpoint runs: every batch in flight at once (one collection wave, quicker)
KILL_MAX_IN_FLIGHT = 2  # the random kill: batches also wait behind the cap
MAX_BATCHES = math.ceil(DISTINCT_PROMPTS / MAX_REQUESTS) + 1  # the packing bound of the issue
RUN_TIMEOUT = 420.0
IN_PROGRESS = {"validating", "in_progress", "finalizing"}
ENDED = {"openai": "completed", "anthropic": "ended"}
"""The status a provider reports for a batch that ended with every request done."""

# Real-time clock: a batch is in progress for PROCESSING seconds (see the module docstring), or
# LONG_PROCESSING where the crash must land while batches are in progress, even when the commit of
# ``submitted`` takes seconds on a loaded machine. The re-run's JVM start hides most of the wait.
PROCESSING = 3.0
LONG_PROCESSING = 20.0


@dataclass(frozen=True)
class Job:
    """The paths of one job, shared by its crashed run and its re-run."""

    root: Path
    emu: Emulator
    transport: str = "executors"
    provider: str = "openai"

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    def argv(self, max_in_flight: int) -> list[str]:
        return [
            sys.executable,
            str(JOB_SCRIPT),
            "--input",
            str(self.input),
            "--store",
            str(self.store),
            "--output",
            str(self.output),
            "--result",
            str(self.result),
            "--base-url",
            base_url(self.emu, self.provider),
            "--provider",
            self.provider,
            "--max-requests",
            str(MAX_REQUESTS),
            "--max-in-flight",
            str(max_in_flight),
            "--transport",
            self.transport,
        ]


def _prompt(i: int) -> str:
    return f"Crash-test question {i % DISTINCT_PROMPTS}: name one property of the number {i % DISTINCT_PROMPTS}."


def _make_job(root: Path, emu: Emulator, transport: str, provider: str = "openai") -> Job:
    """Write the input table (three parquet files, so the job reads several partitions)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    job = Job(root, emu, transport, provider)
    job.input.mkdir(parents=True)
    ids = list(range(N_ROWS))
    for part, start in enumerate(range(0, N_ROWS, 14)):
        chunk = ids[start : start + 14]
        table = pa.table(
            {"id": pa.array(chunk, pa.int64()), "prompt": pa.array([_prompt(i) for i in chunk])}
        )
        pq.write_table(table, job.input / f"part-{part}.parquet")
    return job


def _env(failpoint: str | None) -> dict[str, str]:
    """The subprocess environment: no provider variables but ours, the test's interpreter."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OPENAI_", "ANTHROPIC_")) and name != FAILPOINT_ENV
    }
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env[crash_job.KEY_ENV] = API_KEY
    if failpoint is not None:
        env[FAILPOINT_ENV] = failpoint
    return env


def _start(
    job: Job, log: Path, *, failpoint: str | None, max_in_flight: int
) -> subprocess.Popen[bytes]:
    """Start the job in its own process group (so its JVM and Python workers can be killed too)."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            job.argv(max_in_flight),
            cwd=REPO,
            env=_env(failpoint),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of the job's process group (the JVM outlives a killed Python driver)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _finish(proc: subprocess.Popen[bytes]) -> int:
    """Wait for the job's driver, then clear its process group; the driver's return code."""
    try:
        rc = proc.wait(timeout=RUN_TIMEOUT)
    finally:
        _kill_group(proc)
    return rc


def _run(
    job: Job, log: Path, *, failpoint: str | None = None, max_in_flight: int = MAX_IN_FLIGHT
) -> int:
    """Run the job to its end (or its failpoint); its return code."""
    return _finish(_start(job, log, failpoint=failpoint, max_in_flight=max_in_flight))


def _tail(log: Path, lines: int = 60) -> str:
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else "(no log)"
    return f"--- last {lines} lines of {log} ---\n" + "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class ProviderSide:
    """One batch as the provider lists it: its id, status and our key (OpenAI's metadata)."""

    id: str
    status: str
    key: str | None


def _provider_batches(emu: Emulator, provider: str = "openai") -> list[ProviderSide]:
    """Every batch the emulator holds, through the official SDK (as a user would list them)."""
    if provider == "anthropic":
        import anthropic

        claude = anthropic.Anthropic(
            base_url=emu.anthropic_base_url, api_key=API_KEY, max_retries=0
        )
        listed = claude.messages.batches.list(limit=100)
        return [ProviderSide(b.id, b.processing_status, None) for b in listed]
    import openai

    client = openai.OpenAI(base_url=emu.openai_base_url, api_key=API_KEY, max_retries=0)
    return [
        ProviderSide(b.id, b.status, (b.metadata or {}).get("llm_batch_key"))
        for b in client.batches.list(limit=100)
    ]


def _uploaded_files(emu: Emulator) -> list[Any]:
    import openai

    client = openai.OpenAI(base_url=emu.openai_base_url, api_key=API_KEY, max_retries=0)
    return [f for f in client.files.list() if f.purpose == "batch"]


def _assert_killed(rc: int, log: Path, where: str) -> None:
    assert rc == -signal.SIGKILL, (
        f"the job should have died by SIGKILL {where}, rc={rc}\n{_tail(log)}"
    )


def _assert_resumed_completely(job: Job, log: Path, rc: int) -> None:
    """The re-run's output and the emulator's ledger and batch list (the module docstring's list)."""
    assert rc == 0, f"the re-run failed, rc={rc}\n{_tail(log)}"
    import json

    result = json.loads(job.result.read_text(encoding="utf-8"))
    rows = result["rows"]
    context = _tail(log, 30)

    # Nothing left staged: every batch collected and swept, the driver's downloads dropped.
    assert (result["chunks"], result["downloads"]) == (0, 0), context

    # One row per input row, each with the answer to its own prompt, first attempt.
    assert sorted(r["id"] for r in rows) == list(range(N_ROWS)), context
    hashes: dict[str, str] = {}
    for row in rows:
        result = row["llm"]
        assert row["prompt"] == _prompt(row["id"]), row
        assert result["status"] == "succeeded", (row, context)
        expected = _answers.expected_text(
            row["prompt"], model=crash_job.MODELS[job.provider], system=crash_job.SYSTEM
        )
        assert result["text"] == expected, row
        assert result["attempts"] == 1, row
        assert result["batch_id"], row
        assert hashes.setdefault(row["prompt"], result["request_hash"]) == result["request_hash"]
    assert len(set(hashes.values())) == DISTINCT_PROMPTS

    # Every distinct request billed exactly once, and nothing else billed.
    billed = Counter(e["custom_id"] for e in job.emu.ledger() if e["batch_id"])
    twice = {cid: n for cid, n in billed.items() if n > 1}
    assert not twice, f"billed more than once: {twice}\n{context}"
    assert set(billed) == set(hashes.values()), context

    # No batch created twice, none created in vain, no more than the packing bound.
    batches = _provider_batches(job.emu, job.provider)
    keys = Counter(b.key for b in batches if b.key is not None)
    assert all(n == 1 for n in keys.values()), f"a batch key was created twice: {keys}\n{context}"
    billed_batches = {e["batch_id"] for e in job.emu.ledger() if e["batch_id"]}
    assert {b.id for b in batches} == billed_batches, context
    assert {r["llm"]["batch_id"] for r in rows} == billed_batches, context  # none created in vain
    assert {b.status for b in batches} == {ENDED[job.provider]}, context
    assert len(batches) <= MAX_BATCHES, f"{len(batches)} batches for {DISTINCT_PROMPTS} requests"


@pytest.fixture
def make_job(fresh_emulator: Callable[..., Emulator], tmp_path: Path) -> Callable[..., Job]:
    """``make_job(processing, transport)``: an input table and a fresh emulator on a real-time
    clock, for a job using ``transport``."""

    def make(processing: float, transport: str = "executors", provider: str = "openai") -> Job:
        emu = fresh_emulator(processing_seconds=processing, clock_speed=1.0)
        return _make_job(tmp_path, emu, transport, provider)

    return make


def _check_where_it_died(job: Job, failpoint: str, log: Path) -> None:
    """Prove the crash hit where the failpoint says (the provider side at the moment of death)."""
    emu = job.emu
    batches = _provider_batches(emu, job.provider)
    context = f"{failpoint}: batches {[(b.id, b.status) for b in batches]}\n{_tail(log)}"
    if failpoint == "after_stage":
        assert not batches, context
        assert not _uploaded_files(emu), context
    elif failpoint == "after_upload":
        assert not batches, context
        assert _uploaded_files(emu), context
    elif failpoint == "after_create":
        assert len(batches) == 1, context
    elif failpoint == "while_polling":
        assert any(b.status in IN_PROGRESS for b in batches), context  # both providers' word
    elif failpoint == "during_collect":
        assert emu.ledger(), context  # some batch ended (and was billed) before the collection
    else:  # pragma: no cover - a new failpoint needs its own check here
        raise AssertionError(f"no check for failpoint {failpoint!r}")


FAILPOINTS = ("after_stage", "after_upload", "after_create", "while_polling", "during_collect")
DEFAULT_CASES = {("openai", "executors", "after_create")}
"""The case of the matrix the default suite runs (a created batch found again by its key); the
others (Anthropic's count-and-time reconciliation, the driver's ``downloads`` cut short, ...) are
``slow``: each case starts two JVMs, ~3 min on 2 cores."""

CRASH_MATRIX = [
    pytest.param(
        provider,
        transport,
        failpoint,
        id=f"{provider}-{transport}-{failpoint}",
        marks=() if (provider, transport, failpoint) in DEFAULT_CASES else pytest.mark.slow,
    )
    for provider in ("openai", "anthropic")
    for transport in ("executors", "driver")
    for failpoint in FAILPOINTS
    if not (provider == "anthropic" and failpoint == "after_upload")  # inline: no upload
]


@pytest.mark.parametrize(("provider", "transport", "failpoint"), CRASH_MATRIX)
def test_killed_at_a_failpoint_then_resumed_pays_once(
    make_job: Callable[..., Job], provider: str, transport: str, failpoint: str
) -> None:
    """A job SIGKILLed at ``failpoint`` is completed by a plain re-run, every request billed once.

    Pins write-ahead recovery per crash point: staged batches are submitted by the re-run, orphan
    uploads are never billed, a batch created but not recorded is found by its key (not created
    again), batches polled but not recorded are re-attached, and a half-finished collection is
    collected again idempotently.
    """
    processing = LONG_PROCESSING if failpoint == "while_polling" else PROCESSING
    job = make_job(processing, transport, provider)
    crashed_log = job.root / f"crashed-{failpoint}.log"
    rc = _run(job, crashed_log, failpoint=failpoint)
    _assert_killed(rc, crashed_log, f"at failpoint {failpoint}")
    assert not job.result.exists()
    _check_where_it_died(job, failpoint, crashed_log)

    rerun_log = job.root / "rerun.log"
    _assert_resumed_completely(job, rerun_log, _run(job, rerun_log))


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["executors", "driver"])
def test_killed_from_outside_while_polling_then_resumed_pays_once(
    make_job: Callable[..., Job], transport: str
) -> None:
    """SIGKILL of the whole job (driver, JVM, workers) at a random moment after the first submit.

    Pins recovery from a crash at a place no failpoint names (mid-commit, mid-poll, mid-create,
    mid-collect): the re-run still completes with every request billed once. The seed is in the
    failure message so a failing moment can be replayed.
    """
    seed = int(os.environ.get("CRASH_RESUME_SEED", time.time_ns() % 1_000_000))
    delay = random.Random(seed).uniform(0.0, 1.25 * LONG_PROCESSING)
    job = make_job(LONG_PROCESSING, transport)
    crashed_log = job.root / "killed.log"
    proc = _start(job, crashed_log, failpoint=None, max_in_flight=KILL_MAX_IN_FLIGHT)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while crash_job.SUBMITTED_MARK not in crashed_log.read_text(errors="replace"):
            assert proc.poll() is None, f"the job ended before submitting\n{_tail(crashed_log)}"
            assert time.monotonic() < deadline, f"no batch submitted in time\n{_tail(crashed_log)}"
            time.sleep(0.05)
        time.sleep(delay)
        assert proc.poll() is None, (
            f"seed {seed}: the job finished before the kill at +{delay:.2f} s; "
            f"the emulator's batches are too quick\n{_tail(crashed_log)}"
        )
        _kill_group(proc)
        rc = proc.wait(timeout=60)
    finally:
        _kill_group(proc)
    _assert_killed(rc, crashed_log, f"(seed {seed}, {delay:.2f} s after the first submit)")
    assert _provider_batches(job.emu), "killed after a submit, yet no batch exists"

    rerun_log = job.root / "rerun.log"
    try:
        _assert_resumed_completely(
            job, rerun_log, _run(job, rerun_log, max_in_flight=KILL_MAX_IN_FLIGHT)
        )
    except AssertionError as exc:
        raise AssertionError(
            f"seed {seed}, killed {delay:.2f} s after the first submit: {exc}"
        ) from None


def kill_after_every_create(job: Job, after_kill: Callable[[], None] | None = None) -> int:
    """Run ``job`` with the ``after_create`` failpoint until a run no longer dies (it had no
    batch left to create); how many runs were killed. Each run resumes the one before it, after
    ``after_kill`` (if given) did what it does at the provider."""
    killed = 0
    while True:
        log = job.root / f"run-{killed}.log"
        rc = _run(job, log, failpoint="after_create")
        if rc == 0:
            return killed
        _assert_killed(rc, log, f"after create (run {killed})")
        killed += 1
        if after_kill is not None:
            after_kill()
        assert killed <= MAX_BATCHES, f"{killed} creates for at most {MAX_BATCHES} batches"


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_killed_right_after_every_create_pays_once(
    make_job: Callable[..., Job], provider: str
) -> None:
    """SIGKILL right after each create, every run resumed by the next: the one created batch a
    crash leaves unrecorded is adopted each time (OpenAI: by key; Anthropic: by count and time)."""
    job = make_job(PROCESSING, "executors", provider)
    killed = kill_after_every_create(job)
    created = len(_provider_batches(job.emu, provider))
    # OpenAI creates a round of batches before the failpoint; Anthropic one batch per run.
    assert killed == created if provider == "anthropic" else 1 <= killed <= created
    _assert_resumed_completely(job, job.root / f"run-{killed}.log", 0)


@pytest.mark.parametrize("our_clock_ahead", [0.0, 5.0])
def test_a_batch_created_right_after_the_creating_commit_is_found_on_resume(
    fresh_emulator: Callable[..., Emulator], tmp_path: Path, our_clock_ahead: float
) -> None:
    """The ``after_create`` reconciliation finds a batch created in the same second as the commit.

    On resume the orchestrator calls ``provider.find(chunk, not_before)`` with the time (our clock)
    of the ``creating`` record, written just before ``create``. OpenAI reports ``created_at`` in
    whole seconds on its own clock, so the batch's ``created_at`` is usually earlier than that
    time (same second, truncated) or our clock runs ahead of the provider's: ``find`` must still
    find it, or the resumed run creates (and pays for) the batch a second time. Quick: no Spark.
    """
    import io

    from pydantic import SecretStr

    from spark_llm_batch.config import BatchConfig, ProviderSettings
    from spark_llm_batch.providers import get_provider
    from spark_llm_batch.providers.base import ChunkRef

    emu = fresh_emulator(processing_seconds=PROCESSING, clock_speed=1.0)
    config = BatchConfig(
        model=crash_job.MODELS["openai"],
        store=str(tmp_path / "unused"),
        provider_settings=ProviderSettings(
            api_key=SecretStr(API_KEY), base_url=emu.openai_base_url, max_retries=0
        ),
    )
    provider = get_provider(config)
    body = provider.request_body(config, "Where does the reconciliation window start?")
    data = (provider.request_line("c" * 32, body, config) + "\n").encode()
    chunk = ChunkRef("k" * 32, 1, len(data), config.model_name)
    input_ref = provider.upload(chunk, io.BytesIO(data))

    while time.time() % 1.0 > 0.5:  # commit and create in the first half of one second
        time.sleep(0.01)
    creating_recorded_at = time.time() + our_clock_ahead
    created = provider.create(chunk, input_ref, config)
    # ... and the driver dies here (the after_create failpoint); the next run reconciles:
    found = provider.find(chunk, creating_recorded_at)

    assert found is not None, (
        f"batch {created.batch_id} (created_at {created.created_at}) not found from "
        f"not_before {creating_recorded_at:.3f}: the resumed run would create it again"
    )
    assert found.batch_id == created.batch_id
    assert found.key == chunk.key
