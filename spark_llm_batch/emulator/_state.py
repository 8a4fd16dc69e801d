"""The emulator's configuration and in-memory state (with optional on-disk persistence).

API for surface modules (``_openai.py``, ``_anthropic.py``); every method is called from the
event-loop thread unless it says otherwise::

    state.config                      # EmulatorConfig (frozen; replaced by state.configure)
    state.clock.now()                 # simulated unix seconds (see _clock)
    state.ledger.record(...)          # billing (see _ledger)
    state.calls.snapshot()            # provider calls served, per kind (see _calls)
    state.new_id("msgbatch_")         # a fresh unique id with that prefix
    state.put("anthropic_batch", rec) # store/replace a JSON-able dict with an "id" key
    state.get("anthropic_batch", id)  # -> dict | None (the stored object itself: mutate, then put)
    state.all("anthropic_batch")      # -> list[dict], oldest first
    state.delete("anthropic_batch", id)
    state.blob_path("results-<id>.jsonl")  # a Path on disk for large payloads (kept with state_dir)
    await state.run_blocking(fn, *args)    # run CPU/disk work off the event loop
    state.add_settler(coro_fn)        # async fn() that brings every batch up to clock.now();
                                      # GET /_emulator/ledger awaits all settlers first

Records and blobs live under ``state_dir`` when one is given (so they survive a restart), else in
a temporary directory removed on close. Large files are never held in memory: only their paths.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from spark_llm_batch.emulator._calls import Calls
from spark_llm_batch.emulator._clock import SimClock
from spark_llm_batch.emulator._faults import ControlPlaneFaults, Fault, RequestFaults
from spark_llm_batch.emulator._ledger import Ledger

__all__ = ["EmulatorConfig", "EmulatorState"]

T = TypeVar("T")
_MB = 1024 * 1024


class EmulatorConfig(BaseModel):
    """How the emulator behaves. Defaults are the real services' limits with quick batches.

    Example:
        >>> EmulatorConfig(processing_seconds=0.5, clock_speed=100.0).openai_max_requests
        50000
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    processing_seconds: float = Field(
        default=1.0, ge=0, description="Simulated seconds a batch spends in progress (0 = instant)."
    )
    validating_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Simulated seconds an OpenAI batch stays `validating` at least.",
    )
    finalizing_seconds: float = Field(
        default=0.0, ge=0, description="Simulated seconds an OpenAI batch stays `finalizing`."
    )
    cancelling_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Simulated seconds between a cancel request and the cancelled end.",
    )
    completion_window_seconds: float = Field(
        default=86400.0,
        gt=0,
        description="Simulated seconds after creation at which a batch expires.",
    )
    clock_speed: float = Field(
        default=1.0,
        gt=0,
        description="Simulated seconds per wall-clock second (tests use e.g. 100).",
    )
    enqueued_token_limit: int | None = Field(
        default=None,
        ge=1,
        description="Per-model cap on enqueued prompt tokens (None = unlimited).",
    )
    enqueued_token_limits: dict[str, int] = Field(
        default_factory=dict, description="Per-model overrides of `enqueued_token_limit`."
    )
    rate_limit_rate: float = Field(
        default=0.0, ge=0, le=1, description="Fraction of API calls answered 429 (seeded draw)."
    )
    retry_after_seconds: float = Field(
        default=1.0, ge=0, description="The `retry-after` header on injected 429s (keep it small)."
    )
    server_error_rate: float = Field(
        default=0.0, ge=0, le=1, description="Fraction of API calls answered 500 (seeded draw)."
    )
    api_keys: frozenset[str] | None = Field(
        default=None,
        description="Keys the emulator accepts (401 for any other); None accepts any non-empty key.",
    )
    request_fault_rates: dict[Fault, float] = Field(
        default_factory=dict,
        description="Fraction of batch requests failing with each fault (seeded draw per batch "
        "and custom_id, so a retry in a new batch draws again); markers still win.",
    )
    seed: int = Field(default=0, description="Seed for every random choice, so runs repeat.")

    @field_validator("request_fault_rates")
    @classmethod
    def _rates_are_fractions(cls, rates: dict[Fault, float]) -> dict[Fault, float]:
        if any(rate < 0 for rate in rates.values()) or sum(rates.values()) > 1:
            raise ValueError("request_fault_rates must be fractions adding up to at most 1")
        return rates

    stuck_in_finalizing: bool = Field(
        default=False, description="OpenAI batches never leave `finalizing` while this is set."
    )
    openai_max_requests: int = Field(default=50_000, ge=1, description="Requests per OpenAI batch.")
    openai_max_bytes: int = Field(
        default=200 * _MB, ge=1, description="Bytes per OpenAI batch file."
    )
    anthropic_max_requests: int = Field(
        default=100_000, ge=1, description="Requests per Anthropic batch."
    )
    anthropic_max_bytes: int = Field(
        default=256 * _MB, ge=1, description="Bytes per Anthropic create body."
    )
    state_dir: Path | None = Field(
        default=None,
        description="Directory that keeps state across restarts (None = in memory only).",
    )

    def token_limit_for(self, model: str) -> int | None:
        """Return the enqueued-token cap for ``model``, or ``None`` when unlimited."""
        return self.enqueued_token_limits.get(model, self.enqueued_token_limit)


