"""The provider interface: everything provider-specific sits behind :class:`Provider`.

The orchestrator, the store and the encoder are provider-neutral; they speak in the normalised types
below. A provider has two halves:

- the data plane, run where the run's transport puts it (in Spark tasks, or on the driver; see
  ``spark_llm_batch._transport``): ``request_body`` / ``request_line`` turn a prompt into one line of
  a chunk, ``upload`` streams a chunk's lines to the provider, and ``iter_results`` streams a
  finished batch's results as :class:`ResultRecord` values (``iter_result_rows``: the same as plain
  tuples, what collection reads);
- the control plane, run on the driver: ``create``, ``find``, ``retrieve``, ``cancel``;
- one real-time call, ``complete``: a single prompt through the provider's real-time API (the
  SQL scalar ``llm_query``, on executors), with the request body a batch line would carry.

The data plane never opens a file: the lines to upload arrive as a stream, and results go back as
values; where they are stored is Spark's business.

What differs between batch APIs is declared, so the orchestrator never asks a provider's name:
how requests travel (:attr:`Provider.requests_inline`), whether a batch carries our key
(:attr:`Provider.tags_batches`), the billing rule (:attr:`Provider.billed_classes`), the id rule
(:attr:`Provider.custom_id_pattern`) and the limits. How results come back (output and error
files, one stream) stays inside ``iter_results``. OpenAI uploads a chunk as a file, creates a batch
from the file id and tags it with our key in ``metadata``; Anthropic sends the requests inline in
the create call and has no metadata, so its ``find`` matches on request count and creation time.

Provider objects are pickled to executors: they hold settings only, build SDK clients lazily, and
never carry the API key in plain text (see :meth:`Provider.__getstate__`). The data plane's shared
steps are here too: :func:`split_lines` cuts a download into lines, :func:`parse_result_lines`
turns them into rows with the provider's parser; the failure classes and the helpers parsers
share are in ``spark_llm_batch._results``.
"""

from __future__ import annotations

import base64
import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, BinaryIO, ClassVar, TypeAlias, TypeVar

from pydantic import SecretStr

from spark_llm_batch._retry import RetrySettings, call_with_retry
from spark_llm_batch.config import BatchConfig, ProviderSettings
from spark_llm_batch.errors import ConfigError, ProviderError

