"""Input-file validation and batch-level failures: the batch ends `failed` naming the line."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai
import pytest

from spark_llm_batch.emulator import Emulator
from tests.emulator._openai_helpers import client_for, submit, wait

MakeJsonl = Callable[..., bytes]


def _line(
    custom_id: str = "a",
    *,
    url: str = "/v1/chat/completions",
    model: str = "m",
    method: str = "POST",
) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({"custom_id": custom_id, "method": method, "url": url, "body": body})


@pytest.mark.parametrize(
    ("content", "code", "line"),
    [
        (_line("a") + "\n{not json\n", "invalid_json_line", 2),
        (_line("a") + "\n" + _line("b", url="/v1/embeddings") + "\n", "url_mismatch", 2),
        (_line("a") + "\n" + _line("b", model="other") + "\n", "model_mismatch", 2),
        (_line("a") + "\n" + _line("a") + "\n", "duplicate_custom_id", 2),
        (_line("a", method="GET") + "\n", "invalid_method", 1),
        ("\n", "empty_file", None),
    ],
)
def test_bad_file_fails_the_batch(
    openai_client: openai.OpenAI, content: str, code: str, line: int | None
) -> None:
    created = submit(openai_client, content.encode())
    assert created.status == "validating"  # the service accepts first, fails later
    batch = wait(openai_client, created.id)
    assert batch.status == "failed"
    assert batch.failed_at is not None
    assert batch.errors is not None
    assert batch.errors.data is not None
    first = batch.errors.data[0]
    assert (first.code, first.line) == (code, line)
    assert batch.output_file_id is None
    assert batch.error_file_id is None


def test_too_many_requests(
    fresh_emulator: Callable[..., Emulator], make_openai_jsonl: MakeJsonl
) -> None:
    client = client_for(fresh_emulator(openai_max_requests=3, processing_seconds=0))
    batch = wait(client, submit(client, make_openai_jsonl(["x"] * 4)).id)
    assert batch.status == "failed"
    assert batch.errors is not None
    assert batch.errors.data is not None
    assert (batch.errors.data[0].code, batch.errors.data[0].line) == ("too_many_tasks", 4)
    assert wait(client, submit(client, make_openai_jsonl(["x"] * 3)).id).status == "completed"


def test_token_limit_exceeded(
    fresh_emulator: Callable[..., Emulator], make_openai_jsonl: MakeJsonl
) -> None:
    emu = fresh_emulator(enqueued_token_limit=200, processing_seconds=1000)
    client = client_for(emu)
    first = wait(client, submit(client, make_openai_jsonl(["word " * 20] * 4)).id, ("in_progress",))
    second = wait(client, submit(client, make_openai_jsonl(["word " * 20] * 4)).id)
    assert second.status == "failed"
    assert second.errors is not None
    assert second.errors.data is not None
    assert second.errors.data[0].code == "token_limit_exceeded"
    assert "Enqueued token limit reached for gpt-4o-mini" in (second.errors.data[0].message or "")
    emu.advance(1001)
    assert client.batches.retrieve(first.id).status == "completed"
    # Once the queue drained, the same batch fits again.
    assert wait(client, submit(client, make_openai_jsonl(["word " * 20] * 4)).id, ("in_progress",))


def test_invalid_body_is_an_error_line_not_a_failed_batch(openai_client: openai.OpenAI) -> None:
    bad = json.dumps(
        {
            "custom_id": "bad",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": 5},
        }
    )
    batch = wait(
        openai_client,
        submit(openai_client, (_line("ok", model="m") + "\n" + bad + "\n").encode()).id,
    )
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    text = openai_client.files.content(batch.error_file_id or "").text
    line = json.loads(text)
    assert line["response"]["status_code"] == 400
    assert line["response"]["body"]["error"]["type"] == "invalid_request_error"
