"""What every provider shares: the base's helpers, its pickling, SDK error translation."""

from __future__ import annotations

import http.server
import json
import pickle
import threading
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
    assert Provider.billed_classes == frozenset(
        {"succeeded", "refused", "truncated", "invalid_output"}
    )
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


class _Busy(http.server.BaseHTTPRequestHandler):
    """Answers every call 503 with a short Retry-After, and counts the calls."""

    def do_GET(self) -> None:
        self.server.calls += 1  # type: ignore[attr-defined]
        data = json.dumps(
            {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
        )
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("name", PROVIDERS)
def test_one_retry_layer_max_retries_plus_one_calls_in_all(name: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    server.calls = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base_url = f"http://127.0.0.1:{server.server_port}" + ("/v1" if name == "openai" else "")
        settings = ProviderSettings(api_key=SecretStr(KEY), base_url=base_url, max_retries=3)
        provider = provider_class(name)(settings)
        assert provider.retry == RetrySettings(attempts=4)
        provider.retry = RetrySettings(attempts=4, base_seconds=0.01, max_seconds=0.02)
        with pytest.raises(ProviderError) as info:
            provider.retrieve("batch_x")
    finally:
        server.shutdown()
        server.server_close()
    assert info.value.status == 503
    # The SDK's own retries are off: its tries never multiply ours (4 x 4 would be 16 calls).
    assert server.calls == 4  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", PROVIDERS)
def test_limits_over_the_providers_own_are_refused(name: str) -> None:
    from spark_llm_batch.config import BatchConfig, BatchLimits
    from spark_llm_batch.errors import ConfigError

    provider = provider_class(name)(ProviderSettings(api_key=SecretStr(KEY)))
    model = "gpt-4o-mini" if name == "openai" else "claude-haiku-4-5"
    most = provider.default_max_requests
    fine = BatchConfig(model=model, store="/s", limits=BatchLimits(max_requests=most))
    assert provider.batch_limits(fine) == (most, provider.default_max_bytes)
    over = BatchConfig(model=model, store="/s", limits=BatchLimits(max_requests=most + 1))
    with pytest.raises(ConfigError, match=f"limits.max_requests={most + 1} is over {name}'s"):
        provider.batch_limits(over)
    big = BatchConfig(model=model, store="/s", limits=BatchLimits(max_bytes=10**12))
    with pytest.raises(ConfigError, match=r"limits\.max_bytes"):
        provider.batch_limits(big)
