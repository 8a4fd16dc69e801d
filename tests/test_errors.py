"""Errors pickle across executor boundaries and never carry a credential."""

from __future__ import annotations

import pickle

import pytest

from spark_llm_batch.errors import (
    AuthenticationError,
    BatchFailedError,
    ConfigError,
    ProviderError,
    SparkLLMBatchError,
    redact,
)


def test_tree() -> None:
    assert issubclass(ConfigError, ValueError)
    for cls in (ConfigError, ProviderError, AuthenticationError, BatchFailedError):
        assert issubclass(cls, SparkLLMBatchError)
    assert issubclass(AuthenticationError, ProviderError)


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("bad column"),
        ProviderError(
            "429 from sk-abcdefgh12345", status=429, body={"k": "Bearer tok123456"}, retry_after=2.0
        ),
        AuthenticationError("401", status=401),
        BatchFailedError("validation failed", batch_id="batch_1", code="invalid_json_line"),
    ],
)
def test_errors_pickle(error: SparkLLMBatchError) -> None:
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert vars(clone) == vars(error)


def test_messages_and_bodies_are_redacted() -> None:
    error = ProviderError("failed with key sk-abcdefgh12345", body={"auth": "Bearer tok123456"})
    assert "sk-abcdefgh" not in str(error)
    assert "tok123456" not in str(error.body)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("key sk-ant-api03-XYZxyz123", "key ***"),
        ("Authorization: Bearer abc.def-123456", "Authorization: Bearer ***"),
        ('{"x-api-key": "secret-123456"}', '{"x-api-key": "***"}'),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redact(raw: str, clean: str) -> None:
    assert redact(raw) == clean
