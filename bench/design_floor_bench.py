"""Design floor: the least time any implementation of the pipeline's design could take here.

Run it through :func:`run` (a Markdown body, as every benchmark module gives ``python -m bench``);
it sets the pipeline benchmark's numbers against what the design itself costs.

The design (README, "How it works") stages every request line durably in a Delta table
before anything is sent, keeps every answer in a Delta results table, and joins the answers back to
the input by request hash. This benchmark builds those steps from raw Spark/Delta operations, with
none of the library's orchestration (no store, leases, batch log, retries or checks), and times
each in one warm Spark session next to the plain copy:

1. plain copy: read the input Delta table, write it as a new Delta table;
2. stage: each row's request hash and line (the library's encoder, as :mod:`bench.provider_floor`
   builds them) with a batch key ``pmod(xxhash64(hash), batches)``, appended to a Delta table
   partitioned by that key, in one Spark job;
3. upload read: each batch's lines read from its partition into the Python driver (``toArrow``)
   and joined with newlines into the bytes an upload would send, one batch after another, no HTTP;
4. provider: :func:`bench.provider_floor.provider_floor`, the emulator alone taking the same
   request files (upload, create, poll, download), the output files kept on local disk;
5. results: those files read with ``spark.read.text``, parsed in the JVM with ``from_json`` into
   the results table's columns, appended to a Delta table;
6. output: the input with its hash recomputed, left-joined to the results on the hash, written as
   the output Delta table (the input columns and one ``llm`` struct).

The worker (``python -m bench.design_floor_bench worker``) warms every step up once, untimed, on
50,000 other prompts, then runs the six steps ``R`` times and reports each step's median. Each run
is checked: staged lines, lines read, results and output rows all equal the input's rows, and
every output row holds its own prompt's answer (:func:`bench.harness.check_output`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import (
    INPUT_PARTITIONS,
    MASTER,
    MODEL,
    SPARK_CONF,
    check_output,
    clear_ledger,
    load_average,
    machine_line,
    run_worker,
    start_emulator,
    worker_parser,
    write_input,
)
from bench.provider_floor import REQUESTS_PER_FILE, provider_floor, request_encoder

__all__ = ["run", "worker"]

_WARM_ROWS = 50_000
_STEPS = {  # step -> what it does, for the report
    "plain copy": "read the input Delta table, write it as a new Delta table",
    "stage": "hash + request line per row, batch key `pmod(xxhash64(hash), batches)`, "
    "one append to a Delta table partitioned by the key",
    "upload read": "each batch's lines from its partition into the driver (`toArrow`), joined "
    "with newlines into bytes; batches one after another, no HTTP",
    "provider": "`provider_floor`: the emulator alone (upload, create, poll every 50 ms, "
    "download to local files)",
    "results": "`spark.read.text` of the result files, `from_json` to the results columns, "
    "append to a Delta table",
    "output": "input with its hash recomputed ⋈ results on hash (left join), output Delta table",
}
_FLOOR = tuple(_STEPS)[1:]  # the steps every run of this design must take
# Result lines as the emulator writes them (OpenAI's batch output format), the fields kept.
_RESULT_LINE = (
    "custom_id STRING, error STRUCT<code: STRING, message: STRING>, "
    "response STRUCT<status_code: INT, body: STRUCT<model: STRING, "
    "choices: ARRAY<STRUCT<message: STRUCT<content: STRING>, finish_reason: STRING>>, "
    "usage: STRUCT<prompt_tokens: BIGINT, completion_tokens: BIGINT>>>"
)
_REPORTED_CONF = (
    "spark.master",
    *SPARK_CONF,
    "spark.databricks.delta.snapshotPartitions",
    "spark.sql.execution.arrow.pyspark.enabled",
)


# ---- worker ---------------------------------------------------------------------------------------


def _timed(step: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = step()
    return time.perf_counter() - start, value


def _plain(spark: Any, source: str, target: str) -> None:
    spark.read.format("delta").load(source).write.format("delta").mode("overwrite").save(target)


def _stage(spark: Any, encoder: Any, source: str, target: str, batches: int) -> None:
    """Step 2: the ``chunks`` table's columns for every input row, one partitioned append."""
    from pyspark.sql import functions as F

    prompt = F.col("prompt")
    encoded = (
        spark.read.format("delta")
        .load(source)
        .select(encoder.hash_column(prompt).alias("hash"), prompt)
        .select("hash", encoder.line_column(prompt, F.col("hash")).alias("line"))
    )
    staged = encoded.select(
        F.pmod(F.xxhash64("hash"), F.lit(batches)).cast("string").alias("batch_key"),
        "hash",
        F.lit(1).alias("attempt"),
        (F.octet_length("line") + 1).cast("long").alias("nbytes"),
        "line",
        F.current_timestamp().alias("staged_at"),
    )
    staged.write.format("delta").mode("append").partitionBy("batch_key").save(target)


