"""OpenAI batch internals: validating an input file, preparing answers, the lifecycle timeline.

A batch is prepared once, in a worker thread, right after create: every input line is validated
and answered (a file of plain chat requests all at once, by :mod:`._openai_vector`), answers go
to an "ok" file and failures to an "err" file (in input order), and a compact :class:`Plan`
remembers where each request's line ends. The lifecycle is then a pure function of simulated
time (:func:`timeline`): request ``i`` of ``n`` finishes at
``in_progress_at + processing * (i + 1) / n``, so an expired or cancelled batch keeps a prefix of
each file (truncated in place, never copied) plus one error line per unfinished request.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from spark_llm_batch.emulator._faults import Fault, RequestFaults
from spark_llm_batch.emulator._openai_fastchat import CHAT_ENDPOINT, FastChat

__all__ = ["HTTP_FAULTS", "Plan", "View", "answer_body", "finish_lines", "prepare", "timeline"]

_MAX_REPORTED_ERRORS = 10
# Fault -> (HTTP status, OpenAI error type, error code, message), shared with the real-time routes.
HTTP_FAULTS: dict[Fault, tuple[int, str, str | None, str]] = {
    Fault.RATE_LIMITED: (429, "requests", "rate_limit_exceeded", "Rate limit reached (injected)."),
    Fault.SERVER_ERROR: (500, "server_error", None, "The server had an error (injected)."),
    Fault.INVALID_REQUEST: (
        400,
        "invalid_request_error",
        "invalid_request",
        "Invalid request (injected).",
    ),
}


@dataclass
class Plan:
    """The prepared outcome of every request in a batch (see the module docstring)."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    custom_ids: list[str] = field(default_factory=list)
    ok: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    input_tokens: list[int] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        """The number of requests (0 when validation failed)."""
        return 0 if self.errors else len(self.custom_ids)

    def save(self, path: Path) -> None:
        """Persist the plan (used with a state_dir)."""
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Plan:
        """Read a plan written by :meth:`save`."""
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def prepare(
    src: Path,
    *,
    endpoint: str,
    max_requests: int,
    max_bytes: int,
    ok_path: Path,
    err_path: Path,
    faults: RequestFaults,
    batch_seq: int,
    whole_file: bool = True,
) -> Plan:
    """Validate ``src`` and answer every request; runs in a worker thread.

    A plain chat file is answered whole (:mod:`._openai_vector`) unless ``whole_file`` is false;
    any other file, or one that path declines, goes line by line.
    """
    from spark_llm_batch.emulator import _answers  # written in parallel: imported when needed

    plan = Plan()
    if src.stat().st_size > max_bytes:
        plan.errors.append(
            _err("file_too_large", f"The input file exceeds {max_bytes:,} bytes.", None)
        )
        return plan
    if whole_file and endpoint == CHAT_ENDPOINT and not faults.rates:
        from spark_llm_batch.emulator._openai_vector import prepare_plain_chat

        whole = prepare_plain_chat(
            src, max_requests=max_requests, ok_path=ok_path, err_path=err_path
        )
        if whole is not None:
            return whole  # a plain chat file, answered whole (same bytes as below)
    seen: set[str] = set()
    fast = FastChat(endpoint, faults)
    custom_ids, oks, ends = plan.custom_ids, plan.ok, plan.ends
    input_tokens, output_tokens = plan.input_tokens, plan.output_tokens
    with src.open("rb") as fh, ok_path.open("wb") as ok_fh, err_path.open("wb") as err_fh:
        outputs = (_LineBuffer(err_fh), _LineBuffer(ok_fh))  # indexed by the ok flag
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            req = _check_line(plan, lineno, raw, endpoint, seen, max_requests)
            if req is None or plan.errors:
                if len(plan.errors) >= _MAX_REPORTED_ERRORS:
                    break
                continue
            custom_id = req["custom_id"]
            answered = fast.answer(req, raw, custom_id)
            if answered is None:
                fault = faults.pick(req["body"], key=f"{batch_seq}/{custom_id}")
                answered = _answer(req, endpoint, _answers, fault)
            line, ok, in_tok, out_tok = answered
            ends.append(outputs[ok].add(line))
            custom_ids.append(custom_id)
            oks.append(1 if ok else 0)
            input_tokens.append(in_tok)
            output_tokens.append(out_tok)
        for output in outputs:
            output.flush()
    if not plan.errors and not plan.custom_ids:
        plan.errors.append(_err("empty_file", "The input file is empty.", None))
    return plan


