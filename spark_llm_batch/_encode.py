"""Rows to requests: each prompt's request hash and chunk-file line, as Spark SQL expressions.

The provider owns the wire format (``request_body`` / ``request_line``); this module only makes it
fast. On the driver it renders one line with marker values for the custom id and the prompt and
cuts it at the markers into a :class:`RequestEncoder`. Executors then build every line in the JVM:
the prompt's JSON escape (``to_json``) and its hash (``sha2``) are spliced between the cut pieces. No
Python worker runs, and nothing but the prompt column is read.

Two identities are kept apart:

- the request hash (also the provider ``custom_id``) is ``sha256("<doc digest>:<prompt>")``, where
  the doc digest covers provider, endpoint and the whole request body with the prompt left out
  (model, messages, params, response format). It depends on the prompt's characters, never on how a
  JSON encoder escapes them, so the driver (:func:`request_hash`) and the JVM agree exactly;
- the line is checked once per call, on a probe prompt that exercises every escaping rule, to be
  the same JSON document as the provider's own ``request_line`` (Jackson and Python escape control
  characters differently; both are valid JSON for the same text). A provider whose line cannot be
  built by splicing (it transforms the prompt) is refused with :class:`SparkLLMBatchError`.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spark_llm_batch._columns import ERR_CLASS, ERR_MSG, HASH, LINE, NBYTES
from spark_llm_batch.errors import SparkLLMBatchError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from spark_llm_batch.config import BatchConfig
    from spark_llm_batch.providers.base import Prompt, Provider

__all__ = ["HASH_VERSION", "RequestEncoder", "encode_requests", "request_hash"]

HASH_VERSION = 2
"""Bumped whenever the hash definition changes (it re-sends every request). 2: the prompt is hashed
as text after the doc digest (version 1 hashed the escaped JSON document)."""

INVALID_INPUT = "invalid_input"
TOO_LARGE = "too_large"

# Prompts that exercise every escaping rule: quotes, backslash, controls, non-ASCII, astral plane,
# the JSON-legal but JS-hostile U+2028, and an HTML-ish slash some encoders escape; the second one
# needs no escaping, so it takes the splice's other branch.
_PROBES = (
    'Probe "q" \\ </x> \x00\x1f\x7f\n\r\t\b\f é ü 中文 😀 \u2028 {0} {{}}',
    "Probe </x> \x7f é ü 中文 😀 \u2028 {0} {{}}",
)

_VERIFIED: set[tuple[object, ...]] = set()
"""Encoders already verified in this process: (Spark version, provider class, digest, pieces,
roles). The JVM expressions are deterministic, so a call repeating a request template (a notebook
iterating on samples) needs no second probe job."""

_ID = 0  # slot of the custom id in RequestEncoder.pieces
_PROMPT = 1  # slot of the escaped prompt
# Python's str.isspace() characters: a prompt made only of them is blank.
_WHITESPACE = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
# The characters JSON requires escaped; a prompt without any is its own JSON string content.
_MUST_ESCAPE = r'["\\\x00-\x1f]'


def _canonical(obj: Any) -> str:
    # Sorted keys, no whitespace: equal requests serialise equally whatever their dict order.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _doc_digest(provider: Provider, config: BatchConfig, messages: bool = False) -> str:
    """Digest of everything that identifies a request except its prompt (its text, or with
    ``messages``, its conversation: then the document says so, and no hash of a text prompt can
    equal one of a conversation)."""
    marker = f"LLMPROMPT{uuid.uuid4().hex}"
    document: dict[str, Any] = {
        "v": HASH_VERSION,
        "provider": provider.name,
        "endpoint": provider.endpoint(config),
        "model": config.model_name,
        "body": provider.request_body(config, _marker_prompt(marker, messages)),
    }
    if messages:
        document["prompt"] = "messages"
    # The random marker becomes a fixed token, so the digest is the same in every process.
    canonical = _canonical(document).replace(marker, "\x00prompt\x00")
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _marker_prompt(marker: str, messages: bool) -> Prompt:
    """The prompt whose place in a rendered line is cut out: ``marker`` as the text, or as the one
    user message of a conversation."""
    return [{"role": "user", "content": marker}] if messages else marker


def _hash_of(digest: str, key: str) -> str:
    return hashlib.sha256(f"{digest}:{key}".encode()).hexdigest()[:32]


def _messages_key(messages: Sequence[Mapping[str, str]]) -> str:
    """What a conversation's hash covers: each message's role, content size and content, so that
    no two conversations share it (and no JSON encoder's escaping enters it)."""
    return "\n".join(f"{m['role']}:{len(m['content'].encode())}:{m['content']}" for m in messages)


def request_hash(provider: Provider, config: BatchConfig, prompt: Prompt) -> str:
    """The request hash of ``prompt`` (a text, or a conversation of ``{"role", "content"}``
    messages): 32 lowercase hex characters, also the provider ``custom_id``.

    It covers provider, endpoint, model and the whole request body (messages, params, response
    format), so it changes when any of them does, and never depends on where the row sits.

    Example:
        >>> request_hash(provider, config, "Say hi")  # doctest: +SKIP
        '5f0c0e5d4a1b2c3d4e5f60718293a4b5'
    """
    if isinstance(prompt, str):
        return _hash_of(_doc_digest(provider, config), prompt)
    return _hash_of(_doc_digest(provider, config, messages=True), _messages_key(prompt))


def _cut(line: str, id_mark: str, prompt_mark: str) -> tuple[str | int, ...]:
    """``line`` as literal pieces and slots (:data:`_ID`, :data:`_PROMPT`) where the markers were."""
    pieces: list[str | int] = []
    for i, around_id in enumerate(line.split(id_mark)):
        if i:
            pieces.append(_ID)
        for j, text in enumerate(around_id.split(prompt_mark)):
            if j:
                pieces.append(_PROMPT)
            if text:
                pieces.append(text)
    return tuple(pieces)


@dataclass(frozen=True)
class RequestEncoder:
    """The cut line and the hash prefix of one call: everything executors need, as expressions.

    Build it with :meth:`build`; it holds no credentials (request bodies never need them).
    """

    pieces: tuple[str | int, ...]  # literals, _ID and _PROMPT slots, in line order
    doc_digest: str
    null_hash: str  # the hash of a row whose prompt is null
    max_bytes: int
    roles: tuple[str, ...] = ()  # a conversation's allowed roles; empty: prompts are text

    @classmethod
    def build(
        cls, spark: SparkSession, provider: Provider, config: BatchConfig, *, messages: bool = False
    ) -> RequestEncoder:
        """Render, cut and verify the provider's line (one tiny Spark query, once per process
        and request template: see :data:`_VERIFIED`). With ``messages``, the prompt column holds
        conversations (arrays of ``role``/``content`` structs), spliced into the line as its
        messages.

        Raises:
            ConfigError: ``config`` is not valid for the provider (from ``request_body``).
            SparkLLMBatchError: the provider's line cannot be built by splicing the prompt, or its
                id rule (``custom_id_pattern``) refuses our request hashes.
        """
        prompt_mark = f"LLMPROMPT{uuid.uuid4().hex}"  # alphanumeric: identical under any escaping
        id_mark = f"LLMID{uuid.uuid4().hex}"
        body = provider.request_body(config, _marker_prompt(prompt_mark, messages))
        line = provider.request_line(id_mark, body, config)
        if messages:  # the marker message's place is where the conversation's messages go
            message = json.dumps(_marker_prompt(prompt_mark, True)[0], separators=(",", ":"))
            if line.count(message) != 1:
                raise SparkLLMBatchError(
                    f"provider {provider.name!r}: its request line does not hold the messages "
                    f"as compact JSON objects, so a conversation cannot be spliced into {line!r}"
                )
            line = line.replace(message, prompt_mark)
        pieces = _cut(line, id_mark, prompt_mark)
        digest = _doc_digest(provider, config, messages)
        null_hash = hashlib.sha256(f"{digest}:null-prompt".encode()).hexdigest()[:32]
        if not re.fullmatch(provider.custom_id_pattern, null_hash):  # every hash has this shape
            raise SparkLLMBatchError(
                f"provider {provider.name!r}: its custom ids must match "
                f"{provider.custom_id_pattern!r}, and our request hashes (32 hex digits) do not"
            )
        _, max_bytes = provider.batch_limits(config)
        roles = tuple(sorted(provider.message_roles)) if messages else ()
        encoder = cls(pieces, digest, null_hash, max_bytes, roles)
        verified = (spark.version, type(provider), digest, pieces, roles)
        if verified not in _VERIFIED:
            encoder._verify(spark, provider, config)
            _VERIFIED.add(verified)
        return encoder

    def hash_column(self, prompt: Column) -> Column:
        """The request hash of ``prompt`` (null prompts get :attr:`null_hash`)."""
        from pyspark.sql import functions as F

        key = _messages_key_column(prompt) if self.roles else prompt
        digest = F.sha2(F.concat(F.lit(f"{self.doc_digest}:"), key), 256)
        return F.coalesce(F.substring(digest, 1, 32), F.lit(self.null_hash))

    def line_column(self, prompt: Column, custom_id: Column) -> Column:
        """The chunk-file line of ``prompt`` under ``custom_id`` (no newline)."""
        from pyspark.sql import functions as F

        slots = {_ID: custom_id, _PROMPT: self._spliced(prompt)}
        return F.concat(*[slots[p] if isinstance(p, int) else F.lit(p) for p in self.pieces])

    def nbytes_column(self, prompt: Column) -> Column:
        """The line's size in bytes, newline included, without building the line."""
        from pyspark.sql import functions as F

        fixed = 1 + 32 * self.pieces.count(_ID)
        fixed += sum(len(p.encode()) for p in self.pieces if isinstance(p, str))
        slots = self.pieces.count(_PROMPT)
        return (F.lit(fixed) + F.octet_length(self._spliced(prompt)) * slots).cast("long")

    def _spliced(self, prompt: Column) -> Column:
        """What goes in the prompt's slot: the text as JSON string content, or a conversation's
        messages as comma-separated JSON objects (``to_json`` of the array, brackets cut)."""
        from pyspark.sql import functions as F

        if not self.roles:
            return _escaped(prompt)
        pairs = F.transform(prompt, lambda m: F.struct(m["role"].alias("role"),
                                                       m["content"].alias("content")))  # fmt: skip
        as_json = F.to_json(pairs)
        return F.substring(as_json, F.lit(2), F.length(as_json) - 2)

    def _invalid(self, prompt: Column) -> tuple[Column, Column]:
        """Whether a non-null prompt cannot be sent, and why."""
        from pyspark.sql import functions as F

        if self.roles:
            shown = ", ".join(self.roles)
            bad_role = F.exists(prompt, lambda m: m["role"].isNull() | ~m["role"].isin(*self.roles))
            no_content = F.exists(prompt, lambda m: m["content"].isNull())
            reasons = (
                F.when(F.size(prompt) == 0, F.lit("messages are empty"))
                .when(bad_role, F.lit(f"a message's role is not one of: {shown}"))
                .when(no_content, F.lit("a message's content is null"))
            )
            return reasons.isNotNull(), reasons
        # Trimming is costly: only a prompt that starts with whitespace can be blank.
        first = F.substring(prompt, 1, 1)
        blank = (first == "") | (
            first.isin(*_WHITESPACE) & (F.length(F.btrim(prompt, F.lit(_WHITESPACE))) == 0)
        )
        return blank, F.lit("prompt is empty or only whitespace")

    def annotate(
        self, df: DataFrame, prompt_col: str, null_message: Column | None = None
    ) -> DataFrame:
        """``df`` plus ``HASH``, ``NBYTES``, ``ERR_CLASS``, ``ERR_MSG`` (see :func:`encode_requests`);
        ``null_message`` says why a prompt is null (default: ``"prompt is null"``)."""
        from pyspark.sql import functions as F

        prompt = F.col(f"`{prompt_col}`")
        hashed = self.hash_column(prompt)
        nbytes = self.nbytes_column(prompt)
        blank, why_blank = self._invalid(prompt)
        too_large = nbytes > self.max_bytes
        limit = f" bytes, over the batch limit of {self.max_bytes} bytes (limits.max_bytes)"
        err_class = (
            F.when(prompt.isNull() | blank, F.lit(INVALID_INPUT))
            .when(too_large, F.lit(TOO_LARGE))
            .otherwise(F.lit(None).cast("string"))
        )
        err_msg = (
            F.when(
                prompt.isNull(),
                null_message if null_message is not None else F.lit("prompt is null"),
            )
            .when(blank, why_blank)
            .when(
                too_large, F.concat(F.lit("request line is "), nbytes.cast("string"), F.lit(limit))
            )
            .otherwise(F.lit(None).cast("string"))
        )
        return df.select(
            "*",
            hashed.alias(HASH),
            F.when(prompt.isNull(), F.lit(None).cast("long")).otherwise(nbytes).alias(NBYTES),
            err_class.alias(ERR_CLASS),
            err_msg.alias(ERR_MSG),
        )

    def _verify(self, spark: SparkSession, provider: Provider, config: BatchConfig) -> None:
        if self.roles:
            chats = [[{"role": "user", "content": p}] for p in _PROBES]
            chats.append(
                [{"role": r, "content": p} for r, p in zip(self.roles, _PROBES * 4, strict=False)]
            )
            probes = spark.createDataFrame(
                [(chat,) for chat in chats], "p ARRAY<STRUCT<role: STRING, content: STRING>>"
            )
        else:
            probes = spark.createDataFrame([(p,) for p in _PROBES], "p STRING")
        prompt = probes["p"]
        rows = probes.select(
            prompt,
            self.hash_column(prompt).alias("h"),
            self.line_column(prompt, self.hash_column(prompt)).alias("l"),
            self.nbytes_column(prompt).alias("n"),
        ).collect()
        for row in rows:
            given: Prompt = row["p"] if not self.roles else [m.asDict() for m in row["p"]]
            key = given if isinstance(given, str) else _messages_key(given)
            expected_hash = _hash_of(self.doc_digest, key)
            body = provider.request_body(config, given)
            expected = provider.request_line(expected_hash, body, config)
            line = row["l"]
            if (
                row["h"] != expected_hash
                or _json_or_none(line) != json.loads(expected)
                or row["n"] != len(line.encode()) + 1
            ):
                raise SparkLLMBatchError(
                    f"provider {provider.name!r}: its request line cannot be built by splicing the "
                    f"JSON-escaped prompt into a template (got {line!r}, expected {expected!r})"
                )


def _escaped(prompt: Column) -> Column:
    """``prompt`` as JSON string content; ``to_json`` (slow) only where something needs escaping."""
    from pyspark.sql import functions as F

    as_json = F.to_json(F.struct(prompt.alias("p")))  # {"p":"<escaped>"}
    return F.when(
        prompt.rlike(_MUST_ESCAPE), F.substring(as_json, F.lit(7), F.length(as_json) - 8)
    ).otherwise(prompt)


def _messages_key_column(messages: Column) -> Column:
    """:func:`_messages_key` as a Spark expression."""
    from pyspark.sql import functions as F

    def one(m: Column) -> Column:
        size = F.octet_length(m["content"]).cast("string")
        return F.concat(m["role"], F.lit(":"), size, F.lit(":"), m["content"])

    return F.array_join(F.transform(messages, one), "\n")


def _json_or_none(text: str | None) -> Any:
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return None


def encode_requests(
    df: DataFrame, prompt_col: str, config: BatchConfig, provider: Provider
) -> DataFrame:
    """Add each row's request hash and chunk-file line, as Spark expressions (no Python worker).

    The output holds every input column unchanged plus ``HASH``, ``NBYTES``, ``ERR_CLASS``,
    ``ERR_MSG`` and ``LINE`` (see :mod:`spark_llm_batch._columns`). Every row gets a hash. A null,
    empty or whitespace-only prompt gets ``LINE`` null and ``ERR_CLASS`` ``"invalid_input"``; a line
    whose size (newline included) exceeds ``config.limits.max_bytes`` (default: the provider's limit)
    gets ``LINE`` null, ``ERR_CLASS`` ``"too_large"`` and its would-be size in ``NBYTES``. Each line is
    the same JSON document as ``provider.request_line(hash, provider.request_body(config, prompt),
    config)``.

    Example:
        >>> encoded = encode_requests(df, "prompt", config, provider)  # doctest: +SKIP
        >>> encoded.filter(encoded["__llm_line"].isNotNull()).count()  # doctest: +SKIP
        998
    """
    from pyspark.sql import functions as F

    from spark_llm_batch._validate import holds_conversations

    chats = holds_conversations(df, prompt_col)
    encoder = RequestEncoder.build(df.sparkSession, provider, config, messages=chats)
    annotated = encoder.annotate(df, prompt_col)
    line = encoder.line_column(F.col(f"`{prompt_col}`"), F.col(HASH))
    return annotated.withColumn(LINE, F.when(F.col(ERR_CLASS).isNull(), line))