def _read_batches(spark: Any, staged: str, batches: int) -> tuple[int, int]:
    """Step 3: each batch's upload bytes, built in the driver; (lines, bytes) over all batches."""
    from pyspark.sql import functions as F

    table = spark.read.format("delta").load(staged)
    lines = size = 0
    for key in range(batches):
        column = table.where(F.col("batch_key") == str(key)).select("line").toArrow()["line"]
        body = ("\n".join(column.to_pylist()) + "\n").encode()
        lines, size = lines + len(column), size + len(body)
    return lines, size


def _results(spark: Any, downloads: Path, target: str) -> None:
    """Step 5: the result files parsed into the results table's columns, one append.

    An approximation of the library's classification: a 200 answer is ``succeeded``, anything
    else ``failed`` with the error's code as its class (no refusal or truncation classes).
    """
    from pyspark.sql import functions as F

    from spark_llm_batch._store_tables import RESULT_COLUMNS

    raw = spark.read.text(str(downloads)).select(
        F.from_json("value", _RESULT_LINE).alias("r"), F.col("_metadata.file_name").alias("file")
    )
    body, choice = F.col("r.response.body"), F.col("r.response.body.choices")[0]
    ok = F.col("r.response.status_code") == 200
    values = {
        "hash": F.col("r.custom_id"),
        "status": F.when(ok, F.lit("succeeded")).otherwise(F.lit("failed")),
        "text": choice["message"]["content"],
        "finish_reason": choice["finish_reason"],
        "error_class": F.when(~ok, F.coalesce(F.col("r.error.code"), F.lit("server_error"))),
        "error_message": F.col("r.error.message"),
        "input_tokens": body["usage"]["prompt_tokens"],
        "output_tokens": body["usage"]["completion_tokens"],
        "model": body["model"],
        "batch_id": F.regexp_extract("file", r"^(.+)\.jsonl$", 1),
        "attempt": F.lit(1),
        "final": F.lit(True),
        "updated_at": F.current_timestamp(),
        "format_version": F.lit(1),
    }
    columns = [values[name].cast(kind).alias(name) for name, kind in RESULT_COLUMNS]
    raw.select(*columns).write.format("delta").mode("append").save(target)


def _output(spark: Any, encoder: Any, source: str, results: str, target: str) -> None:
    """Step 6: every input row with its answer (the input columns and one ``llm`` struct)."""
    from pyspark.sql import functions as F

    from spark_llm_batch._store_tables import RESULT_FIELDS

    df = spark.read.format("delta").load(source)
    keyed = df.withColumn("__hash", encoder.hash_column(F.col("prompt")))
    answers = spark.read.format("delta").load(results)
    answer = F.struct(*[answers[name] for name, _ in RESULT_FIELDS]).alias("llm")
    joined = keyed.join(answers, keyed["__hash"] == answers["hash"], "left")
    out = joined.select(*[keyed[c] for c in df.columns], answer)
    out.write.format("delta").mode("overwrite").save(target)


def _mb(path: Path) -> float:
    """The size of a table's (or a folder's) data files: Parquet, or the JSONL result files."""
    return (
        sum(f.stat().st_size for f in path.rglob("*.*") if f.suffix in (".parquet", ".jsonl"))
        / 2**20
    )


def _once(spark: Any, encoder: Any, source: str, rows: int, work: Path) -> dict[str, Any]:
    """The six steps on ``source`` (``rows`` rows) under ``work``, checked; seconds and sizes."""
    work.mkdir(parents=True)
    staged, results, output = (str(work / n) for n in ("staged", "results", "output"))
    downloads = work / "downloads"
    batches = max(1, math.ceil(rows / REQUESTS_PER_FILE))
    seconds: dict[str, float] = {}
    seconds["plain copy"], _ = _timed(lambda: _plain(spark, source, str(work / "plain")))
    seconds["stage"], _ = _timed(lambda: _stage(spark, encoder, source, staged, batches))
    seconds["upload read"], (lines, upload_bytes) = _timed(
        lambda: _read_batches(spark, staged, batches)
    )
    floor = provider_floor(spark, source, work, MODEL, keep=downloads)
    seconds["provider"] = floor["seconds"]
    seconds["results"], _ = _timed(lambda: _results(spark, downloads, results))
    seconds["output"], _ = _timed(lambda: _output(spark, encoder, source, results, output))
    counts = {
        "staged lines": spark.read.format("delta").load(staged).count(),
        "lines read": lines,
        "results": spark.read.format("delta").load(results).count(),
    }
    wrong = {name: n for name, n in counts.items() if n != rows}
    if wrong or floor["files"] != batches:
        raise SystemExit(f"design floor: expected {rows} rows in {batches} batches, got {wrong}")
    check_output(spark, source, output)
    sizes = {
        "staged_mb": _mb(Path(staged)),
        "upload_mb": upload_bytes / 2**20,
        "downloaded_mb": floor["output_mb"],
        "results_mb": _mb(Path(results)),
        "output_mb": _mb(Path(output)),
    }
    shutil.rmtree(work)
    return {"seconds": seconds, "sizes": sizes, "batches": batches}