_FLUSH_LINES = 512  # output lines buffered per file write


class _LineBuffer:
    """Lines bound for one file, written ``_FLUSH_LINES`` at a time; tracks where the file ends."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._lines: list[bytes] = []
        self.end = 0  # the file's size once every added line is written

    def add(self, line: bytes) -> int:
        """Queue ``line``; return the offset at which it ends in the file."""
        self._lines.append(line)
        self.end += len(line)
        if len(self._lines) >= _FLUSH_LINES:
            self.flush()
        return self.end

    def flush(self) -> None:
        """Write every queued line."""
        self._fh.write(b"".join(self._lines))
        self._lines.clear()


_decode = json.JSONDecoder().decode  # json.loads' decoder, defaults


def _err(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _check_line(
    plan: Plan, lineno: int, raw: bytes, endpoint: str, seen: set[str], max_requests: int
) -> dict[str, Any] | None:
    # The checks and codes the service applies; each failure names its line.
    try:
        # A line opening with "{" and a non-NUL byte is UTF-8 to json.loads: skip its sniffing.
        if raw[:1] == b"{" and raw[1:2] != b"\x00":
            req = _decode(raw.decode("utf-8", "surrogatepass"))
        else:
            req = json.loads(raw)
    except ValueError:
        plan.errors.append(_err("invalid_json_line", f"Line {lineno} is not valid JSON.", lineno))
        return None
    if not isinstance(req, dict):
        plan.errors.append(
            _err("invalid_json_line", f"Line {lineno} is not a JSON object.", lineno)
        )
        return None
    problem = _line_problem(req, endpoint, plan.model, seen, len(seen) >= max_requests)
    if problem is not None:
        code, message, param = problem
        plan.errors.append(_err(code, f"Line {lineno}: {message}", lineno, param))
        return None
    seen.add(req["custom_id"])
    plan.model = req["body"]["model"]
    return req


def _line_problem(
    req: dict[str, Any], endpoint: str, model: str | None, seen: set[str], full: bool
) -> tuple[str, str, str] | None:
    custom_id, body = req.get("custom_id"), req.get("body")
    if full:
        return "too_many_tasks", f"The batch holds more than {len(seen):,} requests.", "custom_id"
    if not isinstance(custom_id, str) or not custom_id:
        return "missing_required_parameter", "custom_id must be a non-empty string.", "custom_id"
    if req.get("method") != "POST":
        return "invalid_method", "method must be 'POST'.", "method"
    if req.get("url") != endpoint:
        return (
            "url_mismatch",
            f"url {req.get('url')!r} does not match the batch endpoint {endpoint!r}.",
            "url",
        )
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        return "model_not_found", "body.model must name a model.", "body.model"
    if model is not None and body["model"] != model:
        return (
            "model_mismatch",
            f"every line must use model {model!r}, not {body['model']!r}.",
            "body.model",
        )
    if custom_id in seen:
        return (
            "duplicate_custom_id",
            f"custom_id {custom_id!r} is used more than once.",
            "custom_id",
        )
    return None


def _answer(
    req: dict[str, Any], endpoint: str, answers: Any, fault: Fault | None
) -> tuple[bytes, bool, int, int]:
    body, custom_id = req["body"], req["custom_id"]
    request_id = "req_" + uuid.uuid4().hex
    if fault is Fault.TIMEOUT:
        error = {"code": "request_timeout", "message": "The request timed out (injected)."}
        return _line(custom_id, None, error), False, 0, 0
    if fault in HTTP_FAULTS:
        status, etype, code, message = HTTP_FAULTS[fault]
        err_body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
        response = {"status_code": status, "request_id": request_id, "body": err_body}
        return _line(custom_id, response, None), False, 0, 0
    try:
        result = answer_body(body, endpoint, fault, answers)
    except answers.InvalidRequestError as exc:
        err_body = {
            "error": {
                "message": str(exc),
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
        response = {"status_code": 400, "request_id": request_id, "body": err_body}
        return _line(custom_id, response, None), False, 0, 0
    usage = result.get("usage") or {}
    response = {"status_code": 200, "request_id": request_id, "body": result}
    tokens_in, tokens_out = (
        int(usage.get("prompt_tokens", 0)),
        int(usage.get("completion_tokens", 0)),
    )
    return _line(custom_id, response, None), True, tokens_in, tokens_out


def answer_body(
    body: dict[str, Any], endpoint: str, fault: Fault | None, answers: Any
) -> dict[str, Any]:
    """Return the 200 body for ``body`` (a refusal when marked); may raise InvalidRequestError."""
    if endpoint == "/v1/embeddings":
        return dict(answers.openai_embedding_response(body))
    if fault is Fault.REFUSED:
        return dict(answers.openai_refusal_response(body))
    return dict(answers.openai_chat_response(body))


def _line(custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None) -> bytes:
    line = {
        "id": "batch_req_" + uuid.uuid4().hex,
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True)
class View:
    """A batch's status at one instant: ``finished`` requests are done, ``stamps`` are times."""

    status: str
    finished: int
    stamps: dict[str, float]
    terminal: bool
    validated: bool


