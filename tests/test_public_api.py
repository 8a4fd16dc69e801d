"""The public surface: a sorted, honest __all__, lazy heavy imports, the DataFrame alias."""

from __future__ import annotations

import subprocess
import sys

import spark_llm_batch


def test_all_is_sorted_and_complete() -> None:
    exported = spark_llm_batch.__all__
    assert exported == sorted(exported)
    public = {name for name in vars(spark_llm_batch) if not name.startswith("_")}
    # Submodules are reachable as attributes but are not part of the surface.
    modules = {"api", "config", "errors", "session", "sql", "providers", "emulator"}
    assert public - modules - {"annotations"} == set(exported) - {"__version__"}
    for name in exported:
        assert getattr(spark_llm_batch, name) is not None


def test_import_is_lazy() -> None:
    """Importing the package must not load the SDKs, the emulator's server or start a JVM."""
    code = (
        "import sys, spark_llm_batch\n"
        "heavy = [m for m in ('openai', 'anthropic', 'aiohttp', 'spark_llm_batch.emulator', 'delta')"
        " if m in sys.modules]\n"
        "from pyspark.sql import SparkSession\n"
        "assert SparkSession.getActiveSession() is None\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_dataframe_alias_is_attached() -> None:
    from pyspark.sql import DataFrame

    assert callable(DataFrame.llm_batch)  # type: ignore[attr-defined]
    assert "spark_llm_batch.llm_batch" in (DataFrame.llm_batch.__doc__ or "")  # type: ignore[attr-defined]
