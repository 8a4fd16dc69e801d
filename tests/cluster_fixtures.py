"""A Spark standalone cluster on an S3-compatible server, with or without executor egress.

Invariant 6 says the library works where executors are other processes with no shared local disk,
and where storage is object storage reached only through Spark (Hadoop) filesystems. These fixtures
build that on one machine:

- ``s3_bucket``: moto's S3 server on ``127.0.0.1`` (a thread of the test process) and a bucket.
- ``open_cluster``: a standalone master and two workers (separate JVMs, 1 core and 1g each, their
  own work and local dirs), all on ``127.0.0.1``, and a classic session on them whose ``s3a://``
  and ``s3://`` URIs go to the bucket; its executors reach anything the test process serves on
  ``127.0.0.1`` (the emulator).
- ``isolated_cluster``: the same, but the workers run in a network namespace joined to the root one
  by a veth pair only (``10.213.7.1/30`` root side, ``10.213.7.2/30`` namespace side): the driver
  and the master bind to the root side, so Spark's own traffic flows, while ``127.0.0.1`` in a task
  is the namespace's loopback: a server the test process runs on ``127.0.0.1`` is unreachable from
  Python in tasks, as on a cluster without egress.

A process is one SparkContext or none: the two cluster fixtures share :class:`ClusterPool`, which
keeps at most one cluster and its session up and swaps them when a test asks for the other kind,
so order the cases by kind. Never next to the local ``spark`` fixture: ``tests/test_cluster.py``
runs the cases (``tests/cluster_cases.py``) in pytest processes of their own.

No ``AWS_*`` variable exists in the test process or the cluster's processes: S3A is configured
through Spark settings only (:func:`s3a_conf`). The first start resolves hadoop-aws and the AWS SDK
bundle (~750 MB) into ``~/.ivy2.5.2``; later ones take ~30-60 s per cluster.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:
    import boto3  # noqa: F401  (the client's type is only named in annotations)
    from pyspark.sql import SparkSession

ClusterKind = Literal["open", "isolated"]

BUCKET = "spark-llm-batch-tests"
S3_REGION = "us-east-1"
S3_ACCESS_KEY = "test-access-key"  # moto accepts any key pair
S3_SECRET_KEY = "test-secret-key"
LOOPBACK = "127.0.0.1"

NETNS = "sllb-noegress"
VETH_ROOT = "sllb-veth0"
VETH_NS = "sllb-veth1"
ROOT_IP = "10.213.7.1"
NS_IP = "10.213.7.2"
NETNS_LOCK = Path("/tmp/spark-llm-batch-netns.lock")  # the namespace's names are machine-wide

DAEMON_START_TIMEOUT = 120.0  # a master or worker JVM on a busy 2-core machine
EXECUTORS_TIMEOUT = 180.0  # both executors registered with the driver
STOP_TIMEOUT = 30.0  # SIGTERM to SIGKILL
NETNS_LOCK_TIMEOUT = 600.0  # another run of these tests holds the namespace
COMMAND_TIMEOUT = 30.0  # one `ip` command

CLUSTER_SPARK_CONF: dict[str, str] = {
    # What spark_llm_batch.session.local_session sets (Delta, small metadata tables, Arrow).
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
    # What tests/spark_fixtures.py sets, and a small cluster: two executors of one core each.
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "4",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "2000",
    "spark.databricks.delta.retentionDurationCheck.enabled": "false",
    "spark.driver.memory": "1g",
    "spark.executor.memory": "512m",
    "spark.executor.cores": "1",
    "spark.cores.max": "2",
    "spark.log.level": "WARN",
    # Delta pulls hadoop-client 3.4.x; pyspark bundles its own (newer) Hadoop client, which wins
    # anyway (parent-first class loading): do not ship 50 MB of shadowed jars to each executor.
    "spark.jars.excludes": (
        "org.apache.hadoop:hadoop-client-api,org.apache.hadoop:hadoop-client-runtime"
    ),
}
"""Settings of every cluster session (the driver address and S3A come on top)."""


# -- environment --------------------------------------------------------------------------------


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without AWS, provider or Spark Connect variables, plus ``extra``."""
    dropped = ("AWS_", "OPENAI_", "ANTHROPIC_", "SPARK_REMOTE", "SPARK_CONNECT_MODE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    return {**env, **(extra or {})}


def aws_variables(env: Mapping[str, str]) -> list[str]:
    """The names of ``AWS_*`` variables in ``env`` (the fixtures keep this empty)."""
    return sorted(name for name in env if name.startswith("AWS_"))


@pytest.fixture(name="_no_aws_env", scope="session", autouse=True)
def no_aws_env_fixture() -> Iterator[None]:
    """Strip ``AWS_*`` from the test process (the JVM inherits it) for the whole session."""
    saved = {name: os.environ.pop(name) for name in aws_variables(os.environ)}
    assert not aws_variables(os.environ)
    yield
    os.environ.update(saved)


def pyspark_home() -> Path:
    """The pip-installed pyspark folder: a Spark distribution with ``bin/`` and ``jars/``."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def hadoop_version() -> str:
    """The Hadoop client version bundled with pyspark (hadoop-aws must match it exactly)."""
    jars = sorted((pyspark_home() / "jars").glob("hadoop-client-api-*.jar"))
    match = re.fullmatch(r"hadoop-client-api-(.+)\.jar", jars[0].name) if jars else None
    if match is None:
        raise RuntimeError(f"no hadoop-client-api jar in {pyspark_home() / 'jars'}")
    return match.group(1)


# -- S3 -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Bucket:
    """A bucket on a local S3-compatible server."""

    endpoint: str
    name: str

    def uri(self, path: str, *, scheme: str = "s3a") -> str:
        """``scheme://bucket/path``."""
        return f"{scheme}://{self.name}/{path.lstrip('/')}"

    def client(self) -> Any:
        """A boto3 S3 client on the server (tests only: the library goes through Spark)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_REGION,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@pytest.fixture(name="s3_bucket", scope="session")
def s3_bucket_fixture(_no_aws_env: None) -> Iterator[S3Bucket]:
    """moto's S3 server on ``127.0.0.1`` (a free port) with an empty bucket, for the session."""
    from moto.server import ThreadedMotoServer

    # One log line per S3 request would bury every failure report under thousands of them.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()  # binds before it returns: port 0 on loopback cannot fail to bind
    try:
        host, port = server.get_host_and_port()
        bucket = S3Bucket(endpoint=f"http://{host}:{port}", name=BUCKET)
        bucket.client().create_bucket(Bucket=BUCKET)
        yield bucket
    finally:
        server.stop()


def s3a_conf(bucket: S3Bucket) -> dict[str, str]:
    """Spark settings that point ``s3a://`` and ``s3://`` at ``bucket``'s server (no env vars)."""
    return {
        "spark.hadoop.fs.s3a.endpoint": bucket.endpoint,
        # SDK v2 wants a region; naming one also keeps it from probing EC2 metadata for it.
        "spark.hadoop.fs.s3a.endpoint.region": S3_REGION,
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
        "spark.hadoop.fs.s3a.access.key": S3_ACCESS_KEY,
        "spark.hadoop.fs.s3a.secret.key": S3_SECRET_KEY,
        # Only the keys above: the default chain would also read env vars and EC2 metadata.
        "spark.hadoop.fs.s3a.aws.credentials.provider": (
            "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
        ),
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
    }


# -- processes ----------------------------------------------------------------------------------


@dataclass
class Daemon:
    """A JVM of the cluster, in a process group of its own, logging to ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 3000) -> str:
        """The end of the log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (exit code {self.process.poll()}) ---\n{text[-chars:]}"

    def wait_for_log(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` in the log; fails if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log.read_text(errors="replace"))
            if found:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"{self.name}: no {pattern!r} in its log\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM the process group (the JVM and its executors), SIGKILL it after a while."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
                break
            except subprocess.TimeoutExpired:
                continue
        # Executors may outlive a worker stopped by SIGTERM: make sure the group is gone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def start_daemon(
    name: str, args: Sequence[str], *, env: Mapping[str, str], cwd: Path, prefix: Sequence[str]
) -> Daemon:
    """Run ``prefix + spark-class args`` in a new process group, its output in ``cwd/name.log``."""
    log = cwd / f"{name}.log"
    spark_class = str(pyspark_home() / "bin" / "spark-class")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*prefix, spark_class, *args],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() kills the JVM's children too
        )
    return Daemon(name, process, log)


def daemon_env(host: str, local_dirs: Path, conf_dir: Path) -> dict[str, str]:
    """A cluster JVM's environment: bound to ``host``, this venv's Python, no AWS variables."""
    env = clean_env(
        {
            "SPARK_HOME": str(pyspark_home()),
            "SPARK_CONF_DIR": str(conf_dir),  # empty: no stray spark-defaults or spark-env
            "SPARK_LOCAL_IP": host,  # every socket the JVM (and its executors) bind, the web UI too
            "SPARK_LOCAL_HOSTNAME": host,
            "SPARK_LOCAL_DIRS": str(local_dirs),
            "SPARK_DAEMON_MEMORY": "512m",
            "PYSPARK_PYTHON": sys.executable,
            # No REST submission server: it takes the fixed port 6066 on the host.
            "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
        }
    )
    assert not aws_variables(env)
    return env


@dataclass
class StandaloneCluster:
    """A running standalone master and its workers."""

    master_url: str
    web_url: str
    master: Daemon
    workers: list[Daemon]
    worker_dirs: list[Path]
    root: Path

    def state(self) -> dict[str, Any]:
        """The master's JSON status (``/json/``)."""
        with urllib.request.urlopen(f"{self.web_url}/json/", timeout=5) as reply:
            return dict(json.load(reply))

    def alive_workers(self) -> int:
        """How many workers are registered and alive."""
        return sum(1 for worker in self.state()["workers"] if worker["state"] == "ALIVE")

    def logs(self) -> str:
        """The tails of every daemon's log (for failure messages)."""
        return "\n".join(daemon.tail() for daemon in [self.master, *self.workers])


def wait_for_workers(cluster: StandaloneCluster, count: int, timeout: float) -> None:
    """Return once ``count`` workers are alive at the master; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [d.name for d in [cluster.master, *cluster.workers] if d.process.poll() is not None]
        if dead:
            raise RuntimeError(f"{dead} exited while starting\n{cluster.logs()}")
        with contextlib.suppress(OSError, ValueError, KeyError):
            if cluster.alive_workers() >= count:
                return
        time.sleep(0.5)
    raise RuntimeError(
        f"fewer than {count} workers registered in {timeout:.0f} s\n{cluster.logs()}"
    )


@contextlib.contextmanager
def standalone_cluster(
    root: Path,
    *,
    master_host: str = LOOPBACK,
    worker_host: str = LOOPBACK,
    worker_prefix: Sequence[str] = (),
    workers: int = 2,
) -> Iterator[StandaloneCluster]:
    """A master on ``master_host`` and ``workers`` workers (1 core, 1g each) on ``worker_host``.

    Args:
        root: an empty folder for the daemons' logs, work dirs and local dirs.
        master_host: the address the master binds (and the driver must reach).
        worker_host: the address the workers and their executors bind.
        worker_prefix: a command the workers run under, e.g. ``["ip", "netns", "exec", NAME]``.
        workers: how many workers.

    Yields:
        The cluster, once every worker is registered; everything is stopped on exit.
    """
    conf_dir = root / "conf"
    conf_dir.mkdir(parents=True)
    daemons: list[Daemon] = []
    try:
        master_dir = root / "master"
        master_dir.mkdir()
        master_args = ["org.apache.spark.deploy.master.Master", "--host", master_host]
        master = start_daemon(
            "master",
            [*master_args, "--port", "0", "--webui-port", "0"],
            env=daemon_env(master_host, master_dir, conf_dir),
            cwd=master_dir,
            prefix=(),
        )
        daemons.append(master)
        port = master.wait_for_log(
            r"Starting Spark master at spark://\S+:(\d+)", DAEMON_START_TIMEOUT
        )
        ui_port = master.wait_for_log(r"'MasterUI' on port (\d+)", DAEMON_START_TIMEOUT)
        master_url = f"spark://{master_host}:{port.group(1)}"
        worker_dirs = []
        for index in range(workers):
            work = root / f"worker{index}"
            (work / "local").mkdir(parents=True)
            worker_dirs.append(work)
            args = ["org.apache.spark.deploy.worker.Worker", "--host", worker_host]
            args += ["--cores", "1", "--memory", "1g", "--webui-port", "0"]
            args += ["--work-dir", str(work / "work"), master_url]
            env = daemon_env(worker_host, work / "local", conf_dir)
            daemons.append(
                start_daemon(f"worker{index}", args, env=env, cwd=work, prefix=worker_prefix)
            )
        cluster = StandaloneCluster(
            master_url=master_url,
            web_url=f"http://{master_host}:{ui_port.group(1)}",
            master=master,
            workers=daemons[1:],
            worker_dirs=worker_dirs,
            root=root,
        )
        wait_for_workers(cluster, workers, DAEMON_START_TIMEOUT)
        yield cluster
    finally:
        for daemon in reversed(daemons):  # workers (and their executors) first
            daemon.stop()


# -- the namespace without egress ---------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=check
    )


def _remove_netns() -> None:
    """Remove the namespace and the veth pair, killing what still runs inside (ours, stale)."""
    if NETNS in _ip("netns", "list").stdout.split():
        for pid in _ip("netns", "pids", NETNS, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "delete", NETNS, check=False)
    if _ip("link", "show", VETH_ROOT, check=False).returncode == 0:
        _ip("link", "delete", VETH_ROOT, check=False)  # deleting one end deletes the pair


@contextlib.contextmanager
def _netns_lock() -> Iterator[None]:
    """Hold the machine-wide lock on the namespace's names (another run may be using them)."""
    with NETNS_LOCK.open("a") as handle:
        deadline = time.monotonic() + NETNS_LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{NETNS_LOCK} is held by another test run") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def no_egress_netns() -> Iterator[list[str]]:
    """A network namespace whose only link is a veth pair to the root namespace.

    Inside: ``lo`` up and ``NS_IP``/30, no route anywhere else; outside: ``ROOT_IP``/30. Traffic
    goes nowhere but between the two ends (IP forwarding is not involved: nothing routes through).
    A namespace left by a killed run is removed first; this one is removed on exit.

    Yields:
        The command prefix that runs a program inside the namespace.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("the no-egress cluster needs root and iproute2 (`ip netns`)")
    with _netns_lock():
        _remove_netns()
        try:
            _ip("netns", "add", NETNS)
            _ip("link", "add", VETH_ROOT, "type", "veth", "peer", "name", VETH_NS)
            _ip("link", "set", VETH_NS, "netns", NETNS)
            _ip("addr", "add", f"{ROOT_IP}/30", "dev", VETH_ROOT)
            _ip("link", "set", VETH_ROOT, "up")
            _ip("-n", NETNS, "addr", "add", f"{NS_IP}/30", "dev", VETH_NS)
            _ip("-n", NETNS, "link", "set", VETH_NS, "up")
            _ip("-n", NETNS, "link", "set", "lo", "up")
            yield ["ip", "netns", "exec", NETNS]
        finally:
            _remove_netns()


# -- the session --------------------------------------------------------------------------------


def cluster_session(
    master_url: str,
    *,
    driver_host: str,
    local_dir: Path,
    conf: Mapping[str, str] | None = None,
    app_name: str = "spark-llm-batch-cluster-tests",
) -> SparkSession:
    """A classic session on a standalone cluster: Delta, hadoop-aws, the driver on ``driver_host``.

    Args:
        master_url: ``spark://host:port``.
        driver_host: the address the driver binds and advertises (executors connect to it).
        local_dir: the driver's scratch space.
        conf: more settings (S3A, ...); they win over the defaults.
        app_name: the application name.

    Returns:
        The session (``getOrCreate``: a second call in the process returns the first one).
    """
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    settings = {
        **CLUSTER_SPARK_CONF,
        "spark.driver.host": driver_host,
        "spark.driver.bindAddress": driver_host,
        "spark.local.dir": str(local_dir),
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        **(conf or {}),
    }
    os.environ["PYSPARK_PYTHON"] = sys.executable
    builder = SparkSession.builder.appName(app_name).master(master_url)
    for key, value in settings.items():
        builder = builder.config(key, value)
    aws = f"org.apache.hadoop:hadoop-aws:{hadoop_version()}"
    return configure_spark_with_delta_pip(builder, extra_packages=[aws]).getOrCreate()


def registered_executors(spark: SparkSession) -> int:
    """How many executors have registered with the driver (a test may use the JVM; the library not)."""
    status = spark.sparkContext._jsc.sc().getExecutorMemoryStatus()  # type: ignore[union-attr]
    return int(status.size()) - 1  # the driver's block manager is counted too


def wait_for_executors(spark: SparkSession, count: int, cluster: StandaloneCluster) -> None:
    """Return once ``count`` executors registered with the driver; fail after a deadline."""
    deadline = time.monotonic() + EXECUTORS_TIMEOUT
    while time.monotonic() < deadline:
        if registered_executors(spark) >= count:
            return
        time.sleep(0.5)
    executor_logs = "\n".join(
        f"--- {path} ---\n{path.read_text(errors='replace')[-2000:]}"
        for work in cluster.worker_dirs
        for path in sorted(work.glob("work/*/*/stderr"))
    )
    raise RuntimeError(
        f"{registered_executors(spark)} of {count} executors registered in "
        f"{EXECUTORS_TIMEOUT:.0f} s\n{cluster.logs()}\n{executor_logs}"
    )


@dataclass
class ClusterSpark:
    """A cluster and the session on it."""

    kind: ClusterKind
    cluster: StandaloneCluster
    spark: SparkSession
    driver_host: str
    worker_pids: list[int] = field(default_factory=list)


class ClusterPool:
    """At most one cluster (and its session) up at a time, started on demand, swapped by kind."""

    def __init__(self, root: Path, bucket: S3Bucket) -> None:
        """Keep clusters under ``root``; their sessions' ``s3a://`` and ``s3://`` go to ``bucket``."""
        self._root = root
        self._bucket = bucket
        self._stack = contextlib.ExitStack()
        self._current: ClusterSpark | None = None
        self._started = 0

    def use(self, kind: ClusterKind) -> ClusterSpark:
        """The running cluster of ``kind``; another kind's is stopped first."""
        if self._current is not None and self._current.kind == kind:
            return self._current
        self.close()
        self._current = self._stack.enter_context(self._start(kind))
        return self._current

    def close(self) -> None:
        """Stop the session and the cluster (and remove the namespace), if any."""
        self._current = None
        self._stack.close()

    @contextlib.contextmanager
    def _start(self, kind: ClusterKind) -> Iterator[ClusterSpark]:
        self._started += 1
        root = self._root / f"{kind}-{self._started}"
        with contextlib.ExitStack() as stack:
            stack.callback(
                shutil.rmtree, root, ignore_errors=True
            )  # executors copy ~700 MB of jars
            if kind == "isolated":
                prefix = stack.enter_context(no_egress_netns())
                hosts = {"master_host": ROOT_IP, "worker_host": NS_IP, "worker_prefix": prefix}
            else:
                hosts = {"master_host": LOOPBACK, "worker_host": LOOPBACK}
            cluster = stack.enter_context(standalone_cluster(root, **hosts))  # type: ignore[arg-type]
            (root / "driver-local").mkdir()
            spark = cluster_session(
                cluster.master_url,
                driver_host=str(hosts["master_host"]),
                local_dir=root / "driver-local",
                conf=s3a_conf(self._bucket),
            )
            stack.callback(spark.stop)
            wait_for_executors(spark, len(cluster.workers), cluster)
            pids = [worker.process.pid for worker in cluster.workers]
            yield ClusterSpark(kind, cluster, spark, str(hosts["master_host"]), pids)


@pytest.fixture(name="cluster_pool", scope="session")
def cluster_pool_fixture(
    s3_bucket: S3Bucket, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterPool]:
    """The session's clusters: one at a time (see :class:`ClusterPool`)."""
    from pyspark import SparkContext

    if SparkContext._active_spark_context is not None:
        pytest.fail(
            "the cluster tests cannot share a process with another SparkContext (the local spark "
            "fixture): run them in their own pytest process (see tests/test_cluster.py)"
        )
    pool = ClusterPool(tmp_path_factory.mktemp("clusters"), s3_bucket)
    yield pool
    pool.close()


@pytest.fixture(name="open_cluster")
def open_cluster_fixture(cluster_pool: ClusterPool) -> ClusterSpark:
    """The cluster on ``127.0.0.1`` whose executors reach the test process's servers."""
    return cluster_pool.use("open")


@pytest.fixture(name="isolated_cluster")
def isolated_cluster_fixture(cluster_pool: ClusterPool) -> ClusterSpark:
    """The cluster whose workers run in a network namespace: no egress from tasks."""
    return cluster_pool.use("isolated")
