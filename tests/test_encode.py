"""Encoding: spliced lines equal the provider's own, hashes are content identities, bad rows are data."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from spark_llm_batch import _columns as C
from spark_llm_batch._encode import _build_template, encode_requests, request_hash
from spark_llm_batch.config import BatchConfig, BatchLimits, ProviderSettings
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

    def find(self, chunk: Any, not_before: float) -> Any:
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


PROVIDERS = [
    _openai(),
    AsciiTemplateProvider(ProviderSettings()),
    UnsplicableProvider(ProviderSettings()),
]


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"system": 'Be "brief" {x}', "params": {"temperature": 0.2, "max_tokens": 50}},
        {"response_format": {"type": "object", "properties": {"a": {"type": "string"}}}},
    ],
)
def test_spliced_line_equals_provider_line(provider: Provider, options: dict[str, Any]) -> None:
    config = _config(**options)
    template = _build_template(provider, config, 10**6)
    assert (template.line is None) == isinstance(provider, UnsplicableProvider)
    for prompt in TRICKY:
        custom_id = request_hash(provider, config, prompt)
        expected = provider.request_line(custom_id, provider.request_body(config, prompt), config)
        assert template.encode(prompt) == (custom_id, expected)


@pytest.mark.parametrize(
    "provider", [_openai(), UnsplicableProvider(ProviderSettings())], ids=["fast", "slow"]
)
def test_template_shipped_to_executors_carries_no_key(provider: Provider) -> None:
    secret = "sk-secret-abcdef123456"
    config = _config(provider_settings=ProviderSettings(api_key=secret))
    provider.settings = ProviderSettings(api_key=secret)
    template = _build_template(provider, config, 1000)
    assert secret.encode() not in pickle.dumps(template)
    assert template.encode("hi")[0] == request_hash(provider, config, "hi")


def test_hash_covers_every_part_of_the_request() -> None:
    provider = _openai()
    base = _config(system="s", params={"temperature": 0})
    variants = [
        base,
        _config(model="openai:gpt-4o", system="s", params={"temperature": 0}),
        _config(system="t", params={"temperature": 0}),
        _config(system="s", params={"temperature": 1}),
        _config(system="s", params={"temperature": 0}, response_format={"type": "json_object"}),
        _config(system="s", params={"temperature": 0}, endpoint="/v1/responses"),
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
    assert out.columns == ["id", "prompt", C.HASH, C.LINE, C.NBYTES, C.ERR_CLASS, C.ERR_MSG]
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
            assert line == provider.request_line(
                row[C.HASH], provider.request_body(config, prompt), config
            )
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


def test_many_small_arrow_batches(spark: SparkSession) -> None:
    provider, config = _openai(), _config()
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(key)
    spark.conf.set(key, "97")  # several batches per partition, the last one ragged
    try:
        df = spark.range(0, 3000, numPartitions=2).selectExpr(
            "id", "concat('é \"q\" ', id) AS prompt"
        )
        rows = (
            encode_requests(df, "prompt", config, provider)
            .select("id", "prompt", C.HASH, C.LINE)
            .collect()
        )
    finally:
        spark.conf.set(key, previous)
    assert sorted(r["id"] for r in rows) == list(range(3000))
    for row in rows[::50]:
        custom_id = request_hash(provider, config, row["prompt"])
        body = provider.request_body(config, row["prompt"])
        assert (row[C.HASH], row[C.LINE]) == (
            custom_id,
            provider.request_line(custom_id, body, config),
        )
    assert len({r[C.HASH] for r in rows}) == 3000
