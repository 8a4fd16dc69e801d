"""The failure classes and the helpers every provider's result parser shares (pure functions).

Each provider's line parsing is tested beside the provider: ``tests/providers``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from spark_llm_batch import _results
from spark_llm_batch._results import (
    FAILURE_CLASSES,
    FATAL,
    RETRYABLE,
    answer_row,
    classify_http_error,
    clip_message,
    decode_line,
    failed_row,
    json_object,
)
from spark_llm_batch.config import RetryPolicy

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def test_class_sets() -> None:
    assert RETRYABLE <= FAILURE_CLASSES
    assert FATAL <= FAILURE_CLASSES
    assert not RETRYABLE & FATAL
    assert set(_results._WORD_CLASSES.values()) <= FAILURE_CLASSES


def test_classify_http_error_words_without_status() -> None:
    assert classify_http_error(None, "invalid_request_error") == "invalid_request"
    assert classify_http_error(None, "rate_limit_error") == "rate_limited"
    assert classify_http_error(None, code="authentication_error") == "auth"


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("overloaded_error", "rate_limited"),
        ("timeout_error", "server_error"),
        ("not_found_error", "invalid_request"),
        ("request_too_large", "invalid_request"),
    ],
)
def test_anthropic_error_words(word: str, expected: str) -> None:
    # Anthropic's errored results carry only the word: one mapping serves every provider.
    assert classify_http_error(None, word) == expected
    assert classify_http_error(None, code=word) == expected
    assert classify_http_error(503, word) == "server_error"  # a status still wins


def test_decode_line() -> None:
    assert decode_line(b'{"custom_id":"c1","x":[1]}') == {"custom_id": "c1", "x": [1]}
    assert decode_line(' {"custom_id":"c1"} ') == {"custom_id": "c1"}  # json.loads' way
    for bad in (b"nope", b"[1]", b'{"custom_id": 5}', b'{"custom_id": "c", "a": "\xff"}'):
        with pytest.raises(ValueError, match=r"JSON|custom_id|utf-8"):
            decode_line(bad)


def test_json_object_takes_the_fast_path_only_for_plain_object_bytes() -> None:
    assert json_object(b'{"a":"caf\xc3\xa9"}') == {"a": "caf\u00e9"}
    for other in ('{"a":1}', b' {"a":1}', b'{"a":1} ', b"\xef\xbb\xbf{}", b'{"a":1}}', b"[1]"):
        assert json_object(other) is None


def test_rows_clip_and_redact_messages() -> None:
    secret = "sk-proj-" + "A1b2C3d4" * 4
    message = clip_message(f"Incorrect key {secret} " + "x" * 5000)
    assert secret not in message
    assert "***" in message
    assert len(message) == 2000
    assert clip_message({"type": "api_error"}) == '{"type": "api_error"}'
    row = failed_row("c1", "server_error", {"detail": secret}, model="m")
    assert row[:5] == ("c1", "failed", None, None, "server_error")
    assert secret not in (row[5] or "")
    assert row[8] == "m"


def test_answer_rows() -> None:
    tokens = (3, 9)
    assert answer_row("c1", "Hi", "stop", tokens=tokens, model="m") == (
        "c1", "succeeded", "Hi", "stop", None, None, 3, 9, "m",
    )  # fmt: skip
    assert answer_row("c1", "Hi", "length", tokens=tokens, model="m")[1] == "succeeded"
    cut = answer_row("c1", None, "length", tokens=tokens, model="m")
    assert cut[1:5] == ("failed", None, "length", "truncated")
    assert "max_tokens" in (cut[5] or "")
    refused = answer_row("c1", "No.", "refusal", tokens=tokens, model="m", refusal="No.")
    assert refused == ("c1", "failed", "No.", "refusal", "refused", "No.", 3, 9, "m")


def test_retry_condition_follows_policy(spark: SparkSession) -> None:
    from pyspark.sql import functions as F

    from spark_llm_batch._collect import retry_condition

    policy = RetryPolicy(rate_limited=2, expired=3)
    cases = [
        ("rate_limited", 1, True),
        ("rate_limited", 2, False),
        ("expired", 2, True),
        ("missing", 1, True),
        ("refused", 1, False),  # default: 1 attempt
        ("invalid_request", 1, False),
        ("auth", 1, True),  # open: the job stops, and sends it again once fixed
        ("auth", 9, True),
        ("cancelled", 1, False),
        (None, 1, False),
    ]
    frame = spark.createDataFrame([(c, a) for c, a, _ in cases], "error_class STRING, attempt INT")
    got = frame.select(retry_condition(F.col("error_class"), F.col("attempt"), policy)).collect()
    assert [row[0] for row in got] == [expected for _, _, expected in cases]


def test_module_is_pure() -> None:
    # Parsers run on executors without the SDKs: nothing in _results imports one.
    assert "openai" not in _results.__dict__
    assert "anthropic" not in _results.__dict__
