"""The provider interface: everything provider-specific sits behind :class:`Provider`.

The orchestrator, the store and the encoder are provider-neutral; they speak in the normalised types
below. A provider has two halves:

- the data plane, run where the run's transport puts it (in Spark tasks, or on the driver; see
  ``spark_llm_batch._transport``): ``request_body`` / ``request_line`` turn a prompt into one line of
  a chunk, ``upload`` streams a chunk's lines to the provider, and ``iter_results`` streams a
  finished batch's results as :class:`ResultRecord` values (``iter_result_rows``: the same as plain
  tuples, what collection reads);
- the control plane, run on the driver: ``create``, ``find``, ``retrieve``, ``cancel``.

The data plane never opens a file: the lines to upload arrive as a stream, and results go back as
values; where they are stored is Spark's business.

OpenAI uploads a chunk as a file, then creates a batch from the file id, and tags the batch with our key
in ``metadata`` (so ``find`` can reconcile a crash between create and commit). Anthropic has no upload
(the requests travel inline in the create call; ``upload`` returns ``None``) and no metadata, so its
``find`` matches on request count and creation time.

Provider objects are pickled to executors: they hold settings only, and build SDK clients lazily.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, BinaryIO, ClassVar, TypeAlias

from spark_llm_batch.config import BatchConfig, ProviderSettings

__all__ = [
    "BatchState",
    "ChunkRef",
    "Provider",
    "ProviderBatch",
    "ResultRecord",
    "ResultRow",
]


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
    _client: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        # SDK clients hold sockets and locks: rebuild them on the other side.
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def base_url(self) -> str:
        """Where the provider's API is: ``settings.base_url``, else :attr:`default_base_url`."""
        return self.settings.base_url or self.default_base_url

    def batch_limits(self, config: BatchConfig) -> tuple[int, int]:
        """Requests and encoded bytes allowed per batch: the config's limits, else the provider's."""
        limits = config.limits
        return (
            limits.max_requests or self.default_max_requests,
            limits.max_bytes or self.default_max_bytes,
        )

    # ---- data plane (executors) -------------------------------------------------------------------

    @abstractmethod
    def request_body(self, config: BatchConfig, prompt: str) -> dict[str, Any]:
        """The request body for one prompt (model, messages, params, response format)."""

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

    @abstractmethod
    def upload(self, chunk: ChunkRef, content: BinaryIO) -> str | None:
        """Send the chunk's lines; return the provider's input reference (``None``: nothing to upload).

        ``content`` streams the chunk's ``nbytes`` bytes once, forward only (its size can be asked
        with ``seek(0, SEEK_END)``): a failed upload is retried by the orchestrator with a fresh
        stream, never by rewinding this one.
        """

    # ---- control plane (driver) -------------------------------------------------------------------

    @abstractmethod
    def create(self, chunk: ChunkRef, input_ref: str | None, config: BatchConfig) -> ProviderBatch:
        """Create the provider batch for ``chunk``, tagged with ``chunk.key`` where the provider can."""

    @abstractmethod
    def find(self, chunk: ChunkRef, not_before: float) -> ProviderBatch | None:
        """Find a batch created for ``chunk`` at or after ``not_before`` (unix seconds), if any.

        Used after a crash between create and the commit that records it.
        """

    @abstractmethod
    def retrieve(self, batch_id: str) -> ProviderBatch:
        """The batch's current state."""

    @abstractmethod
    def cancel(self, batch_id: str) -> ProviderBatch:
        """Ask the provider to cancel the batch."""

    def cleanup(self, input_ref: str | None) -> None:  # noqa: B027 - optional hook
        """Delete provider-side input that is no longer needed (best effort)."""
