"""The library on a standalone cluster with S3 and without egress: run by ``tests/test_cluster.py``.

Not collected by a plain ``pytest`` run (the name does not start with ``test_``): a process is one
SparkContext or none (see ``tests/cluster_fixtures.py``). The cases are ordered by cluster kind (the
open one, then the one without egress) so that each cluster starts once. Select them by name:

- ``-k 'not pipeline'``: the smoke cases (the infrastructure itself: S3 through Spark, executors on
  both workers, no egress from tasks);
- ``-k pipeline``: ``llm_batch`` on the cluster with its store and output on S3, and on workers
  without egress.

Run them alone with ``pytest tests/cluster_cases.py -p no:cacheprovider``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from pyspark import cloudpickle

import tests.cluster_fixtures
from tests.cluster_fixtures import (  # noqa: F401  (fixtures: pytest finds them here)
    ClusterSpark,
    S3Bucket,
    aws_variables,
    cluster_pool_fixture,
    isolated_cluster_fixture,
    no_aws_env_fixture,
    open_cluster_fixture,
    s3_bucket_fixture,
)

if TYPE_CHECKING:
    from spark_llm_batch.emulator import Emulator

# Fixture setup counts: the first case may resolve ~750 MB of jars before it starts.
pytestmark = pytest.mark.timeout(1200)

# The executors' Python cannot import ``tests`` (only the installed library): ship this module's
# functions (and the fixture helpers they call) by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(tests.cluster_fixtures)

PROBE_SCHEMA = "pid long, cwd string, ancestors array<long>, netns string, aws array<string>"


# -- what a task sees ---------------------------------------------------------------------------


def _ancestors(pid: int) -> list[int]:
    """``pid``'s parent, grandparent, ... up to init, read from ``/proc``."""
    chain = []
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: the parent pid
        chain.append(pid)
    return chain


