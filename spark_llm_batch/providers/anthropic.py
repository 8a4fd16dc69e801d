"""The Anthropic Message Batches provider, over the official ``anthropic`` SDK.

There is no upload: a chunk's lines travel inline in the create call. Each line is one request,
``{"custom_id":"<hash>","params":{<Messages API params>}}``, and the create body is those lines
joined into ``{"requests":[<line>,<line>,...]}``. The body is streamed as it is read from the
chunk (newlines become commas), so a 256 MB chunk never sits in memory. Batches carry no metadata:
:meth:`AnthropicProvider.find` matches a lost create on request count and creation time. Results
are one JSONL file per batch, streamed and parsed line by line::

    {"custom_id":"...","result":{"type":"succeeded","message":{"content":[...],"usage":{...}}}}
    {"custom_id":"...","result":{"type":"errored","error":{"type":"error","error":{"type":"..."}}}}
    {"custom_id":"...","result":{"type":"canceled"}}   /   {"type":"expired"}

Our parameters are the common (OpenAI-style) names; :meth:`AnthropicProvider.request_body` maps
them onto Anthropic's and refuses those Anthropic has no equivalent for. A structured answer
(``response_format``) is a forced tool call; its ``input`` comes back as compact JSON text.

The SDK is imported lazily (when a client is first built or an SDK error is translated), so that
importing this module or unpickling a provider on an executor stays cheap.

Example:
    >>> from spark_llm_batch.config import BatchConfig, ProviderSettings
    >>> provider = AnthropicProvider(ProviderSettings(api_key="sk-ant-test-123456"))
    >>> cfg = BatchConfig(model="claude-haiku-4-5", store="/tmp/s", params={"temperature": 0})
    >>> provider.request_line("c1", provider.request_body(cfg, "hi"), cfg)
    '{"custom_id":"c1","params":{"model":"claude-haiku-4-5","max_tokens":1024,"messages":[{"role":"user","content":"hi"}],"temperature":0}}'
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import starmap
from typing import Any, BinaryIO, ClassVar, TypeVar

from spark_llm_batch.config import AnthropicOptions, BatchConfig
from spark_llm_batch.errors import ConfigError, ProviderError
from spark_llm_batch.providers._anthropic_requests import CreateBody, messages_params
from spark_llm_batch.providers._anthropic_results import parse_anthropic_row
from spark_llm_batch.providers._sdk import post_json, translated
from spark_llm_batch.providers.base import (
    AmbiguousBatch,
    BatchState,
    ChunkRef,
    Prompt,
    Provider,
    ProviderBatch,
    ResultRecord,
    ResultRow,
    answer_text,
    parse_result_lines,
    split_lines,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "ENDPOINT",
    "AnthropicProvider",
    "normalise_batch",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS: int = AnthropicOptions.model_fields["max_tokens"].default
"""``max_tokens`` when ``params`` sets neither ``max_tokens`` nor ``max_completion_tokens``
(Anthropic requires one): the default of ``anthropic={"max_tokens": ...}``, which changes it
for every request, as ``params={"max_tokens": ...}`` does."""

ENDPOINT = "/v1/messages"
"""The route every request of a Message Batch calls."""
_BATCHES = "/v1/messages/batches"
_AUTH_TYPES = frozenset({"authentication_error", "permission_error", "billing_error"})
# Our clock and the provider's differ: look this much further back when reconciling a create.
_CLOCK_SLACK = 600.0
# A fresh batch can answer 404 for a moment: waits between tries of a retrieve (5 tries, ~3 s).
_NOT_FOUND_DELAYS = (0.2, 0.4, 0.8, 1.6)


@dataclass
class AnthropicProvider(Provider):
    """Anthropic's Message Batches API (and compatible servers, via ``settings.base_url``).

    The SDK client never retries (``max_retries=0``): control-plane calls go through our own
    loop (:attr:`Provider.retry`), which caps ``retry-after`` (the Anthropic SDK does not), and
    the create is one try.

    Attributes:
        settings: resolved credentials, base URL, timeout and retries (``max_retries`` sizes our
            retry loop when ``retry`` is not given).
        not_found_delays: waits between the tries of a retrieve that answers 404.
    """

    name: ClassVar[str] = "anthropic"
    default_max_requests: ClassVar[int] = 100_000
    default_max_bytes: ClassVar[int] = 256 * 1024 * 1024
    default_base_url: ClassVar[str] = "https://api.anthropic.com"
    requests_inline: ClassVar[bool] = True
    tags_batches: ClassVar[bool] = False
    custom_id_pattern: ClassVar[str] = r"^[a-zA-Z0-9_-]{1,64}$"
    not_found_delays: tuple[float, ...] = _NOT_FOUND_DELAYS

    def endpoint(self, config: BatchConfig) -> str:
        """:data:`ENDPOINT`: every request is a Messages API call."""
        return ENDPOINT

    # ---- data plane -------------------------------------------------------------------------------

    def request_body(self, config: BatchConfig, prompt: Prompt) -> dict[str, Any]:
        """The Messages API params: model, max_tokens, messages, system, mapped ``config.params``.

        ``max_completion_tokens`` becomes ``max_tokens`` (default ``config.anthropic.max_tokens``),
        ``stop`` becomes ``stop_sequences``; other params pass through unchanged (``temperature``,
        ``top_p``, ``top_k``, and Anthropic's own: ``metadata``, ``thinking``, ...). With
        ``config.response_format``, the answer is forced through one tool whose ``input_schema``
        is the schema.

        Raises:
            ConfigError: ``params`` sets ``model``/``messages``/``system``, an OpenAI-only
                parameter, both spellings of one parameter, or a bad ``max_tokens``/``stop``;
                or the response format is not an object schema.
        """
        return messages_params(config, prompt)

    def request_line(self, custom_id: str, body: dict[str, Any], config: BatchConfig) -> str:
        """``{"custom_id","params"}`` as compact JSON (the encoder splices into it)."""
        line = {"custom_id": custom_id, "params": body}
        return json.dumps(line, separators=(",", ":"), ensure_ascii=False)

    def iter_results(self, batch: ProviderBatch) -> Iterator[ResultRecord]:
        """Stream every result line of the batch as :class:`ResultRecord`.

        A line that does not parse is logged and skipped: its request surfaces as ``missing``.
        """
        return starmap(ResultRecord, self.iter_result_rows(batch))

    def iter_result_rows(self, batch: ProviderBatch) -> Iterator[ResultRow]:
        """:meth:`iter_results` as plain tuples (what collection reads; no object per line).

        The results file's raw bytes are split and decoded here, rather than through the SDK's
        ``results()`` decoder, which reads 64-byte pieces and builds a pydantic model per line.
        """
        return parse_result_lines(batch, self._stream_lines, parse_anthropic_row)

    def _stream_lines(self, batch_id: str) -> Iterator[bytes]:
        client = self._sdk()
        what = f"downloading results of {batch_id}"
        with contextlib.ExitStack() as stack:
            # Only opening the download is retried: once lines were yielded, a retry would repeat them.
            response = self._retrying(
                what,
                lambda: stack.enter_context(
                    client.messages.batches.with_streaming_response.results(batch_id)
                ),
            )
            with _translated(f"reading results of {batch_id}"):
                yield from split_lines(response.iter_bytes())

    # ---- real time --------------------------------------------------------------------------------

    def complete(self, config: BatchConfig, prompt: Prompt) -> str:
        """One Messages API call with :meth:`request_body`'s params (see :meth:`Provider.complete`).

        Raises:
            ProviderError: the request failed, or the answer is refused or empty.
        """
        body = self.request_body(config, prompt)
        client = self._sdk()
        answer = self._retrying(
            "answering a real-time prompt", lambda: post_json(client, ENDPOINT, body)
        )
        line = {"custom_id": "realtime", "result": {"type": "succeeded", "message": answer}}
        return answer_text("Anthropic", parse_anthropic_row(json.dumps(line)))

    # ---- control plane ----------------------------------------------------------------------------

    def create_inline(
        self, chunk: ChunkRef, content: BinaryIO, config: BatchConfig
    ) -> ProviderBatch:
        """Create the batch, streaming ``content`` (the chunk's lines) as its ``requests``.

        The body is produced piece by piece while the SDK sends it, with a ``Content-Length``
        computed from ``chunk.nbytes``; a stream that ends short or holds another number of lines
        than ``chunk.requests`` aborts the request, so nothing is created. One try, no retries:
        a create that failed after Anthropic accepted it must not be repeated blindly.

        Raises:
            ChunkMissing: the chunk holds fewer or more bytes than staged, another number of
                lines, or does not end in a newline.
            AuthenticationError: the key, its permissions or the account's billing were refused.
            ProviderError: Anthropic refused the batch (413: too many requests or bytes) or was
                unreachable.
        """
        from anthropic.types.messages import MessageBatch

        client = self._sdk()
        body = CreateBody(chunk, content)
        headers = {"Content-Type": "application/json", "Content-Length": str(body.size)}
        what = f"creating batch for chunk {chunk.key}"
        try:
            created = self._call(
                what,
                lambda: client.post(
                    _BATCHES,
                    cast_to=MessageBatch,
                    content=iter(body),
                    options={"headers": headers, "max_retries": 0},
                ),
            )
        except ProviderError:
            if body.error is not None:
                raise body.error from None  # the stream failed, not the provider
            raise
        batch = normalise_batch(created)
        log.info(
            "created batch %s for chunk %s (%d requests, %d bytes, attempt %d)",
            batch.batch_id,
            chunk.key,
            chunk.requests,
            chunk.nbytes,
            chunk.attempt,
        )
        return batch

    def find(
        self, chunk: ChunkRef, not_before: float, owned: frozenset[str] = frozenset()
    ) -> ProviderBatch | None:
        """The one batch that may be ``chunk``'s: created at or after ``not_before``, not in
        ``owned``, holding ``chunk.requests`` requests.

        Anthropic batches carry no metadata, so this is a guess on request count and creation
        time (reaching :data:`_CLOCK_SLACK` seconds further back, for clock skew). What that
        guarantees: a batch recorded in the store is never adopted twice. When several unowned
        batches match, none is taken and :class:`AmbiguousBatch` is raised with them: the
        orchestrator tells them apart by their results' ``custom_id`` once they have ended, and
        until then neither adopts nor creates, holds the chunk and looks again later. The
        ambiguity also clears on its own: another job's fresh batch becomes owned once that job
        commits it, and a crash
        leaves at most one created batch per job unrecorded, because for providers that cannot
        tag batches the orchestrator creates one batch at a time and commits after each. A single
        match is checked by the orchestrator too, once it has ended (its first result's id is one
        of the chunk's, or it is another's). One still running that someone else created with the
        same size (a job that does not share the store) while our create never arrived is
        adopted: its results hold none of this chunk's ids, so the chunk's requests come back
        ``missing`` and are sent again.

        Raises:
            AmbiguousBatch: several unowned batches created since ``not_before`` hold
                ``chunk.requests`` requests (the message names them).
        """
        client = self._sdk()
        cutoff = not_before - _CLOCK_SLACK

        def attempt() -> list[Any]:
            matches = []
            # Auto-pagination walks newest first; stop at the first batch older than the cutoff.
            for batch in client.messages.batches.list(limit=100):
                if _unix(batch.created_at) < cutoff:
                    break
                if batch.id not in owned and _total(batch.request_counts) == chunk.requests:
                    matches.append(batch)
            return matches

        matches = self._retrying(f"finding batch for chunk {chunk.key}", attempt)
        if len(matches) > 1:
            raise AmbiguousBatch(
                f"cannot tell which of batches {', '.join(str(b.id) for b in matches)} (each "
                f"{chunk.requests} requests, none recorded in the store) is chunk {chunk.key}'s: "
                "adopting none, creating none",
                candidates=[normalise_batch(b) for b in matches],
            )
        if not matches:
            return None
        found = normalise_batch(matches[0])
        log.info("found batch %s for chunk %s", found.batch_id, chunk.key)
        return found

    def retrieve(self, batch_id: str) -> ProviderBatch:
        """The batch's current state; a 404 is tried again for a few seconds (fresh batches).

        Raises:
            ProviderError: still 404 after :attr:`not_found_delays`, or another failure.
        """
        client = self._sdk()
        what = f"retrieving batch {batch_id}"
        delays = iter(self.not_found_delays)
        while True:
            try:
                return self._retrying(
                    what, lambda: normalise_batch(client.messages.batches.retrieve(batch_id))
                )
            except ProviderError as exc:
                wait = next(delays, None)
                if exc.status != 404 or wait is None:
                    raise
                log.info("batch %s not found yet, trying again in %.2fs", batch_id, wait)
                time.sleep(wait)

    def cancel(self, batch_id: str) -> ProviderBatch:
        """Ask Anthropic to cancel the batch (it passes through ``canceling``)."""
        client = self._sdk()
        batch = self._retrying(
            f"cancelling batch {batch_id}",
            lambda: normalise_batch(client.messages.batches.cancel(batch_id)),
        )
        log.info("cancel requested for batch %s: now %s", batch_id, batch.raw_status)
        return batch

    def cleanup(self, input_ref: str | None) -> None:
        """Nothing to delete: requests travel inline, nothing was uploaded."""

    # ---- helpers ----------------------------------------------------------------------------------

    def _sdk(self) -> Any:
        """The SDK client, built on first use (and again after unpickling)."""
        if self._client is None:
            import anthropic

            key = self.settings.api_key
            secret = key.get_secret_value() if key is not None else ""
            if not secret:
                raise ConfigError(
                    "no Anthropic API key: set ANTHROPIC_API_KEY or pass "
                    "provider_settings=ProviderSettings(api_key=...)"
                )
            self._client = anthropic.Anthropic(
                api_key=secret,
                base_url=self.base_url,
                timeout=self.settings.timeout_seconds,
                max_retries=0,
            )
        return self._client

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        with _translated(what):
            return fn()


def normalise_batch(batch: Any) -> ProviderBatch:
    """Turn an SDK ``MessageBatch`` into a :class:`ProviderBatch`.

    ``ended`` is ``cancelled`` when every request was canceled, ``expired`` when every request
    expired, else ``completed`` (whatever mix of outcomes; each request's own outcome is in the
    results). Counts: ``completed`` is ``succeeded``, ``failed`` is errored + canceled + expired.
    """
    raw = str(batch.processing_status)
    counts = batch.request_counts
    total = _total(counts)
    state = {"in_progress": BatchState.IN_PROGRESS, "canceling": BatchState.CANCELLING}.get(raw)
    if raw == "ended":
        state = BatchState.COMPLETED
        if total and counts.canceled == total:
            state = BatchState.CANCELLED
        elif total and counts.expired == total:
            state = BatchState.EXPIRED
    elif state is None:
        # A status we do not know yet: keep polling rather than guess an end.
        log.warning("batch %s has unknown status %r; treating it as in progress", batch.id, raw)
        state = BatchState.IN_PROGRESS
    ended = state.is_terminal and bool(batch.results_url)
    return ProviderBatch(
        batch_id=str(batch.id),
        state=state,
        total=total,
        completed=int(counts.succeeded) if counts is not None else 0,
        failed=int(counts.errored + counts.canceled + counts.expired) if counts is not None else 0,
        result_refs=(str(batch.id),) if ended else (),
        key=None,
        created_at=_unix(batch.created_at) if batch.created_at is not None else None,
        raw_status=raw,
    )


def _total(counts: Any) -> int:
    if counts is None:
        return 0
    return int(
        counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
    )


def _unix(value: datetime | str) -> float:
    """Unix seconds of an RFC 3339 time (the SDK parses it into a ``datetime``)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.timestamp()


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """SDK errors re-raised as :mod:`spark_llm_batch.errors` while doing ``what``; any other
    failure of the SDK too (a response it could not read), as a :class:`ProviderError`."""
    import anthropic

    try:
        with translated("anthropic", "Anthropic", what, _auth_hint):
            yield
    except anthropic.AnthropicError as exc:
        raise ProviderError(f"Anthropic SDK failed while {what}: {exc}") from None


def _auth_hint(exc: Any) -> str | None:
    """What to fix when Anthropic's error answer refused the key or the account, else ``None``."""
    import anthropic

    refused = (
        anthropic.AuthenticationError,
        anthropic.PermissionDeniedError,
        anthropic.PaymentRequiredError,
    )
    if isinstance(exc, refused) or exc.type in _AUTH_TYPES:
        return (
            " Check ANTHROPIC_API_KEY (or provider_settings.api_key), the key's permissions "
            "and the account's billing."
        )
    return None
