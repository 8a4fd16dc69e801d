"""``Provider.complete``: one prompt through each provider's real-time API, on the emulator, through
the real SDKs: the batch line's body, the emulator's answer, billed at real time (no batch)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import SecretStr

from spark_llm_batch._retry import RetrySettings
from spark_llm_batch.config import BatchConfig, ProviderSettings
from spark_llm_batch.emulator import Emulator, Fault, _answers, marker
from spark_llm_batch.errors import AuthenticationError, ConfigError, ProviderError
from spark_llm_batch.providers import get_provider
from spark_llm_batch.providers.base import Provider

KEY = "sk-test-" + "Rt7" * 8
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}
FAST_RETRY = RetrySettings(attempts=3, base_seconds=0.01, max_seconds=0.02, max_retry_after=0.02)


@pytest.fixture(params=sorted(MODELS))
def provider_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _setup(
    emu: Emulator, name: str, *, key: str = KEY, **extra: Any
) -> tuple[Provider, BatchConfig]:
    url = emu.openai_base_url if name == "openai" else emu.anthropic_base_url
    settings = ProviderSettings(api_key=SecretStr(key), base_url=url, timeout_seconds=30)
    config = BatchConfig(
        model=MODELS[name], store="/tmp/unused", provider_settings=settings, **extra
    )
    provider = get_provider(config)
    provider.retry = FAST_RETRY
    return provider, config


def test_complete_sends_the_batch_body_and_is_billed_at_real_time(
    emulator: Emulator, provider_name: str
) -> None:
    provider, config = _setup(
        emulator, provider_name, system="Be brief.", params={"temperature": 0, "max_tokens": 64}
    )
    before = len(emulator.ledger())
    # Pickled as it travels to executors: the key is obscured there and back in place here.
    answer = pickle.loads(pickle.dumps(provider)).complete(config, "What is Spark?")
    model = MODELS[provider_name]
    assert answer == _answers.expected_text("What is Spark?", model=model, system="Be brief.")
    entries = emulator.ledger()[before:]
    assert [(e["provider"], e["batch_id"], e["model"]) for e in entries] == [
        (provider_name, None, model)
    ]
    # A conversation is sent as its messages, as in a batch line.
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"}]  # fmt: skip
    turns = [(m["role"], m["content"]) for m in chat]
    assert provider.complete(config, chat) == _answers.expected_text(
        turns, model=model, system="Be brief."
    )


def test_a_refusal_raises_with_its_class(emulator: Emulator, provider_name: str) -> None:
    provider, config = _setup(emulator, provider_name)
    with pytest.raises(ProviderError, match=r"did not answer the prompt \(refused\)"):
        provider.complete(config, f"row 1 {marker(Fault.REFUSED)}")


def test_a_failed_request_raises_redacted_and_auth_is_fatal(
    fresh_emulator: Callable[..., Emulator], provider_name: str
) -> None:
    emu = fresh_emulator(api_keys=frozenset({KEY}))
    provider, config = _setup(emu, provider_name)
    with pytest.raises(ProviderError) as info:
        provider.complete(config, f"row 2 {marker(Fault.SERVER_ERROR)}")
    assert info.value.status == 500
    assert "answering a real-time prompt" in info.value.message
    wrong = "sk-test-" + "Wx3" * 8
    provider, config = _setup(emu, provider_name, key=wrong)
    with pytest.raises(AuthenticationError) as refused:
        provider.complete(config, "hello")
    assert wrong not in str(refused.value)
    assert wrong not in repr(refused.value.body)
    assert emu.ledger() == []


def test_embeddings_have_no_real_time_answer_here(emulator: Emulator) -> None:
    provider, config = _setup(emulator, "openai", openai={"endpoint": "/v1/embeddings"})
    with pytest.raises(ConfigError, match="real-time answers come from /v1/chat/completions"):
        provider.complete(config, "hello")