def _probe(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """One row per batch: where the Python worker running it lives."""
    for _ in batches:
        yield pd.DataFrame(
            {
                "pid": [os.getpid()],
                "cwd": [os.getcwd()],
                "ancestors": [_ancestors(os.getpid())],
                "netns": [os.readlink("/proc/self/ns/net")],
                "aws": [aws_variables(os.environ)],
            }
        )


def _probe_tasks(cluster: ClusterSpark, tasks: int = 8) -> list[dict[str, object]]:
    df = cluster.spark.range(0, tasks, 1, numPartitions=tasks)
    return [row.asDict() for row in df.mapInPandas(_probe, PROBE_SCHEMA).collect()]


def _worker_of(cluster: ClusterSpark, cwd: str) -> int:
    """Which worker's work dir a task ran in (its executor's cwd), or -1."""
    for index, work in enumerate(cluster.cluster.worker_dirs):
        if Path(cwd).is_relative_to(work / "work"):
            return index
    return -1


def _environ_of(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (entry.decode(errors="replace").partition("=") for entry in entries if entry)
    return {name: value for name, _, value in pairs}


def _get(url: str, timeout: float = 2.0) -> str:
    """``reachable <status>`` for any HTTP answer, else ``unreachable <error>``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return f"reachable {reply.status}"
    except urllib.error.HTTPError as exc:  # an answer, even if an error one
        return f"reachable {exc.code}"
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        return f"unreachable {type(reason).__name__}: {reason}"


# -- the open cluster: S3 through Spark, executors on both workers -------------------------------


def test_delta_tables_round_trip_through_s3a_and_s3_uris(
    open_cluster: ClusterSpark, s3_bucket: S3Bucket
) -> None:
    spark = open_cluster.spark
    df = spark.range(0, 1000, 1, numPartitions=4).selectExpr("id", "concat('row ', id) AS text")
    for scheme, path in [("s3a", "smoke"), ("s3", "smoke-s3")]:
        uri = s3_bucket.uri(path, scheme=scheme)
        df.write.format("delta").mode("overwrite").save(uri)
        back = spark.read.format("delta").load(uri)
        assert back.count() == 1000, uri
        assert back.where("text = 'row 999'").count() == 1, uri
        keys = s3_bucket.keys(f"{path}/")
        assert f"{path}/_delta_log/00000000000000000000.json" in keys, keys
        assert [key for key in keys if key.endswith(".parquet")], keys
    # Both schemes are one filesystem: a table written through s3a:// reads back through s3://.
    assert spark.read.format("delta").load(s3_bucket.uri("smoke", scheme="s3")).count() == 1000


def test_tasks_run_in_executor_processes_on_both_workers(open_cluster: ClusterSpark) -> None:
    tasks = _probe_tasks(open_cluster)

    # In local mode the Python workers descend from the driver's JVM; here from an executor JVM
    # that a worker started (this process started the workers, so it is an ancestor of both).
    driver_jvm = open_cluster.spark.sparkContext._gateway.proc.pid  # type: ignore[union-attr]
    assert all(driver_jvm not in task["ancestors"] for task in tasks), tasks
    assert all(task["pid"] != os.getpid() for task in tasks), tasks
    workers = {_worker_of(open_cluster, str(task["cwd"])) for task in tasks}
    assert workers == {0, 1}, tasks
    for task in tasks:  # each task descends from the worker whose work dir it runs in
        worker_pid = open_cluster.worker_pids[_worker_of(open_cluster, str(task["cwd"]))]
        assert worker_pid in task["ancestors"], task


def test_no_aws_variables_reach_the_driver_the_daemons_or_the_tasks(
    open_cluster: ClusterSpark,
) -> None:
    assert not aws_variables(os.environ)
    daemons = [open_cluster.cluster.master, *open_cluster.cluster.workers]
    for daemon in daemons:
        assert not aws_variables(_environ_of(daemon.process.pid)), daemon.name
    assert all(not task["aws"] for task in _probe_tasks(open_cluster))


# -- the pipeline on the open cluster (needs the data plane that goes through Spark only) ---------

PIPELINE_ROWS = 150
LOCAL_STAGING_NAMES = {"staging", "_delta_log"}
SPARK_FILES = {"stdout", "stderr"}


def _files(root: Path, skip: list[Path]) -> set[Path]:
    """Every file under ``root``, except under ``skip`` and the caches no library writes to."""
    found: set[Path] = set()
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = [
            name
            for name in dirs
            if name not in {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache"}
            and not any((here / name).is_relative_to(path) for path in skip)
        ]
        found.update(here / name for name in names)
    return found


def _holds_requests(path: Path) -> bool:
    """A staged request file or a local table: named like one, or with request lines inside."""
    if path.suffix == ".jsonl" or LOCAL_STAGING_NAMES & set(path.parts):
        return True
    try:
        return path.stat().st_size <= 1 << 20 and b'"custom_id"' in path.read_bytes()
    except OSError:  # gone already, or unreadable: not ours to judge
        return False


def _local_snapshot(cluster: ClusterSpark, basetemp: Path) -> set[Path]:
    """Files the driver or an executor could have written on this machine's disk."""
    roots = {Path.cwd(), Path("/tmp"), Path(tempfile.gettempdir())}
    # Not the library's: pytest's tmp dirs (ours, with the clusters, and other runs'), the
    # emulators' state (ours and other runs'; it is the provider's disk) and Spark's local dirs.
    skip = [
        basetemp,
        *(found for root in roots for found in root.glob("pytest-of-*")),
        *(found for root in roots for found in root.glob("llm-emulator-*")),
        *(work / "local" for work in cluster.cluster.worker_dirs),
    ]
    files = set().union(*(_files(root, skip) for root in roots))
    for work in cluster.cluster.worker_dirs:  # the executors' cwds: work/app-*/<executor id>/
        files |= {
            path
            for path in _files(work / "work", [])
            if path.suffix != ".jar" and path.name not in SPARK_FILES
        }
    return files


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_pipeline_llm_batch_on_a_cluster_with_store_and_output_on_s3(
    open_cluster: ClusterSpark,
    s3_bucket: S3Bucket,
    fresh_emulator: Callable[..., Emulator],
    tmp_path_factory: pytest.TempPathFactory,
    provider: str,
) -> None:
    import spark_llm_batch
    from spark_llm_batch.config import BatchLimits, PollPolicy
    from spark_llm_batch.emulator import _answers
    from tests.pipeline_helpers import MODELS, base_url, billed_counts

    emu = fresh_emulator(
        processing_seconds=1.0, clock_speed=50.0
    )  # on 127.0.0.1: executors reach it
    spark = open_cluster.spark
    rows = [(i, f"Summarise cluster item number {i}") for i in range(PIPELINE_ROWS)]
    df = spark.createDataFrame(rows, "id long, prompt string").repartition(3)
    basetemp = tmp_path_factory.getbasetemp()
    before = _local_snapshot(open_cluster, basetemp)
    started = time.monotonic()

    out = spark_llm_batch.llm_batch(
        df,
        "prompt",
        model=MODELS[provider],
        store=s3_bucket.uri(f"store-{provider}"),
        output=s3_bucket.uri(f"out-{provider}"),
        id_col="id",
        limits=BatchLimits(max_requests=40),
        poll=PollPolicy(initial_seconds=0.05, max_seconds=0.2, progress_seconds=1.0),
        provider_settings={"api_key": "sk-test-emulator", "base_url": base_url(emu, provider)},
    )

    got = {r["id"]: r for r in out.select("id", "prompt", "llm.*").collect()}
    assert out.count() == len(got) == PIPELINE_ROWS, (
        f"{len(got)} rows in {time.monotonic() - started:.0f} s"
    )
    for i, prompt in rows:
        assert got[i]["status"] == "succeeded", got[i]
        assert got[i]["text"] == _answers.expected_text(
            prompt, model=MODELS[provider], system=None
        ), got[i]
    billed = billed_counts(emu)
    assert len(billed) == PIPELINE_ROWS, billed
    assert set(billed.values()) == {1}, billed
    assert s3_bucket.keys(f"store-{provider}/")
    assert s3_bucket.keys(f"out-{provider}/_delta_log/")
    # One storage layer: nothing the library staged or stored landed on a local disk.
    new = _local_snapshot(open_cluster, basetemp) - before
    assert not sorted(str(path) for path in new if _holds_requests(path))


# -- the cluster without egress -------------------------------------------------------------------


def _fetch_all(url: str) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def fetch(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for _ in batches:
            started = time.monotonic()
            outcome = _get(url)
            yield pd.DataFrame(
                {
                    "outcome": [outcome],
                    "seconds": [time.monotonic() - started],
                    "netns": [os.readlink("/proc/self/ns/net")],
                    "cwd": [os.getcwd()],
                }
            )

    return fetch


def test_tasks_cannot_reach_a_server_that_the_driver_reaches(
    isolated_cluster: ClusterSpark, emulator: Emulator
) -> None:
    url = f"{emulator.openai_base_url}/models"
    assert url.startswith("http://127.0.0.1:"), url
    assert _get(url).startswith("reachable "), _get(url)  # from the driver

    df = isolated_cluster.spark.range(0, 4, 1, numPartitions=4)
    schema = "outcome string, seconds double, netns string, cwd string"
    tasks = [row.asDict() for row in df.mapInPandas(_fetch_all(url), schema).collect()]

    assert len(tasks) == 4
    assert all(task["outcome"].startswith("unreachable ") for task in tasks), tasks
    assert all(task["seconds"] < 2.5 for task in tasks), tasks
    # The tasks ran on both workers, in another network namespace than the driver.
    assert {_worker_of(isolated_cluster, task["cwd"]) for task in tasks} == {0, 1}, tasks
    assert {task["netns"] for task in tasks} != {os.readlink("/proc/self/ns/net")}, tasks
    assert isolated_cluster.driver_host != "127.0.0.1"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_pipeline_auto_transport_finishes_when_tasks_cannot_reach_the_provider(
    isolated_cluster: ClusterSpark,
    fresh_emulator: Callable[..., Emulator],
    tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture,
    provider: str,
) -> None:
    import logging

    import spark_llm_batch
    from spark_llm_batch.config import BatchLimits, PollPolicy
    from spark_llm_batch.emulator import _answers
    from tests.pipeline_helpers import MODELS, base_url, billed_counts

    emu = fresh_emulator(processing_seconds=1.0, clock_speed=50.0)  # 127.0.0.1: the driver only
    spark = isolated_cluster.spark
    rows = [(i, f"Summarise isolated item {i}") for i in range(PIPELINE_ROWS)]
    df = spark.createDataFrame(rows, "id long, prompt string").repartition(3)
    # The workers share this machine's disk (only their network is apart): a path store works.
    store = tmp_path_factory.mktemp(f"noegress-{provider}") / "store"
    with caplog.at_level(logging.INFO, logger="spark_llm_batch"):
        out = spark_llm_batch.llm_batch(
            df,
            "prompt",
            model=MODELS[provider],
            store=str(store),
            id_col="id",
            limits=BatchLimits(max_requests=40),
            poll=PollPolicy(initial_seconds=0.05, max_seconds=0.2, progress_seconds=1.0),
            provider_settings={"api_key": "sk-test-emulator", "base_url": base_url(emu, provider)},
        )
    assert "transport: driver (executors cannot reach 127.0.0.1:" in caplog.text, caplog.text
    got = {r["id"]: r for r in out.select("id", "llm.*").collect()}
    assert len(got) == PIPELINE_ROWS
    for i, prompt in rows:
        assert got[i]["status"] == "succeeded", got[i]
        assert got[i]["text"] == _answers.expected_text(prompt, model=MODELS[provider], system=None)
    billed = billed_counts(emu)
    assert len(billed) == PIPELINE_ROWS
    assert set(billed.values()) == {1}
