"""A remote Spark Connect session for tests: a Connect server with Delta that shares no temp files.

The server is the classic test session (``local[2]``, Delta, UI off) with Spark's Connect plugin,
listening on a free port of 127.0.0.1. It runs in a process of its own so that the test process is
a pure Connect client, as on Databricks shared clusters or serverless: no JVM and no
``SparkContext`` on the client side, so anything in the library that reaches for them fails here.

It is remote for real: the server runs in its own mount namespace with a private, empty ``/tmp``
(and a private mount over any other temporary directory the client uses, such as pytest's
``tmp_path`` base when it lives outside ``/tmp``). On Databricks the client has none of the
server's files and the server none of the client's, so a library that opens a store or staging
file from the client, or hands the server a path the client wrote, must fail here too instead of
passing because both sides happen to see one disk. The repository, the virtualenv and ``~`` (the
Ivy cache of the Delta jars) stay shared, as a cluster has the library installed; the network is
shared, so the client reaches the server, and the server's tasks reach the client's emulator, on
127.0.0.1. The server also gets its own PID namespace, so its JVM and Python workers die with it:
no process outlives the fixture.

Test store locations must therefore be paths that only the server resolves, such as
``/tmp/llm-connect-<uuid>/store``; the client reads them through Spark, never from its disk.

A process is either classic or Connect: once a Connect session exists, ``pyspark.sql.functions``
builds Connect columns (PySpark decides by an environment variable, not by the DataFrame), and a
classic ``SparkContext`` forbids ``SparkSession.builder.remote(...)``. So these fixtures refuse to
start next to the classic ``spark`` fixture; ``tests/test_connect.py`` runs the Connect tests
(``tests/connect_cases.py``) in a pytest process of their own.

By hand, ``python -m tests.connect_fixtures PORT`` serves without isolation and
``server_command(PORT, private_dirs(...))`` is the isolated command line (it needs root, or
unprivileged user namespaces); either stops when its stdin closes.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

REPO = Path(__file__).resolve().parents[1]
KEEP = "/run/spark-llm-batch-connect-root"
"""An empty mount point outside ``/tmp``: the shared tree is reached there for a moment, while the
private mounts go on, to bind back what the server needs (see :func:`needed_inside`)."""
READY = "connect server ready"
START_TIMEOUT = 300.0  # the first start resolves the Delta jars; later ones take ~10-30 s
STOP_TIMEOUT = 60.0  # a clean spark.stop(); after it the namespace is killed
KILL_TIMEOUT = 30.0
PRIVATE_TMP_SIZE = "4g"  # tmpfs pages are only used as written: a cap, not a reservation


@pytest.fixture(scope="session")
def connect_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``sc://127.0.0.1:PORT`` of a Connect server with Delta and a private ``/tmp``."""
    from pyspark import SparkContext

    if SparkContext._active_spark_context is not None:
        pytest.fail(
            "Spark Connect tests cannot share a process with the classic spark fixture: "
            "run them in their own pytest process (see tests/test_connect.py)"
        )
    port = _free_port()
    hidden = private_dirs(tmp_path_factory.getbasetemp())
    with _server(port, hidden):
        yield f"sc://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def connect_spark(connect_url: str) -> Iterator[SparkSession]:
    """A Spark Connect session on the ``connect_url`` server, shared by the test session."""
    from pyspark.sql import SparkSession

    session = SparkSession.builder.remote(connect_url).getOrCreate()
    yield session
    session.stop()


def private_dirs(pytest_basetemp: Path) -> list[str]:
    """The directories the server gets an empty private mount over: ``/tmp`` first.

    The client's temporary files live in ``tempfile.gettempdir()`` and pytest's base temp
    directory; both are under ``/tmp`` by default, but ``TMPDIR`` or ``--basetemp`` can move them
    onto a disk the server would otherwise share. What the server needs and a hidden directory
    holds (a checkout under ``/tmp``, as a CI clone may be) is shown to it again:
    :func:`needed_inside`.
    """
    dirs = [Path("/tmp")]
    for candidate in (Path(tempfile.gettempdir()).resolve(), pytest_basetemp.resolve()):
        if not any(candidate.is_relative_to(d) for d in dirs):
            dirs.append(candidate)
    return [str(d) for d in dirs]


