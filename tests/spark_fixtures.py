"""The one session-scoped Spark fixture (local[2], UI off, few partitions, Delta configured)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


SPARK_TEST_CONF = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "4",
    "spark.driver.memory": "2g",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "2000",
    # Delta's default retention checks and stats are pure overhead for small test tables.
    "spark.databricks.delta.retentionDurationCheck.enabled": "false",
}
"""The test session's settings (the Spark Connect test server uses them too)."""


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """A local Spark session with Delta Lake, shared by the whole test session."""
    from spark_llm_batch.session import local_session

    session = local_session("spark-llm-batch-tests", master="local[2]", conf=SPARK_TEST_CONF)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