class EmulatorState:
    """Everything the running emulator knows: config, clock, ledger, records and blobs."""

    def __init__(self, config: EmulatorConfig) -> None:
        """Create the state, loading records from ``config.state_dir`` when it holds any."""
        self._tmp: str | None = None
        if config.state_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="llm-emulator-")
            self.root = Path(self._tmp)
        else:
            self.root = Path(config.state_dir)
        (self.root / "records").mkdir(parents=True, exist_ok=True)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self._records: dict[str, dict[str, dict[str, Any]]] = {}
        self._settlers: list[Callable[[], Awaitable[None]]] = []
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="emulator-work")
        self.clock = SimClock(speed=config.clock_speed, start=self._load_clock())
        self.ledger = Ledger(self.root / "ledger.jsonl" if config.state_dir else None)
        self.calls = Calls()
        self.faults = _faults_for(config)
        self.request_faults = _request_faults_for(config)
        self.config = config
        self._seq = 0
        self._load_records()

    def configure(self, config: EmulatorConfig) -> None:
        """Replace the config; takes effect for later calls (batch timings are fixed at create)."""
        if config.state_dir != self.config.state_dir:
            raise ValueError("state_dir cannot change while the emulator runs")
        if config.seed != self.config.seed:
            # A new seed restarts the sequence of draws; otherwise the sequence continues.
            self.faults = _faults_for(config)
        self.faults.rate_429 = config.rate_limit_rate
        self.faults.rate_500 = config.server_error_rate
        self.faults.retry_after = config.retry_after_seconds
        self.request_faults = _request_faults_for(config)
        self.clock.set_speed(config.clock_speed)
        self.config = config

    # -- ids and records ----------------------------------------------------------------------

    @staticmethod
    def new_id(prefix: str) -> str:
        """Return a fresh id such as ``batch_3f2a...`` (unique across restarts)."""
        return prefix + uuid.uuid4().hex

    def put(self, kind: str, record: dict[str, Any]) -> None:
        """Store (or replace) ``record`` under ``kind``; persisted when a state_dir is set.

        Keys starting with ``_`` are the store's own (``_seq`` keeps creation order on reload).
        """
        if "_seq" not in record:
            self._seq += 1
            record["_seq"] = self._seq
        self._records.setdefault(kind, {})[record["id"]] = record
        if self.config.state_dir is not None:
            folder = self.root / "records" / kind
            folder.mkdir(exist_ok=True)
            _atomic_write(folder / f"{record['id']}.json", json.dumps(record))
            _atomic_write(self.root / "clock.json", json.dumps({"now": self.clock.now()}))

    def get(self, kind: str, record_id: str) -> dict[str, Any] | None:
        """Return the stored record, or ``None`` when there is no such id."""
        return self._records.get(kind, {}).get(record_id)

    def all(self, kind: str) -> list[dict[str, Any]]:
        """Return every record of ``kind``, oldest first."""
        return list(self._records.get(kind, {}).values())

    def delete(self, kind: str, record_id: str) -> None:
        """Forget a record (and its persisted copy); a missing id is not an error."""
        self._records.get(kind, {}).pop(record_id, None)
        if self.config.state_dir is not None:
            (self.root / "records" / kind / f"{record_id}.json").unlink(missing_ok=True)

    def blob_path(self, name: str) -> Path:
        """Return the on-disk path for a named large payload (the file may not exist yet)."""
        return self.root / "blobs" / name

    # -- background work ----------------------------------------------------------------------

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the worker threads, keeping the event loop responsive."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def add_settler(self, settler: Callable[[], Awaitable[None]]) -> None:
        """Register an async function that brings a surface's batches up to the current time."""
        self._settlers.append(settler)

    async def settle_all(self) -> None:
        """Await every settler (before reading the ledger, so billing is up to date)."""
        for settler in self._settlers:
            await settler()

    def close(self) -> None:
        """Stop the workers and remove the temporary directory (a state_dir is kept)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    # -- persistence ----------------------------------------------------------------------------

    def _load_clock(self) -> float | None:
        path = self.root / "clock.json"
        if not path.exists():
            return None
        return float(json.loads(path.read_text(encoding="utf-8"))["now"])

    def _load_records(self) -> None:
        records_root = self.root / "records"
        for folder in sorted(p for p in records_root.iterdir() if p.is_dir()):
            loaded = [json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("*.json")]
            # Insertion order is creation order: lists and pagination rely on it.
            loaded.sort(key=lambda r: (r.get("_seq", 0), r["id"]))
            self._records[folder.name] = {r["id"]: r for r in loaded}
            self._seq = max([self._seq, *(r.get("_seq", 0) for r in loaded)])


def _faults_for(config: EmulatorConfig) -> ControlPlaneFaults:
    return ControlPlaneFaults(
        seed=config.seed,
        rate_429=config.rate_limit_rate,
        rate_500=config.server_error_rate,
        retry_after=config.retry_after_seconds,
    )


def _request_faults_for(config: EmulatorConfig) -> RequestFaults:
    rates = tuple(sorted(config.request_fault_rates.items(), key=lambda item: item[0].value))
    return RequestFaults(rates=rates, seed=config.seed)


def _atomic_write(path: Path, text: str) -> None:
    # Write-then-rename so a crash never leaves a half-written record behind.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