def needed_inside(hidden: Sequence[str]) -> list[str]:
    """What the server needs (the repository, the virtualenv, the home directory) that lies
    inside a directory of ``hidden``: bound back into its private mount, nothing else is."""
    needed = {REPO, Path(sys.prefix).resolve(), Path.home().resolve()}
    inside = {n for n in needed for h in hidden if n.is_relative_to(h)}
    # The outermost only (the virtualenv is usually inside the repository).
    return sorted(str(n) for n in inside if not any(n != o and n.is_relative_to(o) for o in inside))


def server_command(port: int, hidden: Sequence[str]) -> list[str]:
    """The command line of an isolated server: its own mount and PID namespaces, ``hidden`` empty.

    ``--kill-child`` and the PID namespace make cleanup the kernel's job: when ``unshare`` dies,
    the server (PID 1 of the namespace) gets SIGKILL, and with it every process it started (the
    JVM, the Python workers); the private mounts go with the namespace.
    """
    keep = needed_inside(hidden)
    mounts = []
    if keep:  # the shared tree stays reachable at KEEP while the private mounts go on top
        mounts += [f"mkdir -p {KEEP}", f"mount --rbind / {KEEP}"]
    mounts += [f"mount -t tmpfs -o size={PRIVATE_TMP_SIZE} tmpfs {shlex.quote(d)}" for d in hidden]
    for path in keep:
        quoted = shlex.quote(path)
        mounts += [f"mkdir -p {quoted}", f"mount --bind {shlex.quote(KEEP + path)} {quoted}"]
    if keep:
        mounts.append(f"umount -l {KEEP}")
    # The working directory is private too, so spark-warehouse/, metastore_db/ and derby.log land
    # in the server's /tmp, not in the shared repository; PYTHONPATH finds tests.connect_fixtures.
    script = " && ".join(
        [
            *mounts,
            "cd /tmp",
            f"exec {shlex.quote(sys.executable)} -m tests.connect_fixtures {port}",
        ]
    )
    isolate = ["--mount", "--propagation", "private", "--pid", "--fork", "--kill-child"]
    isolate.append("--mount-proc")  # a /proc that shows the namespace's PIDs (the JVM reads it)
    if os.geteuid() != 0:
        isolate.append("--map-root-user")  # mounting needs CAP_SYS_ADMIN: a user namespace's
    return ["unshare", *isolate, "--", "sh", "-c", script]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _server(port: int, hidden: Sequence[str]) -> Iterator[None]:
    """Start the isolated server; wait for it to listen; stop it after, within bounded waits."""
    if shutil.which("unshare") is None:
        pytest.fail("the Spark Connect tests need unshare (util-linux) to isolate the server")
    pythonpath = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
    server = subprocess.Popen(
        server_command(port, hidden),
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(server)
        yield
    finally:
        _stop(server)


def _stop(server: subprocess.Popen[str]) -> None:
    """Close the server's stdin (its signal to stop); kill the namespace if it does not."""
    assert server.stdin is not None
    assert server.stdout is not None
    with contextlib.suppress(OSError):  # a server that already died leaves a broken pipe
        server.stdin.close()
    try:
        server.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        server.kill()  # unshare: --kill-child takes the namespace's PID 1, hence all, with it
        server.wait(timeout=KILL_TIMEOUT)
    finally:
        server.stdout.close()


def _wait_ready(server: subprocess.Popen[str]) -> None:
    assert server.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([server.stdout], [], [], 1.0)
        if ready:
            line = server.stdout.readline()
            if line.strip() == READY:
                return
            if not line:  # EOF: the server (or the mount before it) died; its stderr says why
                break
    raise RuntimeError(
        f"the Spark Connect server did not start (exit code {server.poll()}); it needs root or "
        f"unprivileged user namespaces to mount its private /tmp (see the stderr above)"
    )


def main(argv: list[str]) -> None:
    """Serve Spark Connect on ``argv[0]`` (a port of 127.0.0.1) until stdin closes."""
    from spark_llm_batch.session import local_session
    from tests.spark_fixtures import SPARK_TEST_CONF

    # Our stdout is the ready signal: point fd 1 at stderr for everything else (the JVM inherits
    # it), so that chatter nobody reads cannot fill the pipe and block the server.
    ready_pipe = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    port = argv[0]
    spark = local_session(
        "spark-llm-batch-connect-tests",
        master="local[2]",
        conf={
            **SPARK_TEST_CONF,
            "spark.plugins": "org.apache.spark.sql.connect.SparkConnectPlugin",
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": port,
            "spark.log.level": "ERROR",
        },
    )
    print(READY, file=ready_pipe, flush=True)
    sys.stdin.read()  # until the test process closes our stdin (or dies)
    spark.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    main(sys.argv[1:])
