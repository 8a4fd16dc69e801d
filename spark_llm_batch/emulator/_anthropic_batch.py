"""Message Batches logic without HTTP: validation, lifecycle, per-request outcomes, results.

:mod:`._anthropic` documents the behaviour and serves it; everything here is pure or file-bound,
so the heavy parts run on the state's worker threads.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from spark_llm_batch.emulator._answers import (
    InvalidRequestError,
    anthropic_message_response,
    anthropic_refusal_response,
)
from spark_llm_batch.emulator._app import ApiError
from spark_llm_batch.emulator._faults import Fault, RequestFaults

__all__ = [
    "COUNT_KEYS",
    "FAULT_ERRORS",
    "batch_end",
    "batch_status",
    "billed_from_file",
    "build_results",
    "check_create_body",
    "outcome",
    "params_problem",
    "rfc3339",
    "write_atomic",
]

_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
COUNT_KEYS = ("processing", "succeeded", "errored", "canceled", "expired")
# Per-request faults as (error type, HTTP status for the real-time endpoint).
FAULT_ERRORS = {
    Fault.RATE_LIMITED: (
        "rate_limit_error",
        429,
        "Number of request tokens has exceeded your rate limit.",
    ),
    Fault.SERVER_ERROR: ("api_error", 500, "Internal server error."),
    Fault.INVALID_REQUEST: ("invalid_request_error", 400, "Invalid request (injected fault)."),
    Fault.TIMEOUT: ("timeout_error", 504, "Request timed out."),
}


def params_problem(params: Any, *, batch: bool) -> str | None:
    """Return why ``params`` is not a valid Messages request, or ``None`` when it is.

    Example:
        >>> params_problem({"model": "m", "messages": []}, batch=True)
        'max_tokens: Field required'
    """
    if not isinstance(params, dict):
        return "params: Input should be a valid dictionary"
    for field in ("model", "max_tokens", "messages"):
        if field not in params:
            return f"{field}: Field required"
    if not isinstance(params["model"], str) or not params["model"]:
        return "model: Input should be a non-empty string"
    max_tokens = params["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be an integer greater than or equal to 1"
    messages = params["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if "content" not in message:
            return f"messages.{i}.content: Field required"
    if params.get("stream"):
        return "stream: streaming is not supported " + (
            "in batches" if batch else "by the emulator"
        )
    return None


def check_create_body(raw: bytes, max_requests: int) -> int:
    """Validate a create body as the service does at create time; return the request count.

    Raises:
        ApiError: 400 for malformed JSON, bad or duplicate ``custom_id``; 413 past the count limit.
    """
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "The request body is not valid JSON.") from None
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        raise ApiError(400, "requests: a non-empty list of requests is required")
    if len(requests) > max_requests:
        raise ApiError(
            413,
            f"A batch holds at most {max_requests} requests; got {len(requests)}. "
            "Split it into several batches.",
        )
    seen: set[str] = set()
    for i, item in enumerate(requests):
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
            raise ApiError(
                400,
                f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'",
            )
        if custom_id in seen:
            raise ApiError(
                400, f"requests.{i}.custom_id: duplicate custom_id {custom_id!r}; it must be unique"
            )
        seen.add(custom_id)
        if not isinstance(item.get("params"), dict):
            raise ApiError(400, f"requests.{i}.params: Input should be a valid dictionary")
    return len(requests)


def build_results(
    input_path: Path, results_path: Path, record: dict[str, Any], faults: RequestFaults
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Write the results JSONL for an ended batch; return its counts and the billable entries."""
    requests = json.loads(input_path.read_bytes())["requests"]
    end, cause = batch_end(record)
    created, span, total = record["created"], record["processing"], len(requests)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    bills: list[dict[str, Any]] = []
    tmp = results_path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for i, item in enumerate(requests):
            done_at = created + span * ((i + 1) / total)
            fault = faults.pick(item["params"], key=f"{record['_seq']}/{item['custom_id']}")
            result: dict[str, Any] = (
                outcome(item["params"], fault) if done_at <= end else {"type": cause}
            )
            counts[result["type"]] += 1
            if result["type"] == "succeeded":
                bills.append(_bill(item["custom_id"], result["message"], done_at))
            # One `\n` after every line, no blank lines: the SDK's JSONL decoder needs both.
            fh.write(json.dumps({"custom_id": item["custom_id"], "result": result}) + "\n")
    os.replace(tmp, results_path)
    return counts, bills


def outcome(params: Any, fault: Fault | None) -> dict[str, Any]:
    """Return one request's ``result`` object (succeeded or errored) in a batch."""
    problem = params_problem(params, batch=True)
    if problem:
        return _errored("invalid_request_error", problem)
    if fault in FAULT_ERRORS:
        kind, _, message = FAULT_ERRORS[fault]
        return _errored(kind, message)
    try:
        refused = fault is Fault.REFUSED
        answer = (anthropic_refusal_response if refused else anthropic_message_response)(params)
    except InvalidRequestError as exc:
        return _errored("invalid_request_error", str(exc))
    answer["usage"]["service_tier"] = "batch"
    return {"type": "succeeded", "message": answer}


def rfc3339(ts: float) -> str:
    """Format unix seconds as an RFC 3339 UTC string, as the service does.

    Example:
        >>> rfc3339(0.5)
        '1970-01-01T00:00:00.500000Z'
    """
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _errored(kind: str, message: str) -> dict[str, Any]:
    error = {"type": "error", "error": {"type": kind, "message": message}}
    return {"type": "errored", "error": error}


def _bill(custom_id: str, message: dict[str, Any], time: float) -> dict[str, Any]:
    usage = message["usage"]
    return {
        "provider": "anthropic",
        "batch_id": None,  # filled in by the caller, which knows the id
        "custom_id": custom_id,
        "model": message["model"],
        "input_tokens": usage["input_tokens"],
        "output_tokens": usage["output_tokens"],
        "time": time,
    }


def billed_from_file(results_path: Path) -> tuple[None, list[dict[str, Any]]]:
    bills = []
    with results_path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["result"]["type"] == "succeeded":
                bills.append(_bill(row["custom_id"], row["result"]["message"], 0.0))
    return None, bills


def batch_end(record: dict[str, Any]) -> tuple[float, str]:
    """Return when the batch ends and what the unfinished requests become."""
    end, cause = record["created"] + record["processing"], "done"
    if record["expires"] < end:
        end, cause = record["expires"], "expired"
    if record["cancel_at"] is not None and record["cancel_at"] + record["cancelling"] < end:
        end, cause = record["cancel_at"] + record["cancelling"], "canceled"
    return end, cause


def batch_status(record: dict[str, Any], now: float) -> str:
    if now >= batch_end(record)[0]:
        return "ended"
    return "canceling" if record["cancel_at"] is not None else "in_progress"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
