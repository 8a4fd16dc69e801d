"""What the benchmarks share: the emulator in its own process and its ledger, the input table of
~300-character prompts, the output check, the machine's load."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.request
from typing import Any

__all__ = [
    "INPUT_PARTITIONS",
    "MASTER",
    "MODEL",
    "SPARK_CONF",
    "check_ledger",
    "check_output",
    "clear_ledger",
    "ledger_counts",
    "load_average",
    "machine_line",
    "run_worker",
    "settings_line",
    "start_emulator",
    "worker_parser",
    "write_input",
]

INPUT_PARTITIONS = 8
"""Files of the input table, unless a benchmark asks for another partitioning."""

MASTER = "local[2]"
"""The benchmarks' Spark master: this machine's two cores."""

MODEL = "gpt-4o-mini"
"""The model every benchmark asks the emulator for."""

SPARK_CONF = {
    "spark.ui.enabled": "false",
    "spark.driver.memory": "6g",
    "spark.sql.shuffle.partitions": "8",
    "spark.default.parallelism": "8",
}
"""The Spark settings of the pipeline benchmarks (others change what they measure)."""


def write_input(
    spark: Any,
    path: str,
    rows: int,
    first_id: int = 0,
    *,
    partitions: int = INPUT_PARTITIONS,
    mode: str = "overwrite",
) -> None:
    """``rows`` distinct prompts of ~300 characters, each starting with its row id (from
    ``first_id``), written as ``partitions`` files."""
    from pyspark.sql import functions as F

    idx = F.col("id").cast("string")
    prompt = F.concat(
        F.lit("Row "),
        idx,
        F.lit(": summarise the following record in one short sentence, keeping its key terms. "),
        F.sha2(idx, 256),
        F.lit(" "),
        F.sha2(F.concat(idx, F.lit("/b")), 256),
        F.lit(" "),
        F.sha2(F.concat(idx, F.lit("/c")), 224),
    )
    frame = spark.range(first_id, first_id + rows, 1, partitions).select(
        "id", prompt.alias("prompt")
    )
    frame.write.format("delta").mode(mode).save(path)


def check_output(spark: Any, source: str, output: str) -> None:
    """One output row per input row, each succeeded with the answer to its own prompt."""
    from pyspark.sql import functions as F

    out = spark.read.format("delta").load(output)
    rows, expected = out.count(), spark.read.format("delta").load(source).count()
    own = F.col("llm.text").contains(
        F.concat(F.lit("Row "), F.col("id").cast("string"), F.lit(":"))
    )
    bad = out.where((F.col("llm.status") != "succeeded") | ~own).count()
    distinct = out.select("id").distinct().count()
    if rows != expected or bad or distinct != expected:
        raise SystemExit(f"wrong output: {rows} rows ({distinct} ids) for {expected}, {bad} bad")


def check_ledger(base_url: str, rows: int, repeats: int) -> None:
    """Every request of the timed runs billed once per run (then the ledger is cleared)."""
    billed = ledger_counts(base_url)
    if len(billed) != rows or set(billed.values()) != {repeats}:
        raise SystemExit(
            f"ledger: {len(billed)} distinct requests billed, counts {set(billed.values())}; "
            f"expected {rows} billed {repeats} time(s) each"
        )


def start_emulator(*options: str) -> tuple[subprocess.Popen[str], str]:
    """The emulator in its own process (``processing_seconds=0``, any further CLI ``options``)
    and its base URL."""
    command = [sys.executable, "-m", "spark_llm_batch.emulator", "--host", "127.0.0.1"]
    command += ["--port", "0", "--processing-seconds", "0", *options]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("OPENAI_BASE_URL="):
            return proc, line.strip().split("=", 1)[1]
    raise RuntimeError("the emulator did not print its base URL")


def ledger_counts(base_url: str) -> dict[str, int]:
    """custom_id -> times billed, from the emulator's ledger (then cleared)."""
    root = base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/_emulator/ledger", timeout=600) as response:
        entries = json.load(response)["data"]
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["custom_id"]] = counts.get(entry["custom_id"], 0) + 1
    clear_ledger(base_url)
    return counts


def clear_ledger(base_url: str) -> None:
    """Empty the emulator's billing ledger."""
    root = base_url.removesuffix("/v1")
    request = urllib.request.Request(f"{root}/_emulator/ledger", method="DELETE")
    urllib.request.urlopen(request, timeout=60).close()


def load_average() -> str:
    """The load averages over 1, 5 and 15 minutes, as ``/proc/loadavg`` gives them."""
    with open("/proc/loadavg", encoding="ascii") as fh:
        return " ".join(fh.read().split()[:3])


def worker_parser(prog: str) -> argparse.ArgumentParser:
    """The command line every benchmark's worker process takes (``worker --rows N --base-url URL
    --work DIR``); a benchmark adds its own options."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("mode", choices=["worker"])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--work", required=True)
    return parser


def settings_line(master: str, conf: dict[str, str]) -> str:
    """The Spark settings a benchmark ran with, for its report."""
    return f"Settings: `{master}`, " + ", ".join(f"`{k}={v}`" for k, v in conf.items()) + "."


def machine_line(loads: list[str]) -> str:
    """The machine a benchmark ran on, for its report: cores and the load before and after."""
    return (
        f"Machine: {os.cpu_count()} cores, shared (load average before → after: "
        f"{' → '.join(loads)})."
    )


def run_worker(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m <module> worker <args>`` (its stderr passes through) and return the JSON
    object its last line of standard output holds."""
    command = [sys.executable, "-m", module, "worker", *args]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