__all__ = [
    "AmbiguousBatch",
    "BatchState",
    "ChunkMissing",
    "ChunkRef",
    "Prompt",
    "Provider",
    "ProviderBatch",
    "ResultRecord",
    "ResultRow",
    "answer_text",
    "parse_result_lines",
    "prompt_messages",
    "split_lines",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Keys pickled to executors are obscured (not encrypted) so that dumps and secret scanners never
# see them in plain text; anyone holding the pickle can still recover the key, as they must.
_PAD = b"spark-llm-batch/obscure"


class BatchState(str, enum.Enum):
    """A provider batch's state, normalised across providers. Stored by value."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once the provider will not change the batch any more."""
        return self in (
            BatchState.COMPLETED,
            BatchState.FAILED,
            BatchState.EXPIRED,
            BatchState.CANCELLED,
        )


class AmbiguousBatch(Exception):
    """:meth:`Provider.find` saw more than one batch that could be the chunk's, and cannot tell
    which: creating again could pay twice, adopting the wrong one would drop its results.

    Attributes:
        candidates: the batches that matched (the orchestrator tells them apart by the
            ``custom_id`` of their results, once they have results:
            :func:`spark_llm_batch._reconcile.tell_apart`).
    """

    def __init__(self, message: str, candidates: Sequence[ProviderBatch] = ()) -> None:
        super().__init__(message)
        self.candidates = tuple(candidates)


class ChunkMissing(Exception):
    """The store holds no lines for a chunk (swept, or lost), or not the lines that were staged
    (another size, another number of lines): there is nothing sound to send. The orchestrator
    abandons the batch, and its requests fall back to pending (staged again by the next run)."""


@dataclass(frozen=True)
class ChunkRef:
    """One staged chunk: the unit that becomes one provider batch. Its lines are the rows of the
    store's ``chunks`` table under ``key``; a transport streams them to the provider.

    Attributes:
        key: our batch key (unique, 32 hex chars); also the provider batch's metadata tag.
        requests: number of request lines.
        nbytes: the lines' size in bytes (every line counted with its newline).
        model: the model every line uses.
        attempt: 1 for a first submission, n for the n-th try of its requests.
    """

    key: str
    requests: int
    nbytes: int
    model: str
    attempt: int = 1


@dataclass(frozen=True)
class ProviderBatch:
    """What a provider says about one batch, normalised.

    Attributes:
        batch_id: the provider's id.
        state: the normalised state.
        total / completed / failed: request counts as the provider reports them (Anthropic: zero until
            the batch ends).
        result_refs: what ``iter_results`` needs to read the results (OpenAI: the non-empty output and
            error file ids; Anthropic: the batch id once ended). Empty when there is nothing to read.
        errors: batch-level errors as ``(code, message)`` pairs (validation failures, queue full).
        key: our key as the provider echoes it back (OpenAI metadata), if any.
        created_at: provider creation time in unix seconds.
        raw_status: the provider's own status word, for logs.
    """

    batch_id: str
    state: BatchState
    total: int = 0
    completed: int = 0
    failed: int = 0
    result_refs: tuple[str, ...] = ()
    errors: tuple[tuple[str, str], ...] = ()
    key: str | None = None
    created_at: float | None = None
    raw_status: str = ""

    def to_json(self) -> str:
        """This batch as JSON (how a Spark task hands a batch it created back to the driver)."""
        import json

        return json.dumps({**self.__dict__, "state": self.state.value})

    @classmethod
    def from_json(cls, text: str) -> ProviderBatch:
        """The batch :meth:`to_json` wrote."""
        import json

        data = json.loads(text)
        return cls(
            **{
                **data,
                "state": BatchState(data["state"]),
                "result_refs": tuple(data["result_refs"]),
                "errors": tuple(tuple(e) for e in data["errors"]),
            }
        )


@dataclass(frozen=True)
class ResultRecord:
    """One request's outcome, normalised; becomes one row of the store's results table.

    Attributes:
        custom_id: the request's custom id, which is its request hash.
        status: ``"succeeded"`` or ``"failed"``.
        text: the response text (or the JSON text of a structured answer).
        finish_reason: ``stop``, ``length``, ``content_filter``, ``refusal``, ``tool_use``...
        error_class: a failure class from ``spark_llm_batch._results.FAILURE_CLASSES``, else ``None``.
        error_message: the provider's message for a failure (redacted).
        input_tokens / output_tokens: usage, when the provider reported it.
        model: the model that answered.
    """

    custom_id: str
    status: str
    text: str | None = None
    finish_reason: str | None = None
    error_class: str | None = None
    error_message: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    model: str | None = None


Prompt: TypeAlias = "str | Sequence[Mapping[str, str]]"
"""One request's prompt: the user's text, or a conversation of ``{"role", "content"}`` messages."""

ResultRow: TypeAlias = tuple[
    str, str, str | None, str | None, str | None, str | None, int | None, int | None, str | None
]
"""A :class:`ResultRecord` as a plain tuple of its fields, in declaration order (``custom_id`` first)."""

_AS_ROW = attrgetter(*(f.name for f in fields(ResultRecord)))


@dataclass
class Provider(ABC):
    """A provider's batch API. Subclasses register themselves in ``providers.REGISTRY``."""

    settings: ProviderSettings
    name: ClassVar[str]
    default_max_requests: ClassVar[int]
    default_max_bytes: ClassVar[int]
    default_base_url: ClassVar[str]
    """The provider's API base URL when ``settings.base_url`` is unset."""
    requests_inline: ClassVar[bool] = False
    """How requests travel. ``False``: a chunk's lines are uploaded as a file (:meth:`upload`),
    then a batch is created from its reference (:meth:`create`). ``True``: the lines travel in the
    create call itself (:meth:`create_inline`), and there is no upload."""
    tags_batches: ClassVar[bool] = True
    """Whether a batch carries our key (metadata). ``False``: :meth:`find` can only match on request
    count and creation time, so the orchestrator commits after every create to keep that window
    short, and never adopts a batch the store already records."""
    billed_classes: ClassVar[frozenset[str]] = frozenset(
        {"succeeded", "refused", "truncated", "invalid_output"}
    )
    """The billing rule: the result classes whose usage the provider bills, where a row's class is
    ``"succeeded"`` for a succeeded row, else its ``error_class`` (see :meth:`is_billed`).

    The default is every answer the provider produced: refusals, answers cut at the token limit
    with no text and structured answers that break their schema are recorded as failures, but the
    provider answered them and bills them. OpenAI
    (each 200 line of the output file) and Anthropic (each ``succeeded`` result, whatever its
    ``stop_reason``) both bill so, also inside expired and cancelled batches; requests that errored,
    expired or were cancelled before they ran are not billed."""
    custom_id_pattern: ClassVar[str] = r"^[A-Za-z0-9_-]{1,64}$"
    """What a request's ``custom_id`` (our request hash) must match."""
    message_roles: ClassVar[frozenset[str]] = frozenset({"user", "assistant"})
    """The roles a message of a conversation prompt may have (checked per row before sending)."""
    retry: RetrySettings | None = None
    """Bounds of the one retry loop of control-plane calls (:meth:`_retrying`); default
    ``settings.max_retries + 1`` attempts. SDK clients are built with their own retries off, so
    that the two never stack."""
    _client: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.retry is None:
            self.retry = RetrySettings(attempts=self.settings.max_retries + 1)

    def __getstate__(self) -> dict[str, Any]:
        """What a pickle holds: no SDK client, and the API key obscured, never in plain text.

        SDK clients hold sockets and locks: the other side rebuilds its own. The key leaves the
        pickled settings and travels obscured beside them (:meth:`__setstate__` puts it back).
        """
        state = dict(self.__dict__)
        state["_client"] = None
        settings = state["settings"]
        if settings.api_key is not None:
            state["settings"] = settings.model_copy(update={"api_key": None})
            state["_obscured_key"] = _obscure(settings.api_key.get_secret_value())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`__getstate__` kept, the API key back in the settings."""
        state = dict(state)
        obscured = state.pop("_obscured_key", None)
        if obscured is not None:
            key = SecretStr(_reveal(obscured))
            state["settings"] = state["settings"].model_copy(update={"api_key": key})
        self.__dict__.update(state)

    @property
    def base_url(self) -> str:
        """Where the provider's API is: ``settings.base_url``, else :attr:`default_base_url`."""
        return self.settings.base_url or self.default_base_url

    @classmethod
    def is_billed(cls, status: str, error_class: str | None) -> bool:
        """Whether the provider bills the usage of a result row (:attr:`billed_classes`).

        Example:
            >>> Provider.is_billed("succeeded", None), Provider.is_billed("failed", "refused")
            (True, True)
            >>> Provider.is_billed("failed", "expired")
            False
        """
        return (status if status == "succeeded" else error_class) in cls.billed_classes

    def batch_limits(self, config: BatchConfig) -> tuple[int, int]:
        """Requests and encoded bytes allowed per batch: the config's limits, else the provider's
        (OpenAI's 50,000 requests hold for its embeddings endpoint too: one input per request).

        Raises:
            ConfigError: a limit over the provider's own (its batches would be refused).
        """
        limits = config.limits
        for name, given, most in (
            ("max_requests", limits.max_requests, self.default_max_requests),
            ("max_bytes", limits.max_bytes, self.default_max_bytes),
        ):
            if given is not None and given > most:
                raise ConfigError(
                    f"limits.{name}={given} is over {self.name}'s batch limit of {most}: its "
                    "batches would be refused (leave it unset for the provider's own)"
                )
        return (
            limits.max_requests or self.default_max_requests,
            limits.max_bytes or self.default_max_bytes,
        )

    @abstractmethod
    def endpoint(self, config: BatchConfig) -> str:
        """The route every request of ``config`` calls (OpenAI: ``config.openai.endpoint``).

        Recorded with each batch (a run drives the batches of one provider, model and endpoint)
        and part of every request's hash.
        """

    # ---- data plane (executors) -------------------------------------------------------------------

    @abstractmethod
    def request_body(self, config: BatchConfig, prompt: Prompt) -> dict[str, Any]:
        """The request body for one prompt (model, messages, params, response format).

        ``prompt`` is the user's text, or a whole conversation: ``{"role", "content"}`` messages
        in order (roles among :attr:`message_roles`), sent as they are after ``config.system``.
        """

    @abstractmethod
    def request_line(self, custom_id: str, body: dict[str, Any], config: BatchConfig) -> str:
        """One chunk-file line (JSON, no trailing newline) carrying ``body`` under ``custom_id``."""

    @abstractmethod
    def iter_results(self, batch: ProviderBatch) -> Iterator[ResultRecord]:
        """Stream the results of an ended batch, never holding a whole file in memory."""

    def iter_result_rows(self, batch: ProviderBatch) -> Iterator[ResultRow]:
        """:meth:`iter_results` as :data:`ResultRow` tuples: what collection reads.

        Providers may override it to skip building a dataclass per line (a million per
        collection); a row holds the fields of the record ``iter_results`` would yield, in order.
        """
        return map(_AS_ROW, self.iter_results(batch))

    def upload(self, chunk: ChunkRef, content: BinaryIO) -> str:
        """Send the chunk's lines as a file; return the provider's input reference.

        Only for providers whose requests do not travel inline (:attr:`requests_inline` false).
        ``content`` streams the chunk's ``nbytes`` bytes once, forward only (its size can be asked
        with ``seek(0, SEEK_END)``): a failed upload is retried by the orchestrator with a fresh
        stream, never by rewinding this one.
        """
        raise NotImplementedError(f"{self.name}: requests travel inline, there is no upload")

    def create_inline(
        self, chunk: ChunkRef, content: BinaryIO, config: BatchConfig
    ) -> ProviderBatch:
        """Create the batch for ``chunk`` with its lines in the create call itself.

        Only for providers with :attr:`requests_inline`. ``content`` is the same forward-only
        stream :meth:`upload` gets; it is sent as it is read, never gathered into one list. One
        try: a create that failed after the provider accepted it must not be repeated blindly
        (the orchestrator reconciles with :meth:`find` first).
        """
        raise NotImplementedError(f"{self.name}: requests are uploaded, not sent inline")

    def complete(self, config: BatchConfig, prompt: Prompt) -> str:
        """Answer one prompt through the provider's real-time API (full price, not batch).

        The request is :meth:`request_body`'s, the body a batch line carries, and the answer is
        classified as a batch result is: a refusal or an answer cut before any text is a
        failure, raised. Transient failures are tried again within :attr:`retry`.

        Raises:
            ConfigError: the config's endpoint has no real-time chat answer (embeddings).
            AuthenticationError: the provider refused the key or the account.
            ProviderError: the request failed, or the answer is a failure (the message names
                its class); redacted.
        """
        raise NotImplementedError(f"{self.name}: no real-time API")

    # ---- control plane (driver) -------------------------------------------------------------------

    def create(self, chunk: ChunkRef, input_ref: str, config: BatchConfig) -> ProviderBatch:
        """Create the provider batch for an uploaded chunk, tagged with ``chunk.key`` where the
        provider can. Only for providers whose requests are uploaded."""
        raise NotImplementedError(f"{self.name}: requests travel inline, use create_inline")

    @abstractmethod
    def find(
        self, chunk: ChunkRef, not_before: float, owned: frozenset[str] = frozenset()
    ) -> ProviderBatch | None:
        """Find a batch created for ``chunk`` at or after ``not_before`` (unix seconds), if any.

        Used after a crash between create and the commit that records it. A batch whose id is in
        ``owned`` (recorded in the store for another chunk, or another job) is never returned.

        Raises:
            AmbiguousBatch: several unowned batches match and none can be told apart (providers
                that cannot tag batches): the orchestrator neither adopts nor creates, and asks
                again later.
        """

    @abstractmethod
    def retrieve(self, batch_id: str) -> ProviderBatch:
        """The batch's current state."""

    @abstractmethod
    def cancel(self, batch_id: str) -> ProviderBatch:
        """Ask the provider to cancel the batch."""

    def cleanup(self, input_ref: str | None) -> None:  # noqa: B027 - optional hook
        """Delete provider-side input that is no longer needed (best effort)."""

    # ---- helpers ----------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` once; providers translate their SDK's errors into :mod:`spark_llm_batch.errors`
        here (what the retry loop and the orchestrator understand)."""
        return fn()

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` through :meth:`_call`, transient failures retried within :attr:`retry`."""
        settings = self.retry or RetrySettings()
        return call_with_retry(lambda: self._call(what, fn), settings=settings, what=what)


def prompt_messages(prompt: Prompt) -> list[dict[str, str]]:
    """The messages of ``prompt``: its text as the one user message, or its conversation's
    ``{"role", "content"}`` pairs in order (other keys left out).

    Example:
        >>> prompt_messages("hi")
        [{'role': 'user', 'content': 'hi'}]
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def answer_text(provider: str, row: ResultRow) -> str:
    """The text of a real-time answer classified as a batch result (``row``), or its failure.

    Raises:
        ProviderError: the row is a failure (refused, truncated, ...): its class and message.

    Example:
        >>> answer_text("openai", ("c1", "succeeded", "Hi", "stop", None, None, 3, 1, "m"))
        'Hi'
    """
    _, status, text, _, error_class, message, *_ = row
    if status != "succeeded":
        raise ProviderError(f"{provider} did not answer the prompt ({error_class}): {message}")
    return text or ""


def parse_result_lines(
    batch: ProviderBatch,
    lines: Callable[[str], Iterable[bytes]],
    parse: Callable[[bytes], ResultRow],
) -> Iterator[ResultRow]:
    """The rows of an ended batch: ``lines(ref)`` streams the lines of each of its
    ``result_refs``, ``parse`` turns each line into a row.

    A line that does not parse (``parse`` raises ``ValueError``) is logged and skipped: its request
    surfaces as ``missing`` at collection.

    Example:
        >>> from spark_llm_batch.providers._anthropic_results import parse_anthropic_row
        >>> batch = ProviderBatch("b1", BatchState.COMPLETED, result_refs=("b1",))
        >>> lines = {"b1": [b'{"custom_id":"c1","result":{"type":"expired"}}', b"not json"]}
        >>> [row[:5] for row in parse_result_lines(batch, lines.__getitem__, parse_anthropic_row)]
        [('c1', 'failed', None, None, 'expired')]
    """
    for ref in batch.result_refs:
        for raw in lines(ref):
            try:
                yield parse(raw)
            except ValueError as exc:
                log.warning(
                    "skipping unreadable result line in %s of batch %s: %s",
                    ref,
                    batch.batch_id,
                    exc,
                )


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Split a byte stream into non-empty lines on ``\\n`` only (a trailing ``\\r`` is dropped).

    ``str.splitlines`` would also split on U+2028 and friends, which JSON may carry raw.

    Example:
        >>> list(split_lines([b'{"a":1}\\n{"b"', b':2}\\r\\n\\n']))
        [b'{"a":1}', b'{"b":2}']
    """
    buffer = bytearray()
    for chunk in chunks:
        buffer.extend(chunk)
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end]).rstrip(b"\r")
            if line.strip():
                yield line
            start = end + 1
        del buffer[:start]
    if bytes(buffer).strip():
        yield bytes(buffer).rstrip(b"\r")


def _obscure(key: str) -> str:
    data = key.encode()
    pad = (_PAD * (len(data) // len(_PAD) + 1))[: len(data)]
    return base64.b64encode(bytes(a ^ b for a, b in zip(data, pad, strict=True))).decode()


def _reveal(obscured: str) -> str:
    data = base64.b64decode(obscured)
    pad = (_PAD * (len(data) // len(_PAD) + 1))[: len(data)]
    return bytes(a ^ b for a, b in zip(data, pad, strict=True)).decode()