def timeline(t: dict[str, Any], n: int, failed: bool, now: float, *, stuck: bool) -> View:
    """Return the batch's status at ``now`` from its recorded times ``t`` (see the module doc)."""
    created, cancel, ready = t["created"], t.get("cancel"), t.get("ready")
    expires = created + t["window"]
    v_end = None if ready is None else max(created + t["validating"], ready)
    if cancel is not None and (v_end is None or cancel < v_end):
        return _cancel_view(t, 0, now, {}, validated=False)
    if v_end is None or now < v_end or v_end > expires:
        if now >= expires:
            return View("expired", 0, {"expired_at": expires}, True, False)
        return View("validating", 0, {}, False, False)
    if failed:
        return View("failed", 0, {"failed_at": v_end}, True, False)
    stamps = {"in_progress_at": v_end}
    done_at = v_end + t["processing"]
    if cancel is not None and (cancel < expires or expires >= done_at):
        return _cancel_view(
            t, _finished(n, v_end, t["processing"], cancel), now, stamps, validated=True
        )
    if expires < done_at:
        if now < expires:
            return View(
                "in_progress", _finished(n, v_end, t["processing"], now), stamps, False, True
            )
        done = _finished(n, v_end, t["processing"], expires)
        return View("expired", done, {**stamps, "expired_at": expires}, True, True)
    if now < done_at:
        return View("in_progress", _finished(n, v_end, t["processing"], now), stamps, False, True)
    stamps["finalizing_at"] = done_at
    end = done_at + t["finalizing"]
    if stuck or now < end:
        return View("finalizing", n, stamps, False, True)
    return View("completed", n, {**stamps, "completed_at": end}, True, True)


def _cancel_view(
    t: dict[str, Any], done: int, now: float, stamps: dict[str, float], *, validated: bool
) -> View:
    stamps = {**stamps, "cancelling_at": t["cancel"]}
    end = t["cancel"] + t["cancelling"]
    if now < end:
        return View("cancelling", done, stamps, False, validated)
    return View("cancelled", done, {**stamps, "cancelled_at": end}, True, validated)


def _finished(n: int, start: float, processing: float, at: float) -> int:
    if at < start:
        return 0
    if processing <= 0:
        return n
    return max(0, min(n, math.floor((at - start) * n / processing)))


def finish_lines(plan: Plan, done: int, code: str, ok_path: Path, err_path: Path) -> None:
    """Cut both files back to the first ``done`` requests and add a ``code`` line for the rest."""
    last_ok = next((plan.ends[i] for i in range(done - 1, -1, -1) if plan.ok[i]), 0)
    last_err = next((plan.ends[i] for i in range(done - 1, -1, -1) if not plan.ok[i]), 0)
    with ok_path.open("r+b") as fh:
        fh.truncate(last_ok)
    message = {
        "batch_expired": "This request could not be executed before the completion window expired.",
        "batch_cancelled": "This request was not executed because the batch was cancelled.",
    }[code]
    with err_path.open("r+b") as fh:
        fh.truncate(last_err)
        fh.seek(last_err)
        for custom_id in plan.custom_ids[done:]:
            fh.write(_line(custom_id, None, {"code": code, "message": message}))
