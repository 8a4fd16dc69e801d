"""Test doubles for the state-machine unit tests: an in-memory provider and a tiny stager.

``FakeProvider`` is for unit tests of the orchestrator ONLY (the integration tests run against the
emulator through the real SDK). Its control plane lives in the driver's memory; its data plane
(``iter_results``) runs on executors and reads the chunk file named in ``result_refs``, answering
each line ``"answer:<prompt>"``, so it needs no shared state.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pyspark.sql import DataFrame, SparkSession

from spark_llm_batch import _columns as C
from spark_llm_batch.config import BatchConfig, ProviderSettings
from spark_llm_batch.errors import ProviderError
from spark_llm_batch.providers.base import (
    BatchState,
    ChunkRef,
    Provider,
    ProviderBatch,
    ResultRecord,
)


class Crash(BaseException):
    """Simulates the driver dying (not an Exception: nothing in the orchestrator catches it)."""


@dataclass
class FakeProvider(Provider):
    """Batches end after ``polls_to_end`` retrieves (plus ``later[i]`` for the i-th created) with the
    outcome scripted for their create index.

    Outcomes: ``completed``; ``expired`` (the second half of the lines get ``expired``); ``missing``
    (the last line has no result); ``failed`` (validation); ``queue_full`` (token_limit_exceeded).
    """

    name: ClassVar[str] = "fake"
    default_max_requests: ClassVar[int] = 1000
    default_max_bytes: ClassVar[int] = 10**7
    outcomes: dict[int, str] = field(default_factory=dict)
    polls_to_end: int = 1
    later: dict[int, int] = field(default_factory=dict)  # create index -> extra polls to end
    crash_after_create: bool = False
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploads: list[str] = field(default_factory=list)
    creates: list[str] = field(default_factory=list)
    max_active: int = 0

    @classmethod
    def build(cls, **kwargs: Any) -> FakeProvider:
        return cls(ProviderSettings(api_key="sk-fake-000000"), **kwargs)

    def request_body(self, config: BatchConfig, prompt: str) -> dict[str, Any]:
        return {"prompt": prompt}

    def request_line(self, custom_id: str, body: dict[str, Any], config: BatchConfig) -> str:
        return json.dumps({"custom_id": custom_id, **body})

    def upload(self, chunk: ChunkRef) -> str | None:
        if not Path(chunk.uri).exists():
            raise FileNotFoundError(chunk.uri)
        self.uploads.append(chunk.key)
        return f"file-{chunk.key}"

    def create(self, chunk: ChunkRef, input_ref: str | None, config: BatchConfig) -> ProviderBatch:
        index = len(self.creates)
        self.creates.append(chunk.key)
        batch_id = f"batch_{index}"
        self.batches[batch_id] = {
            "key": chunk.key, "uri": chunk.uri, "n": chunk.requests, "polls": 0,
            "outcome": self.outcomes.get(index, "completed"), "created_at": time.time(),
            "to_end": self.polls_to_end + self.later.get(index, 0),
        }  # fmt: skip
        active = sum(1 for b in self.batches.values() if b["polls"] < b["to_end"])
        self.max_active = max(self.max_active, active)
        if self.crash_after_create:
            raise Crash(batch_id)
        return self._view(batch_id)

    def find(self, chunk: ChunkRef, not_before: float) -> ProviderBatch | None:
        for batch_id, batch in self.batches.items():
            if batch["key"] == chunk.key and batch["created_at"] >= not_before - 600:
                return self._view(batch_id)
        return None

    def retrieve(self, batch_id: str) -> ProviderBatch:
        if batch_id not in self.batches:
            raise ProviderError(f"no batch {batch_id}", status=404)
        self.batches[batch_id]["polls"] += 1
        return self._view(batch_id)

    def cancel(self, batch_id: str) -> ProviderBatch:
        raise NotImplementedError

    def _view(self, batch_id: str) -> ProviderBatch:
        batch = self.batches[batch_id]
        if batch["polls"] < batch["to_end"]:
            state = BatchState.VALIDATING if batch["polls"] == 0 else BatchState.IN_PROGRESS
            return ProviderBatch(batch_id, state, total=batch["n"], key=batch["key"])
        outcome = batch["outcome"]
        if outcome in ("failed", "queue_full"):
            code = "token_limit_exceeded" if outcome == "queue_full" else "invalid_json_line"
            return ProviderBatch(
                batch_id, BatchState.FAILED, errors=((code, f"{code} on line 1"),), key=batch["key"]
            )
        state = BatchState.EXPIRED if outcome == "expired" else BatchState.COMPLETED
        refs = (outcome, batch["uri"])
        return ProviderBatch(
            batch_id,
            state,
            total=batch["n"],
            completed=batch["n"],
            result_refs=refs,
            key=batch["key"],
        )

    def iter_results(self, batch: ProviderBatch) -> Iterator[ResultRecord]:
        outcome, uri = batch.result_refs
        lines = Path(uri).read_text().splitlines()
        for i, line in enumerate(lines):
            request = json.loads(line)
            if outcome == "missing" and i == len(lines) - 1:
                continue
            if outcome == "expired" and i >= len(lines) // 2:
                yield ResultRecord(
                    request["custom_id"],
                    "failed",
                    error_class="expired",
                    error_message="batch_expired",
                )
                continue
            yield ResultRecord(request["custom_id"], "succeeded", text=f"answer:{request['prompt']}", finish_reason="stop",
                               input_tokens=1, output_tokens=2, model="fake-model")  # fmt: skip


@dataclass
class Staged:
    """A StagedChunks look-alike."""

    chunks: list[ChunkRef]


def stage_rows(
    spark: SparkSession,
    rows: list[tuple[str, str, int]],
    directory: Path,
    *,
    per_chunk: int,
    record_members: Callable[[DataFrame], None],
) -> Staged:
    """Write (hash, line, attempt) rows into chunk files of ``per_chunk`` lines, one attempt each.

    The members go through ``record_members`` (a store's ``append_members``), as packing does.
    """
    chunks, members = [], []
    by_attempt: dict[int, list[tuple[str, str]]] = {}
    for hash_, line, attempt in rows:
        by_attempt.setdefault(attempt, []).append((hash_, line))
    for attempt, items in sorted(by_attempt.items()):
        for start in range(0, len(items), per_chunk):
            part = items[start : start + per_chunk]
            key = uuid.uuid4().hex
            path = directory / f"{key}.jsonl"
            data = "".join(line + "\n" for _, line in part)
            path.write_text(data)
            chunks.append(
                ChunkRef(key, str(path), len(part), len(data.encode()), "fake-model", attempt)
            )
            members += [(h, key, attempt) for h, _ in part]
    record_members(
        spark.createDataFrame(members, f"`{C.HASH}` STRING, batch_key STRING, attempt INT")
    )
    return Staged(chunks)


def prompts(n: int, prefix: str = "p") -> list[tuple[str, str, int]]:
    """``n`` requests: (hash, line, attempt 1)."""
    out = []
    for i in range(n):
        hash_ = uuid.uuid5(uuid.NAMESPACE_URL, f"{prefix}{i}").hex
        out.append((hash_, json.dumps({"custom_id": hash_, "prompt": f"{prefix}{i}"}), 1))
    return out


class TestStager:
    """A ``restage`` callable: collects the (small) retry frame and writes one chunk per attempt."""

    __test__ = False  # not a pytest class

    def __init__(
        self, spark: SparkSession, directory: Path, record_members: Callable[[DataFrame], None]
    ) -> None:
        self.spark, self.directory, self.calls = spark, directory, 0
        self.record_members = record_members

    def __call__(self, frame: DataFrame) -> Staged:
        self.calls += 1
        rows = [(r[C.HASH], r[C.LINE], int(r[C.ATTEMPT])) for r in frame.collect()]
        return stage_rows(
            self.spark, rows, self.directory, per_chunk=1000, record_members=self.record_members
        )
