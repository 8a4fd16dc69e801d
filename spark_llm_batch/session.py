"""A Spark session with Delta Lake for users outside Databricks.

On Databricks (or anywhere a session is already active) :func:`get_session` returns the active
session untouched. Elsewhere :func:`local_session` builds a local one with the Delta Lake extension;
Spark resolves the Delta jars from Maven Central on its first start and caches them under ``~/.ivy2``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["get_session", "local_session"]

log = logging.getLogger("spark_llm_batch")

_NO_DELTA = (
    "spark-submit was not given Delta Lake, which the store and the output need: add --packages "
    "io.delta:delta-spark_<spark major.minor>_2.13:<delta-spark version> --conf "
    "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension --conf "
    "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog "
    "(see README, Jobs from YAML)"
)

_DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def local_session(
    app_name: str = "spark-llm-batch",
    *,
    master: str = "local[*]",
    conf: dict[str, Any] | None = None,
) -> SparkSession:
    """Build (or return) a local Spark session configured for Delta Lake.

    Args:
        app_name: the Spark application name.
        master: the Spark master, ``local[*]`` by default.
        conf: extra Spark settings; they win over the defaults here.

    Example:
        >>> spark = local_session(master="local[2]", conf={"spark.ui.enabled": "false"})  # doctest: +SKIP
    """
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    settings: dict[str, Any] = {
        **_DELTA_CONF,
        # Delta's log replay defaults to 50 partitions: far too many for small local metadata tables.
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.sql.shuffle.partitions": "8",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
        **(conf or {}),
    }
    # Python workers must run the driver's interpreter (it has pyarrow and this package); PySpark
    # reads PYSPARK_PYTHON when it starts, and its default, "python3" from PATH, may be another one.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name).master(master)
    for key, value in settings.items():
        builder = builder.config(key, value)
    return configure_spark_with_delta_pip(builder).getOrCreate()


def get_session() -> SparkSession:
    """The session in use, classic or Spark Connect (Databricks, spark-submit), else a new one.

    With no session yet, a Spark Connect client (``SPARK_REMOTE=sc://...``) connects to its server
    as is; under ``spark-submit`` (its JVM is up, with the command line's master, packages and
    ``--conf`` settings) the session is built from those settings as they are, with a warning when
    they lack Delta Lake; anywhere else :func:`local_session` builds a local Delta one.

    Example:
        >>> spark = get_session()  # doctest: +SKIP
    """
    from pyspark.errors import PySparkRuntimeError
    from pyspark.sql import SparkSession

    try:
        # The thread's active session, else the default one (another thread's, e.g. Connect's).
        return SparkSession.active()
    except PySparkRuntimeError:
        pass
    if os.environ.get("SPARK_REMOTE", "").startswith("sc://"):
        # local_session's settings are for a local JVM: never push them onto a remote server.
        return SparkSession.builder.getOrCreate()
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # spark-submit started the JVM for this driver
        spark = SparkSession.builder.getOrCreate()
        extensions = spark.conf.get("spark.sql.extensions", "") or ""
        # Databricks runtimes have Delta built in, without listing its extension.
        if "Delta" not in extensions and "DATABRICKS_RUNTIME_VERSION" not in os.environ:
            log.warning(_NO_DELTA)
        return spark
    return local_session()
