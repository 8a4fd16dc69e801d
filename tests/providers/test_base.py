"""What every provider shares: the base's helpers, its pickling, SDK error translation."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from pydantic import SecretStr

from spark_llm_batch._retry import RetrySettings
from spark_llm_batch.config import ProviderSettings
from spark_llm_batch.errors import ProviderError
from spark_llm_batch.providers import provider_class
from spark_llm_batch.providers.base import Provider, split_lines

KEY = "sk-test-" + "Kw4" * 8
PROVIDERS = ["anthropic", "openai"]


def test_split_lines_only_on_newline() -> None:
    chunks = [b'{"a":"x\xe2\x80\xa8y"}\r\n{"b"', b":2}\n\n", b'{"c":3}']
    assert list(split_lines(chunks)) == [b'{"a":"x\xe2\x80\xa8y"}', b'{"b":2}', b'{"c":3}']
    assert list(split_lines([])) == []


def test_billing_rule_bills_every_answer() -> None:
    assert Provider.billed_classes == frozenset({"succeeded", "refused", "truncated"})
    assert Provider.is_billed("succeeded", None)
    assert Provider.is_billed("failed", "refused")
    assert Provider.is_billed("failed", "truncated")
    for unanswered in ("invalid_request", "rate_limited", "server_error", "expired", "cancelled"):
        assert not Provider.is_billed("failed", unanswered)
    assert not Provider.is_billed("failed", None)


@pytest.mark.parametrize("name", PROVIDERS)
def test_a_pickle_never_holds_the_key_in_plain_text(name: str) -> None:
    provider = provider_class(name)(ProviderSettings(api_key=SecretStr(KEY), base_url="http://x"))
    data = pickle.dumps(provider)
    assert KEY.encode() not in data
    clone = pickle.loads(data)
    assert clone == provider
    assert clone._client is None
    assert clone.settings.api_key is not None
    assert clone.settings.api_key.get_secret_value() == KEY
    keyless = provider_class(name)(ProviderSettings(base_url="http://x"))
    assert pickle.loads(pickle.dumps(keyless)) == keyless


@pytest.mark.parametrize("name", PROVIDERS)
def test_connection_error_has_no_status(name: str) -> None:
    settings = ProviderSettings(
        api_key=SecretStr(KEY), base_url="http://127.0.0.1:9/v1", max_retries=0, timeout_seconds=2
    )
    cls: Any = provider_class(name)  # each provider takes its own retry bounds
    provider = cls(settings, retry=RetrySettings(attempts=2, base_seconds=0.01))
    with pytest.raises(ProviderError, match="unreachable") as info:
        provider.retrieve("batch_x")
    assert info.value.status is None
    assert KEY not in str(info.value)