def worker(args: argparse.Namespace) -> None:
    """Warm every step up once (untimed), run them ``args.repeats`` times; print one JSON line."""
    import spark_llm_batch

    os.environ["OPENAI_API_KEY"] = "sk-bench-emulator"
    os.environ["OPENAI_BASE_URL"] = args.base_url
    work = Path(args.work)
    spark = spark_llm_batch.local_session("spark-llm-batch-bench", master=MASTER, conf=SPARK_CONF)
    spark.sparkContext.setLogLevel("ERROR")
    encoder = request_encoder(spark, MODEL, work)
    warm = str(work / "warm_input")
    warm_rows = min(args.rows, _WARM_ROWS)
    write_input(spark, warm, warm_rows, first_id=args.rows)
    _once(spark, encoder, warm, warm_rows, work / "warm")
    shutil.rmtree(warm)
    clear_ledger(args.base_url)
    source = str(work / "input")
    write_input(spark, source, args.rows)
    runs = []
    for i in range(args.repeats):
        runs.append(_once(spark, encoder, source, args.rows, work / f"run_{i}"))
        clear_ledger(args.base_url)
        print(
            f"[{args.rows} rows, repeat {i + 1}] "
            + ", ".join(f"{k} {v:.2f} s" for k, v in runs[-1]["seconds"].items()),
            file=sys.stderr,
            flush=True,
        )
    result = {
        "rows": args.rows,
        "batches": runs[-1]["batches"],
        "seconds": {step: [r["seconds"][step] for r in runs] for step in _STEPS},
        "sizes": runs[-1]["sizes"],
        "input_mb": _mb(Path(source)),
        "settings": {key: spark.conf.get(key) for key in _REPORTED_CONF},
    }
    spark.stop()
    print(json.dumps(result), flush=True)


# ---- parent ---------------------------------------------------------------------------------------


def run(rows: int = 1_000_000, repeats: int = 2) -> str:
    """Start the emulator, measure in a fresh worker process; return the Markdown section body."""
    emulator, base_url = start_emulator()
    loads = [load_average()]
    try:
        with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
            args = ["--rows", str(rows), "--repeats", str(repeats), "--base-url", base_url]
            result = run_worker("bench.design_floor_bench", *args, "--work", tmp)
        loads.append(load_average())
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
    return _report(result, repeats, loads)


def _report(result: dict[str, Any], repeats: int, loads: list[str]) -> str:
    rows, sizes, seconds = result["rows"], result["sizes"], result["seconds"]
    median = {step: statistics.median(values) for step, values in seconds.items()}
    plain = median["plain copy"]
    floor = sum(median[step] for step in _FLOOR)
    per_run = [sum(seconds[step][i] for step in _FLOOR) for i in range(repeats)]
    lines = [
        f"The least time any implementation of this design (request lines staged durably in a "
        f"Delta table, answers in a Delta results table, output joined back by request hash) "
        f"could take on this machine: {rows:,} distinct prompts of ~300 characters "
        f"({result['input_mb']:.0f} MB input as Delta/Parquet, {INPUT_PARTITIONS} files, "
        f"{result['batches']} batch(es) of at most {REQUESTS_PER_FILE:,} requests), each step built "
        "from raw Spark/Delta operations with no library orchestration (no store, leases, batch "
        "log, retries or checks), in one warm Spark session next to the plain copy; each step run "
        f"{repeats} time(s) after an untimed warm-up of every step on {_WARM_ROWS:,} other "
        "prompts, the emulator in a separate process (`processing_seconds=0`). Results are "
        "parsed approximately: a 200 answer is `succeeded`, anything else `failed` with the "
        "error code as its class (see `bench/design_floor_bench.py`).",
        "",
        "| step | what | median | each run | / plain copy |",
        "|---|---|---|---|---|",
    ]
    for number, (step, what) in enumerate(_STEPS.items(), start=1):
        each = ", ".join(f"{v:.2f} s" for v in seconds[step])
        ratio = "1.00x" if step == "plain copy" else f"{median[step] / plain:.2f}x"
        lines.append(f"| {number}. {step} | {what} | {median[step]:.2f} s | {each} | {ratio} |")
    each = ", ".join(f"{v:.2f} s" for v in per_run)
    lines += [
        f"| **design floor** | steps 2-6, sum of the medians | **{floor:.2f} s** | {each} "
        f"| **{floor / plain:.2f}x** |",
        "",
        f"Data moved per run: staged lines {sizes['staged_mb']:.0f} MB on disk "
        f"({sizes['upload_mb']:.0f} MB of upload bytes), result files "
        f"{sizes['downloaded_mb']:.0f} MB, results table {sizes['results_mb']:.0f} MB, output "
        f"table {sizes['output_mb']:.0f} MB. Every run is checked: staged lines, lines read, "
        "results and output rows all equal the input's rows, and every output row holds its own "
        "prompt's answer.",
        "",
        "Settings (read back from the session, built by `spark_llm_batch.local_session` with the "
        "pipeline benchmark's settings): "
        + ", ".join(f"`{k}={v}`" for k, v in result["settings"].items())
        + ".",
        machine_line(loads),
    ]
    return "\n".join(lines)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = worker_parser("python -m bench.design_floor_bench")
    parser.add_argument("--repeats", type=int, default=1)
    return parser.parse_args(argv)


if __name__ == "__main__":
    worker(_parse(sys.argv[1:]))
