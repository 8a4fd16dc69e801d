"""Encoding: spliced lines are the provider's own documents, hashes are content identities, bad rows are data."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from spark_llm_batch import _columns as C
from spark_llm_batch._encode import RequestEncoder, encode_requests, request_hash
from spark_llm_batch.config import BatchConfig, BatchLimits, ProviderSettings
from spark_llm_batch.errors import SparkLLMBatchError
from spark_llm_batch.providers.base import Provider
from spark_llm_batch.providers.openai import OpenAIProvider

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Python workers must run this interpreter (it has pyarrow), whatever `python3` is on PATH.

TRICKY = [
    'he said "hi"',
    "back\\slash and /slash",
    "line one\nline two\r\n\ttabbed",
    "unicode: é ü 中文 😀 \u2028 \u0000",
    "braces {0} {} {{x}}",
    "x" * 2000,
]


class _Unused(Provider):
    """Control-plane methods the encoder never calls."""

    def iter_results(self, batch: Any) -> Any:
        raise NotImplementedError

    def upload(self, chunk: Any) -> Any:
        raise NotImplementedError

    def create(self, chunk: Any, input_ref: Any, config: Any) -> Any:
        raise NotImplementedError

    def endpoint(self, config: Any) -> str:
        return "/v1/chat/completions"

    def find(self, chunk: Any, not_before: float, owned: Any = frozenset()) -> Any:
        raise NotImplementedError

    def retrieve(self, batch_id: str) -> Any:
        raise NotImplementedError

    def cancel(self, batch_id: str) -> Any:
        raise NotImplementedError


@dataclass
class AsciiTemplateProvider(_Unused):
    """ASCII-escaped JSON, the prompt embedded inside a larger string, custom id at the end."""

    name: ClassVar[str] = "ascii-test"
    default_max_requests: ClassVar[int] = 100
    default_max_bytes: ClassVar[int] = 10_000

    def request_body(self, config: BatchConfig, prompt: str) -> dict[str, Any]:
        return {"model": config.model_name, "input": f"Task: {prompt} (end)", **config.params}

    def request_line(self, custom_id: str, body: dict[str, Any], config: BatchConfig) -> str:
        return json.dumps({"params": body, "custom_id": custom_id})


@dataclass
class UnsplicableProvider(AsciiTemplateProvider):
    """Serialises the prompt in a way no splice reproduces: the encoder must call it per row."""

    name: ClassVar[str] = "unsplicable-test"

    def request_body(self, config: BatchConfig, prompt: str) -> dict[str, Any]:
        return {"model": config.model_name, "input": prompt.upper(), "chars": len(prompt)}


def _config(model: str = "openai:gpt-4o-mini", **options: Any) -> BatchConfig:
    return BatchConfig(model=model, store="/tmp/unused-store", **options)


def _openai() -> OpenAIProvider:
    return OpenAIProvider(ProviderSettings(api_key="sk-test-000000"))


SPLICABLE = [_openai(), AsciiTemplateProvider(ProviderSettings())]


@pytest.mark.parametrize("provider", SPLICABLE, ids=lambda p: p.name)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"system": 'Be "brief" {x}', "params": {"temperature": 0.2, "max_tokens": 50}},
        {"response_format": {"type": "object", "properties": {"a": {"type": "string"}}}},
    ],
)
def test_spliced_line_is_the_provider_document(
    spark: SparkSession, provider: Provider, options: dict[str, Any]
) -> None:
    config = _config(**options)
    df = spark.createDataFrame(list(enumerate(TRICKY)), "id int, prompt string")
    rows = encode_requests(df, "prompt", config, provider).collect()
    assert len(rows) == len(TRICKY)
    for row in rows:
        prompt = row["prompt"]
        custom_id = request_hash(provider, config, prompt)
        expected = provider.request_line(custom_id, provider.request_body(config, prompt), config)
        assert row[C.HASH] == custom_id
        # The JVM escapes some control characters differently from Python: same JSON document.
        assert json.loads(row[C.LINE]) == json.loads(expected)
        assert row[C.NBYTES] == len(row[C.LINE].encode("utf-8")) + 1
        if not any(ch in prompt for ch in '"\\\n\r\t\x00'):
            assert row[C.LINE] == expected  # nothing to escape: byte for byte


def test_a_request_template_is_probed_once_per_process(spark: SparkSession) -> None:
    probes: list[str] = []
    real = RequestEncoder._verify

    def verify(self: RequestEncoder, spark: SparkSession, provider: Provider, config: Any) -> None:
        probes.append(self.doc_digest)
        real(self, spark, provider, config)

    provider = OpenAIProvider(ProviderSettings())
    unique = f"Answer in one word ({id(probes)})."  # a template no other test has probed
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RequestEncoder, "_verify", verify)
        first = RequestEncoder.build(spark, provider, _config(system=unique))
        again = RequestEncoder.build(spark, provider, _config(system=unique))
        other = RequestEncoder.build(spark, provider, _config(system=unique + " Or two."))
    assert again == first
    assert probes == [first.doc_digest, other.doc_digest]  # a new template is probed again


def test_a_provider_that_transforms_the_prompt_is_refused(spark: SparkSession) -> None:
    with pytest.raises(SparkLLMBatchError, match=r"unsplicable-test.*cannot be built by splicing"):
        RequestEncoder.build(spark, UnsplicableProvider(ProviderSettings()), _config())


@dataclass
class ShortIdProvider(AsciiTemplateProvider):
    """Custom ids of at most 16 characters: our 32-digit request hashes cannot be its ids."""

    name: ClassVar[str] = "short-id-test"
    custom_id_pattern: ClassVar[str] = r"^[a-z0-9]{1,16}$"


def test_a_provider_whose_id_rule_refuses_our_hashes_is_refused(spark: SparkSession) -> None:
    with pytest.raises(SparkLLMBatchError, match=r"short-id-test.*custom ids must match"):
        RequestEncoder.build(spark, ShortIdProvider(ProviderSettings()), _config())


def test_encoder_shipped_to_executors_carries_no_key(spark: SparkSession) -> None:
    secret = "sk-secret-abcdef123456"
    config = _config(provider_settings=ProviderSettings(api_key=secret))
    provider = OpenAIProvider(ProviderSettings(api_key=secret))
    encoder = RequestEncoder.build(spark, provider, config)
    assert secret.encode() not in pickle.dumps(encoder)
    assert secret not in repr(encoder)


def test_hash_covers_every_part_of_the_request() -> None:
    provider = _openai()
    base = _config(system="s", params={"temperature": 0})
    variants = [
        base,
        _config(model="openai:gpt-4o", system="s", params={"temperature": 0}),
        _config(system="t", params={"temperature": 0}),
        _config(system="s", params={"temperature": 1}),
        _config(system="s", params={"temperature": 0}, response_format={"type": "json_object"}),
        _config(system="s", params={"temperature": 0}, openai={"endpoint": "/v1/responses"}),
    ]
    hashes = [request_hash(provider, cfg, "same prompt") for cfg in variants]
    assert len(set(hashes)) == len(hashes)
    assert request_hash(provider, base, "same prompt") == hashes[0]
    assert request_hash(provider, base, "other prompt") != hashes[0]
    assert all(len(h) == 32 and h == h.lower() and int(h, 16) >= 0 for h in hashes)
    # Dict order of params is not part of the identity.
    a = _config(params={"temperature": 0, "max_tokens": 5})
    b = _config(params={"max_tokens": 5, "temperature": 0})
    assert request_hash(provider, a, "p") == request_hash(provider, b, "p")


def test_encode_requests_rows(spark: SparkSession) -> None:
    provider, config = _openai(), _config(system="sys", limits=BatchLimits(max_bytes=1000))
    prompts = [*TRICKY, None, "", "  \n\t", TRICKY[0]]
    df = spark.createDataFrame(list(enumerate(prompts)), "id int, prompt string").repartition(3)
    out = encode_requests(df, "prompt", config, provider)
    assert out.columns == ["id", "prompt", C.HASH, C.NBYTES, C.ERR_CLASS, C.ERR_MSG, C.LINE]
    assert out.schema.fields[:2] == df.schema.fields
    rows = {r["id"]: r for r in out.collect()}
    assert len(rows) == len(prompts)
    for i, prompt in enumerate(prompts):
        row = rows[i]
        assert len(row[C.HASH]) == 32
        if prompt is None or not prompt.strip():
            assert (row[C.ERR_CLASS], row[C.LINE]) == ("invalid_input", None)
            assert row[C.ERR_MSG]
        elif prompt == "x" * 2000:
            assert (row[C.ERR_CLASS], row[C.LINE]) == ("too_large", None)
            assert row[C.NBYTES] > 1000
            assert "1000" in row[C.ERR_MSG]
        else:
            line = row[C.LINE]
            parsed = json.loads(line)
            assert parsed["custom_id"] == row[C.HASH] == request_hash(provider, config, prompt)
            assert parsed["body"]["messages"][-1]["content"] == prompt
            expected = provider.request_line(
                row[C.HASH], provider.request_body(config, prompt), config
            )
            assert json.loads(line) == json.loads(expected)
            assert row[C.NBYTES] == len(line.encode("utf-8")) + 1
            assert (row[C.ERR_CLASS], row[C.ERR_MSG]) == (None, None)
    assert rows[0][C.HASH] == rows[len(prompts) - 1][C.HASH]  # identical prompts, identical hash


def test_hash_independent_of_partitioning(spark: SparkSession) -> None:
    provider, config = AsciiTemplateProvider(ProviderSettings()), _config()
    df = spark.range(600).selectExpr("id", "concat('prompt ', id % 200) AS prompt")

    def hashes(frame: Any) -> dict[int, str]:
        return {
            r["id"]: r[C.HASH] for r in encode_requests(frame, "prompt", config, provider).collect()
        }

    one, many = hashes(df.coalesce(1)), hashes(df.repartition(7, "id"))
    assert one == many
    assert one[5] == one[205] == one[405] != one[6]


def test_jvm_hash_equals_python_hash_for_any_text(spark: SparkSession) -> None:
    provider, config = _openai(), _config(system="s")
    texts = [f'{i} é "q" \\ 中文 😀 \u2028 \x01 e\u0301 {"x" * (i % 50)}' for i in range(500)]
    df = spark.createDataFrame(list(enumerate(texts)), "id int, prompt string").repartition(3)
    rows = encode_requests(df, "prompt", config, provider).select("prompt", C.HASH).collect()
    assert len(rows) == 500
    for row in rows:
        assert row[C.HASH] == request_hash(provider, config, row["prompt"])
    assert len({r[C.HASH] for r in rows}) == 500


def _providers_for_conversations() -> list[Provider]:
    from spark_llm_batch.providers.anthropic import AnthropicProvider

    return [_openai(), AnthropicProvider(ProviderSettings(api_key="sk-ant-test-123456"))]


CHAT_DDL = "id INT, chat ARRAY<STRUCT<role: STRING, content: STRING, note: STRING>>"


@pytest.mark.parametrize("provider", _providers_for_conversations(), ids=lambda p: p.name)
def test_a_conversation_column_is_spliced_as_the_messages_and_hashed_by_its_turns(
    spark: SparkSession, provider: Provider
) -> None:
    model = "openai:gpt-4o-mini" if provider.name == "openai" else "claude-haiku-4-5"
    config = _config(model, system="Be brief.")
    good = [
        [{"role": "user", "content": text, "note": "ignored"}] for text in TRICKY
    ] + [[
        {"role": "user", "content": "first", "note": None},
        {"role": "assistant", "content": 'answer "one"', "note": None},
        {"role": "user", "content": "second\n", "note": None},
    ]]  # fmt: skip
    bad = {
        "messages are empty": [],
        "a message's role is not one of": [{"role": "tool", "content": "x", "note": None}],
        "a message's content is null": [{"role": "user", "content": None, "note": None}],
    }
    rows = [(i, chat) for i, chat in enumerate([*good, *bad.values(), None])]
    df = spark.createDataFrame(rows, CHAT_DDL)
    out = {r["id"]: r for r in encode_requests(df, "chat", config, provider).collect()}
    for i, chat in enumerate(good):
        turns = [{"role": m["role"], "content": m["content"]} for m in chat]
        expected_hash = request_hash(provider, config, turns)
        row = out[i]
        assert row[C.HASH] == expected_hash
        body = provider.request_body(config, turns)
        assert json.loads(row[C.LINE]) == json.loads(
            provider.request_line(expected_hash, body, config)
        )
        assert row[C.NBYTES] == len(row[C.LINE].encode()) + 1
    for offset, reason in enumerate(bad):
        row = out[len(good) + offset]
        assert (row[C.ERR_CLASS], row[C.LINE]) == ("invalid_input", None)
        assert row[C.ERR_MSG].startswith(reason), row[C.ERR_MSG]
    assert out[len(rows) - 1][C.ERR_CLASS] == "invalid_input"
    # A conversation of one user turn is another request than that text as a prompt.
    assert request_hash(provider, config, [{"role": "user", "content": "hi"}]) != request_hash(
        provider, config, "hi"
    )
    # Roles are the provider's: Anthropic takes the system prompt as system=, not as a message.
    system_turn = spark.createDataFrame([(0, [{"role": "system", "content": "x", "note": None}])],
                                        CHAT_DDL)  # fmt: skip
    (row,) = encode_requests(system_turn, "chat", config, provider).collect()
    assert (row[C.ERR_CLASS] is None) == (provider.name == "openai")
