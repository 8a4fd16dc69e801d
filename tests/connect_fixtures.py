"""A Spark Connect session for tests: a local Connect server with Delta, in a child process.

The server is the classic test session (``local[2]``, Delta, UI off) with Spark's Connect plugin,
listening on a free localhost port; it runs in its own process so that the test process is a pure
Connect client, as on Databricks shared clusters or serverless: no JVM and no ``SparkContext`` on the
client side, so anything in the library that reaches for them fails here.

A process is either classic or Connect: once a Connect session exists, ``pyspark.sql.functions``
builds Connect columns (PySpark decides by an environment variable, not by the DataFrame), and a
classic ``SparkContext`` forbids ``SparkSession.builder.remote(...)``. So these fixtures refuse to
start next to the classic ``spark`` fixture; ``tests/test_connect.py`` runs the Connect tests
(``tests/connect_cases.py``) in a pytest process of their own.

Run a server by hand: ``python -m tests.connect_fixtures PORT`` (it stops when its stdin closes).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

REPO = Path(__file__).resolve().parents[1]
READY = "connect server ready"
START_TIMEOUT = 300.0  # the first start resolves the Delta jars; later ones take ~10-30 s


@pytest.fixture(scope="session")
def connect_url() -> Iterator[str]:
    """``sc://localhost:PORT`` of a local Connect server with Delta, running for the test session."""
    from pyspark import SparkContext

    if SparkContext._active_spark_context is not None:
        pytest.fail(
            "Spark Connect tests cannot share a process with the classic spark fixture: "
            "run them in their own pytest process (see tests/test_connect.py)"
        )
    port = _free_port()
    with _server(port):
        yield f"sc://localhost:{port}"


@pytest.fixture(scope="session")
def connect_spark(connect_url: str) -> Iterator[SparkSession]:
    """A Spark Connect session on the ``connect_url`` server, shared by the test session."""
    from pyspark.sql import SparkSession

    session = SparkSession.builder.remote(connect_url).getOrCreate()
    yield session
    session.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _server(port: int) -> Iterator[None]:
    """Start ``python -m tests.connect_fixtures PORT``; wait for it to listen; stop it after."""
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.connect_fixtures", str(port)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(server)
        yield
    finally:
        assert server.stdin is not None
        server.stdin.close()  # the server's signal to stop
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_ready(server: subprocess.Popen[str]) -> None:
    assert server.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([server.stdout], [], [], 1.0)
        if ready:
            line = server.stdout.readline()
            if line.strip() == READY:
                return
            if not line:  # EOF: the server died
                break
    raise RuntimeError(f"the Spark Connect server did not start (exit code {server.poll()})")


def main(argv: list[str]) -> None:
    """Serve Spark Connect on ``argv[0]`` (a localhost port) until stdin closes."""
    from spark_llm_batch.session import local_session
    from tests.spark_fixtures import SPARK_TEST_CONF

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
    print(READY, flush=True)
    sys.stdin.read()  # until the test process closes our stdin (or dies)
    spark.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    main(sys.argv[1:])
