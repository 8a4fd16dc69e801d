"""The OpenAI Files API, driven through the official SDK."""

from __future__ import annotations

import io
from collections.abc import Callable

import openai
import pytest

from spark_llm_batch.emulator import Emulator


def test_upload_retrieve_content_delete(
    openai_client: openai.OpenAI, make_openai_jsonl: Callable[..., bytes]
) -> None:
    data = make_openai_jsonl(["a", "b"])
    uploaded = openai_client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert uploaded.id.startswith("file-")
    assert (uploaded.bytes, uploaded.purpose, uploaded.filename) == (len(data), "batch", "in.jsonl")
    assert uploaded.expires_at == uploaded.created_at + 30 * 86400  # batch files default to 30 days
    assert openai_client.files.retrieve(uploaded.id).bytes == len(data)
    assert openai_client.files.content(uploaded.id).read() == data
    deleted = openai_client.files.delete(uploaded.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError) as info:
        openai_client.files.retrieve(uploaded.id)
    assert info.value.body["param"] == "id"  # type: ignore[index]


def test_expires_after(openai_client: openai.OpenAI) -> None:
    uploaded = openai_client.files.create(
        file=("x.jsonl", io.BytesIO(b"{}\n")),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert uploaded.expires_at == uploaded.created_at + 3600


def test_expired_file_is_gone(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator()
    client = openai.OpenAI(base_url=emu.openai_base_url, api_key="sk-test", max_retries=0)
    uploaded = client.files.create(
        file=("x.jsonl", io.BytesIO(b"{}\n")),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    emu.advance(3601)
    with pytest.raises(openai.NotFoundError):
        client.files.content(uploaded.id)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"purpose": "nonsense"}, "purpose"),
        (
            {"purpose": "batch", "expires_after": {"anchor": "created_at", "seconds": 5}},
            "expires_after[seconds]",
        ),
    ],
)
def test_bad_upload_is_400_in_openai_shape(
    openai_client: openai.OpenAI, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), **kwargs)  # type: ignore[arg-type]
    error = info.value.body
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param


def test_batch_input_must_be_jsonl(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match=r"\.jsonl"):
        openai_client.files.create(file=("in.csv", io.BytesIO(b"a,b\n")), purpose="batch")


def test_upload_over_the_byte_limit(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator(openai_max_bytes=1000)
    client = openai.OpenAI(base_url=emu.openai_base_url, api_key="sk-test", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("big.jsonl", io.BytesIO(b"x" * 1001)), purpose="batch")
    assert info.value.code == "file_too_large"
    assert client.files.list().data == []


def test_list_pages_newest_first(fresh_emulator: Callable[..., Emulator]) -> None:
    emu = fresh_emulator()
    client = openai.OpenAI(base_url=emu.openai_base_url, api_key="sk-test", max_retries=0)
    ids = [
        client.files.create(file=(f"f{i}.jsonl", io.BytesIO(b"{}\n")), purpose="batch").id
        for i in range(5)
    ]
    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == ids[::-1][:2]
    assert page.has_more is True
    assert [f.id for f in client.files.list(limit=2)] == ids[::-1]  # the SDK follows `after`


def test_unknown_file_is_404(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="No such File object"):
        openai_client.files.content("file-missing")
