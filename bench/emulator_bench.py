"""Emulator benchmark: 200 MB upload/download over loopback, a 50,000-request batch, prepare CPU.

Run it with ``python -m bench emulator`` (or ``python -m bench``); the numbers land in the
"Emulator" section of BENCHMARKS.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import openai

from spark_llm_batch.emulator import Emulator
from spark_llm_batch.emulator._faults import RequestFaults
from spark_llm_batch.emulator._openai_batch import prepare

__all__ = ["run"]

_MB = 1024 * 1024


def _write_requests(path: Path, count: int, *, pad: int = 0) -> int:
    """Write ``count`` chat requests (each prompt padded by ``pad`` chars); return the file size."""
    filler = "x" * pad
    with path.open("w", encoding="utf-8") as fh:
        for i in range(count):
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"row {i} {filler}"}],
            }
            fh.write(
                json.dumps(
                    {
                        "custom_id": f"r{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": body,
                    }
                )
            )
            fh.write("\n")
    return path.stat().st_size


def _download(client: openai.OpenAI, file_id: str) -> int:
    size = 0
    with client.files.with_streaming_response.content(file_id) as resp:
        for chunk in resp.iter_bytes(1024 * 1024):
            size += len(chunk)
    return size


def bench_transfer(client: openai.OpenAI, workdir: Path) -> dict[str, float]:
    """Upload and download a ~200 MB batch file (4,000-char prompts, under the request limit)."""
    path = workdir / "big.jsonl"
    size = _write_requests(path, 48_000, pad=4_200)
    start = time.perf_counter()
    with path.open("rb") as fh:
        uploaded = client.files.create(file=("big.jsonl", fh), purpose="batch")
    upload_s = time.perf_counter() - start
    start = time.perf_counter()
    downloaded = _download(client, uploaded.id)
    download_s = time.perf_counter() - start
    assert downloaded == size, (downloaded, size)
    client.files.delete(uploaded.id)
    return {"size_mb": size / _MB, "upload_s": upload_s, "download_s": download_s}


def bench_batch(client: openai.OpenAI, workdir: Path, count: int = 50_000) -> dict[str, float]:
    """Upload ``count`` requests, run the batch (processing_seconds=0), download the output."""
    path = workdir / "batch.jsonl"
    _write_requests(path, count)
    start = time.perf_counter()
    with path.open("rb") as fh:
        uploaded = client.files.create(file=("batch.jsonl", fh), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    out_bytes = _download(client, batch.output_file_id or "")
    total_s = time.perf_counter() - start
    return {
        "requests": count,
        "total_s": total_s,
        "rps": count / total_s,
        "output_mb": out_bytes / _MB,
    }


def _write_pipeline_requests(path: Path, count: int) -> None:
    """Write ``count`` requests as the pipeline benchmark sends them (~300-character prompts).

    32-hex custom_ids, compact JSON with raw UTF-8, as ``OpenAIProvider.request_line`` writes.
    """
    with path.open("w", encoding="utf-8") as fh:
        for i in range(count):
            digests = [
                hashlib.sha256(f"{i}{tail}".encode()).hexdigest() for tail in ("", "/b", "/c")
            ]
            prompt = (
                f"Row {i}: summarise the following record in one short sentence, keeping its key "
                f"terms. {digests[0]} {digests[1]} {digests[2][:56]}"
            )
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
            line = {
                "custom_id": hashlib.sha256(f"doc:{prompt}".encode()).hexdigest()[:32],
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
            fh.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")


def bench_prepare(workdir: Path, count: int = 50_000, repeats: int = 3) -> dict[str, float]:
    """CPU per request of batch preparation, line by line and whole file (best of ``repeats``)."""
    src = workdir / "pipeline.jsonl"
    _write_pipeline_requests(src, count)
    best = {False: float("inf"), True: float("inf")}
    for _ in range(repeats):
        for whole_file in best:  # alternate, so both see the same machine load
            start = time.process_time()
            prepare(
                src, endpoint="/v1/chat/completions", max_requests=count, max_bytes=200 * _MB,
                ok_path=workdir / "ok", err_path=workdir / "err", faults=RequestFaults(),
                batch_seq=1, whole_file=whole_file,
            )  # fmt: skip
            best[whole_file] = min(best[whole_file], time.process_time() - start)
    return {
        "requests": count,
        "line_us": best[False] / count * 1e6,
        "whole_us": best[True] / count * 1e6,
    }


def bench_realtime(client: openai.OpenAI, count: int = 500) -> dict[str, float]:
    """Sequential real-time chat completions (one client, keep-alive)."""
    start = time.perf_counter()
    for i in range(count):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}]
        )
    elapsed = time.perf_counter() - start
    return {"requests": count, "rps": count / elapsed}


def run() -> str:
    """Run every emulator benchmark; return the Markdown section body."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with Emulator(processing_seconds=0) as emu:
            client = openai.OpenAI(
                base_url=emu.openai_base_url, api_key="sk-test-emulator", max_retries=0
            )
            transfer = bench_transfer(client, workdir)
            batch = bench_batch(client, workdir)
            realtime = bench_realtime(client)
        cpu = bench_prepare(workdir)  # no server running: process CPU is the preparation's
    return "\n".join(
        [
            "| measure | result |",
            "|---|---|",
            f"| upload {transfer['size_mb']:.0f} MB batch file (SDK, multipart, loopback) | "
            f"{transfer['upload_s']:.2f} s ({transfer['size_mb'] / transfer['upload_s']:.0f} MB/s) |",
            f"| download it (`files.content`, streamed) | {transfer['download_s']:.2f} s "
            f"({transfer['size_mb'] / transfer['download_s']:.0f} MB/s) |",
            f"| {batch['requests']:,.0f}-request chat batch: upload → completed → output downloaded | "
            f"{batch['total_s']:.2f} s ({batch['rps']:,.0f} requests/s, output {batch['output_mb']:.0f} MB) |",
            f"| real-time `chat.completions.create`, sequential, one client | {realtime['rps']:,.0f} requests/s |",
            f"| batch preparation CPU, {cpu['requests']:,.0f} pipeline-shaped chat requests (best of 3): "
            f"line by line → whole file | {cpu['line_us']:.1f} → {cpu['whole_us']:.1f} µs per request "
            f"({cpu['line_us'] / cpu['whole_us']:.1f}x less) |",
            "",
            f"Machine: {os.cpu_count()} cores (shared), Python loopback, `processing_seconds=0`.",
        ]
    )
