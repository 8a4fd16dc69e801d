"""The OpenAI Batch API lifecycle, driven through the official SDK."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from spark_llm_batch.emulator import Emulator
from spark_llm_batch.emulator._answers import expected_text
from tests.emulator._openai_helpers import client_for, lines, submit, wait

MakeJsonl = Callable[..., bytes]


def test_batch_completes_with_one_answer_per_row(
    openai_client: openai.OpenAI, make_openai_jsonl: MakeJsonl
) -> None:
    prompts = [f"question {i}" for i in range(20)]
    created = submit(openai_client, make_openai_jsonl(prompts), metadata={"job": "t1"})
    assert created.status == "validating"
    batch = wait(openai_client, created.id)
    assert batch.status == "completed"
    assert batch.metadata == {"job": "t1"}
    assert batch.model == "gpt-4o-mini"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (20, 20)
    assert batch.error_file_id is None  # nothing failed
    assert batch.in_progress_at
    assert batch.finalizing_at
    assert batch.completed_at
    out = lines(openai_client, batch.output_file_id)
    for i, prompt in enumerate(prompts):
        line = out[f"r{i}"]
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["choices"][0]["message"]["content"] == expected_text(
            prompt, model="gpt-4o-mini"
        )
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(
        line["response"]["body"]["usage"]["prompt_tokens"] for line in out.values()
    )


def test_live_counts_on_the_simulated_clock(
    fresh_emulator: Callable[..., Emulator], make_openai_jsonl: MakeJsonl
) -> None:
    emu = fresh_emulator(processing_seconds=1000, finalizing_seconds=50)
    client = client_for(emu)
    batch = wait(client, submit(client, make_openai_jsonl(["x"] * 10)).id, ("in_progress",))
    assert batch.request_counts is not None
    assert batch.request_counts.total == 10
    assert batch.request_counts.completed == 0
    emu.advance(450)
    assert client.batches.retrieve(batch.id).request_counts.completed == 4  # type: ignore[union-attr]
    emu.advance(560)
    assert client.batches.retrieve(batch.id).status == "finalizing"
    emu.advance(60)
    assert client.batches.retrieve(batch.id).status == "completed"


def test_list_is_newest_first_and_pages(
    fresh_emulator: Callable[..., Emulator], make_openai_jsonl: MakeJsonl
) -> None:
    client = client_for(fresh_emulator(processing_seconds=0))
    data = make_openai_jsonl(["p"])
    ids = [submit(client, data).id for _ in range(5)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2]
    assert page.has_more is True
    second = client.batches.list(limit=2, after=page.data[-1].id)
    assert [b.id for b in second.data] == ids[::-1][2:4]
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]


def test_cancel_keeps_finished_work_and_bills_it(
    fresh_emulator: Callable[..., Emulator], make_openai_jsonl: MakeJsonl
) -> None:
    emu = fresh_emulator(processing_seconds=1000, cancelling_seconds=30)
    client = client_for(emu)
    batch = wait(client, submit(client, make_openai_jsonl(["x"] * 10)).id, ("in_progress",))
    emu.advance(350)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None
    emu.advance(31)
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "cancelled"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 7)
    out, err = lines(client, batch.output_file_id), lines(client, batch.error_file_id)
    assert sorted(out) == ["r0", "r1", "r2"]
    assert {line["error"]["code"] for line in err.values()} == {"batch_cancelled"}
    assert all(line["response"] is None for line in err.values())
    assert sorted(e["custom_id"] for e in emu.ledger()) == ["r0", "r1", "r2"]
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_expiry_leaves_unfinished_requests_expired(
    fresh_emulator: Callable[..., Emulator], make_openai_jsonl: MakeJsonl
) -> None:
    emu = fresh_emulator(processing_seconds=1000, completion_window_seconds=500)
    client = client_for(emu)
    batch = wait(client, submit(client, make_openai_jsonl(["x"] * 10)).id, ("in_progress",))
    emu.advance(600)
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "expired"
    assert batch.expired_at == batch.expires_at
    out, err = lines(client, batch.output_file_id), lines(client, batch.error_file_id)
    assert len(out) == 4  # finished before the window closed: kept and billed
    assert len(err) == 6
    assert {line["error"]["code"] for line in err.values()} == {"batch_expired"}
    assert sorted(e["custom_id"] for e in emu.ledger()) == sorted(out)


def test_output_file_is_null_when_nothing_succeeded(
    openai_client: openai.OpenAI, make_openai_jsonl: MakeJsonl
) -> None:
    data = make_openai_jsonl(["[[emulator:server_error]] a", "[[emulator:server_error]] b"])
    batch = wait(openai_client, submit(openai_client, data).id)
    assert batch.status == "completed"
    assert batch.output_file_id is None
    assert len(lines(openai_client, batch.error_file_id)) == 2


def test_stuck_in_finalizing_until_released(
    fresh_emulator: Callable[..., Emulator], make_openai_jsonl: MakeJsonl
) -> None:
    emu = fresh_emulator(processing_seconds=0, stuck_in_finalizing=True)
    client = client_for(emu)
    batch = wait(client, submit(client, make_openai_jsonl(["x"])).id, ("finalizing",))
    emu.advance(86400 * 2)
    assert client.batches.retrieve(batch.id).status == "finalizing"
    emu.configure(stuck_in_finalizing=False)
    assert client.batches.retrieve(batch.id).status == "completed"


def test_embeddings_batch(openai_client: openai.OpenAI, make_openai_jsonl: MakeJsonl) -> None:
    data = make_openai_jsonl(["one", "two"], model="text-embedding-3-small", url="/v1/embeddings")
    batch = wait(openai_client, submit(openai_client, data, endpoint="/v1/embeddings").id)
    out = lines(openai_client, batch.output_file_id)
    assert out["r0"]["response"]["body"]["data"][0]["object"] == "embedding"


def test_unknown_batch_and_bad_create(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        openai_client.batches.retrieve("batch_missing")
    with pytest.raises(openai.NotFoundError):
        openai_client.batches.create(
            input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"
        )
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.batches.create(
            input_file_id="file-x",
            endpoint="/v1/chat/completions",
            completion_window="48h",  # type: ignore[arg-type]
        )
    assert info.value.param == "completion_window"


def test_metadata_limits(openai_client: openai.OpenAI, make_openai_jsonl: MakeJsonl) -> None:
    with pytest.raises(openai.BadRequestError):
        submit(openai_client, make_openai_jsonl(["x"]), metadata={f"k{i}": "v" for i in range(17)})
