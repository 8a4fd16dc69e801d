"""The OpenAI Batch API provider, over the official ``openai`` SDK.

A chunk's lines are uploaded as a file with ``purpose="batch"``, a batch is created from the file id and tagged
with our key in ``metadata``, and results are streamed line by line from the output and error files.

The SDK is imported lazily (when a client is first built or an SDK error is translated), so that
importing :mod:`spark_llm_batch.providers` or unpickling a provider on an executor stays cheap.

Example:
    >>> from spark_llm_batch.config import BatchConfig, ProviderSettings
    >>> provider = OpenAIProvider(ProviderSettings(api_key="sk-test-123456"))
    >>> cfg = BatchConfig(model="gpt-4o-mini", store="/tmp/s", params={"temperature": 0})
    >>> provider.request_line("c1", provider.request_body(cfg, "hi"), cfg)
    '{"custom_id":"c1","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"temperature":0}}'
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import starmap
from typing import Any, BinaryIO, ClassVar, TypeVar

from spark_llm_batch._retry import RetrySettings, call_with_retry
from spark_llm_batch.config import EMBEDDINGS, BatchConfig
from spark_llm_batch.errors import ConfigError, ProviderError, redact
from spark_llm_batch.providers._openai_results import openai_row, parse_openai_row
from spark_llm_batch.providers._sdk import post_json, translated
from spark_llm_batch.providers.base import (
    BatchState,
    ChunkRef,
    Prompt,
    Provider,
    ProviderBatch,
    ResultRecord,
    ResultRow,
    answer_text,
    parse_result_lines,
    prompt_messages,
    split_lines,
)

__all__ = ["OpenAIProvider"]

T = TypeVar("T")
log = logging.getLogger(__name__)

_STATES = {state.value: state for state in BatchState}
# Body keys the provider sets itself: a params entry with these names would silently override them.
_BODY_KEYS = frozenset({"model", "messages"})
_EMBEDDING_PARAMS = frozenset({"dimensions", "user"})
_CHAT = "/v1/chat/completions"
KEY_FIELD = "llm_batch_key"
ATTEMPT_FIELD = "llm_batch_attempt"
# Our clock and the provider's differ: look this much further back when reconciling a create.
_CLOCK_SLACK = 600.0


@dataclass
class OpenAIProvider(Provider):
    """OpenAI's Batch API (and compatible servers, via ``settings.base_url``).

    The SDK client never retries (``max_retries=0``): control-plane calls go through our own
    loop (:attr:`Provider.retry`); the upload is one try (its stream cannot be rewound), and a
    create is tried again only after looking the batch up by its key.

    Attributes:
        settings: resolved credentials, base URL, timeout and retries (``max_retries`` sizes our
            retry loop when ``retry`` is not given).
    """

    name: ClassVar[str] = "openai"
    default_max_requests: ClassVar[int] = 50_000
    default_max_bytes: ClassVar[int] = 200 * 1024 * 1024
    default_base_url: ClassVar[str] = "https://api.openai.com/v1"
    message_roles: ClassVar[frozenset[str]] = frozenset(
        {"system", "developer", "user", "assistant"}
    )

    def endpoint(self, config: BatchConfig) -> str:
        """``config.openai.endpoint``: every line's ``url`` and the batch's ``endpoint``."""
        return config.openai.endpoint

    # ---- data plane -------------------------------------------------------------------------------

    def request_body(self, config: BatchConfig, prompt: Prompt) -> dict[str, Any]:
        """The chat completions body: model, messages (``config.system`` first, then the prompt's
        text as the user's, or its messages), ``config.params``, response format. For the
        embeddings endpoint: model, the text as ``input``, floats, and ``dimensions``/``user``.

        Raises:
            ConfigError: ``config.params`` sets ``model`` or ``messages``; or, for embeddings,
                a conversation, ``system``, ``response_format`` or another parameter.
        """
        if config.openai.endpoint == EMBEDDINGS:
            return _embedding_body(config, prompt)
        clash = _BODY_KEYS.intersection(config.params)
        if clash:
            raise ConfigError(
                f"params must not set {sorted(clash)}: pass the model as model=... and the prompt "
                "through the prompt column (and system=...)"
            )
        messages: list[dict[str, str]] = []
        if config.system:
            messages.append({"role": "system", "content": config.system})
        messages += prompt_messages(prompt)
        body: dict[str, Any] = {"model": config.model_name, "messages": messages, **config.params}
        if config.response_schema is not None:
            body["response_format"] = response_format(config.response_schema)
        return body

    def request_line(self, custom_id: str, body: dict[str, Any], config: BatchConfig) -> str:
        """``{"custom_id","method","url","body"}`` as compact JSON (the encoder splices into it)."""
        line = {
            "custom_id": custom_id,
            "method": "POST",
            "url": config.openai.endpoint,
            "body": body,
        }
        return json.dumps(line, separators=(",", ":"), ensure_ascii=False)

    def iter_results(self, batch: ProviderBatch) -> Iterator[ResultRecord]:
        """Stream every line of the batch's output and error files as :class:`ResultRecord`.

        A line that does not parse is logged and skipped: its request surfaces as ``missing``.
        """
        return starmap(ResultRecord, self.iter_result_rows(batch))

    def iter_result_rows(self, batch: ProviderBatch) -> Iterator[ResultRow]:
        """:meth:`iter_results` as plain tuples (what collection reads; no dataclass per line)."""
        return parse_result_lines(batch, self._stream_lines, parse_openai_row)

    def _stream_lines(self, file_id: str) -> Iterator[bytes]:
        client = self._sdk()
        with contextlib.ExitStack() as stack:
            # Only opening the download is retried: once lines were yielded, a retry would repeat them.
            response = self._retrying(
                f"downloading file {file_id}",
                lambda: stack.enter_context(client.files.with_streaming_response.content(file_id)),
            )
            with _translated(f"reading file {file_id}"):
                yield from split_lines(response.iter_bytes())

    # ---- real time --------------------------------------------------------------------------------

    def complete(self, config: BatchConfig, prompt: Prompt) -> str:
        """One chat completion with :meth:`request_body`'s body (see :meth:`Provider.complete`).

        Raises:
            ConfigError: the endpoint is not ``/v1/chat/completions``.
            ProviderError: the request failed, or the answer is refused or empty.
        """
        if config.openai.endpoint != _CHAT:
            raise ConfigError(
                f"real-time answers come from {_CHAT}, not {config.openai.endpoint}: "
                "leave openai.endpoint unset"
            )
        body = self.request_body(config, prompt)
        client = self._sdk()
        # The SDK's base URL ends in /v1, the endpoint starts with it.
        path = _CHAT.removeprefix("/v1")
        answer = self._retrying(
            "answering a real-time prompt", lambda: post_json(client, path, body)
        )
        row = openai_row(
            {"custom_id": "realtime", "response": {"status_code": 200, "body": answer}}
        )
        return answer_text("OpenAI", row)

    # ---- control plane ----------------------------------------------------------------------------

    def upload(self, chunk: ChunkRef, content: BinaryIO) -> str:
        """Stream ``content`` (the chunk's lines) to ``files.create(purpose="batch")``; the file id.

        One try, SDK retries off: the stream cannot be rewound, so a failed upload is retried by
        the orchestrator with a fresh stream (an upload that failed is never billed).
        """
        client = self._sdk()
        what = f"uploading chunk {chunk.key}"
        upload = (f"{chunk.key}.jsonl", content, "application/jsonl")
        file = self._call(what, lambda: client.files.create(file=upload, purpose="batch"))
        log.info(
            "uploaded chunk %s (%d requests, %d bytes) as %s",
            chunk.key,
            chunk.requests,
            chunk.nbytes,
            file.id,
        )
        return str(file.id)

    def create(self, chunk: ChunkRef, input_ref: str | None, config: BatchConfig) -> ProviderBatch:
        """Create the batch, tagged ``{"llm_batch_key": key, "llm_batch_attempt": n}``.

        The SDK's own retries are off for this call: a create that failed after the provider
        accepted it must not be repeated blindly. Our loop looks the batch up by key first.
        """
        if not input_ref:
            raise ValueError(f"chunk {chunk.key} has no uploaded file id: upload it before create")
        client = self._sdk()
        metadata = {KEY_FIELD: chunk.key, ATTEMPT_FIELD: str(chunk.attempt)}
        started = time.time()
        what = f"creating batch for chunk {chunk.key}"

        def attempt() -> ProviderBatch:
            created = client.batches.create(
                input_file_id=input_ref,
                endpoint=config.openai.endpoint,
                completion_window=config.openai.completion_window,
                metadata=metadata,
            )
            return normalise_batch(created)

        batch = call_with_retry(
            lambda: self._call(what, attempt),
            settings=self.retry or RetrySettings(),
            what=what,
            before_retry=lambda: self.find(chunk, started),
        )
        log.info(
            "created batch %s for chunk %s (attempt %d)", batch.batch_id, chunk.key, chunk.attempt
        )
        return batch

    def find(
        self, chunk: ChunkRef, not_before: float, owned: frozenset[str] = frozenset()
    ) -> ProviderBatch | None:
        """The newest batch tagged with ``chunk.key`` created at or after ``not_before``, whose
        id is not in ``owned``.

        ``not_before`` is our clock; OpenAI's ``created_at`` is its own clock, truncated to whole
        seconds, so the search reaches back :data:`_CLOCK_SLACK` further: a batch created in the
        same second as (or, with skew, "before") ``not_before`` is still found.
        """
        client = self._sdk()
        cutoff = not_before - _CLOCK_SLACK

        def attempt() -> ProviderBatch | None:
            # Auto-pagination walks newest first; stop at the first batch older than the cutoff.
            for batch in client.batches.list(limit=100):
                if batch.created_at is not None and batch.created_at < cutoff:
                    return None
                tagged = (batch.metadata or {}).get(KEY_FIELD) == chunk.key
                if tagged and batch.id not in owned:
                    return normalise_batch(batch)
            return None

        return self._retrying(f"finding batch for chunk {chunk.key}", attempt)

    def retrieve(self, batch_id: str) -> ProviderBatch:
        """The batch's current state."""
        client = self._sdk()
        return self._retrying(
            f"retrieving batch {batch_id}",
            lambda: normalise_batch(client.batches.retrieve(batch_id)),
        )

    def cancel(self, batch_id: str) -> ProviderBatch:
        """Ask OpenAI to cancel the batch (it passes through ``cancelling``)."""
        client = self._sdk()
        batch = self._retrying(
            f"cancelling batch {batch_id}", lambda: normalise_batch(client.batches.cancel(batch_id))
        )
        log.info("cancel requested for batch %s: now %s", batch_id, batch.raw_status)
        return batch

    def cleanup(self, input_ref: str | None) -> None:
        """Delete the uploaded input file; failures are logged, never raised."""
        if not input_ref:
            return
        client = self._sdk()
        try:
            self._call(f"deleting file {input_ref}", lambda: client.files.delete(input_ref))
        except ProviderError as exc:
            log.info("could not delete input file %s (ignored): %s", input_ref, exc.message)

    # ---- helpers ----------------------------------------------------------------------------------

    def _sdk(self) -> Any:
        """The SDK client, built on first use (and again after unpickling)."""
        if self._client is None:
            import openai

            key = self.settings.api_key
            try:
                self._client = openai.OpenAI(
                    api_key=key.get_secret_value() if key is not None else None,
                    base_url=self.settings.base_url,
                    timeout=self.settings.timeout_seconds,
                    max_retries=0,  # one retry loop: ours (Provider.retry)
                )
            except openai.OpenAIError as exc:
                raise ConfigError(
                    f"cannot build the OpenAI client: {exc}. Set OPENAI_API_KEY or pass "
                    "provider_settings=ProviderSettings(api_key=...)"
                ) from None
        return self._client

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        with _translated(what):
            return fn()


def _embedding_body(config: BatchConfig, prompt: Prompt) -> dict[str, Any]:
    """The ``/v1/embeddings`` body of one text (see :meth:`OpenAIProvider.request_body`)."""
    if not isinstance(prompt, str):
        raise ConfigError("embeddings take a text column, not conversations")
    given = [name for name in ("system", "response_format") if getattr(config, name)]
    if given:
        raise ConfigError(f"embeddings take none of {given}: remove them")
    other = sorted(set(config.params) - _EMBEDDING_PARAMS)
    if other:
        raise ConfigError(
            f"embeddings take only the params {sorted(_EMBEDDING_PARAMS)}, not {other}"
        )
    return {"model": config.model_name, "input": prompt, "encoding_format": "float",
            **config.params}  # fmt: skip


def response_format(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``response_format`` for ``schema``: a bare JSON schema is wrapped as strict.

    Example:
        >>> response_format({"type": "object", "properties": {}})["type"]
        'json_schema'
        >>> response_format({"type": "json_object"})
        {'type': 'json_object'}
    """
    if schema.get("type") in ("json_schema", "json_object", "text"):
        return schema  # already in OpenAI's own shape
    title = schema.get("title")
    name = title if isinstance(title, str) else "response"
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64] or "response"
    return {"type": "json_schema", "json_schema": {"name": safe, "schema": schema, "strict": True}}


def normalise_batch(batch: Any) -> ProviderBatch:
    """Turn an SDK ``Batch`` into a :class:`ProviderBatch`."""
    raw = str(batch.status)
    state = _STATES.get(raw)
    if state is None:
        # A status we do not know yet: keep polling rather than guess an end.
        log.warning("batch %s has unknown status %r; treating it as in progress", batch.id, raw)
        state = BatchState.IN_PROGRESS
    counts = batch.request_counts
    refs = tuple(ref for ref in (batch.output_file_id, batch.error_file_id) if ref)
    errors = tuple(
        (str(err.code or "unknown"), redact(str(err.message or "")))
        for err in ((batch.errors.data or []) if batch.errors is not None else [])
    )
    return ProviderBatch(
        batch_id=str(batch.id),
        state=state,
        total=int(counts.total) if counts is not None else 0,
        completed=int(counts.completed) if counts is not None else 0,
        failed=int(counts.failed) if counts is not None else 0,
        result_refs=refs,
        errors=errors,
        key=(batch.metadata or {}).get(KEY_FIELD),
        created_at=float(batch.created_at) if batch.created_at is not None else None,
        raw_status=raw,
    )


def _translated(what: str) -> contextlib.AbstractContextManager[None]:
    """SDK errors re-raised as :mod:`spark_llm_batch.errors` while doing ``what``."""
    return translated("openai", "OpenAI", what, _auth_hint)


def _auth_hint(exc: Any) -> str | None:
    """What to fix when OpenAI's error answer refused the key or the account, else ``None``."""
    import openai

    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return " Check OPENAI_API_KEY (or provider_settings.api_key) and the key's permissions."
    if exc.code == "insufficient_quota" or exc.type == "insufficient_quota":
        return " The account is out of quota: add credit or raise the limit, then re-run."
    return None
