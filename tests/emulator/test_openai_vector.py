"""The whole-file path for plain chat batches writes what the line-by-line path writes, or declines.

Each accepted file is prepared both ways and compared: output bytes (random ids masked), error file
and plan. Each declined file must leave nothing written, so the general path alone decides it.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from spark_llm_batch.emulator import _openai_vector
from spark_llm_batch.emulator._faults import Fault, RequestFaults
from spark_llm_batch.emulator._openai_batch import prepare
from spark_llm_batch.emulator._openai_vector import prepare_plain_chat
from spark_llm_batch.emulator._openai_vector_lines import _echo

ENDPOINT = "/v1/chat/completions"
_IDS = re.compile(rb'"(batch_req_|req_)[0-9a-f]{32}"')
_MAX_REQUESTS = 50_000

# Prompts that probe the echo (whitespace collapse, the 80-character cut) and JSON escaping.
_PROMPTS = [
    "hello",
    "Summarise:   spaced\tout\nlines  ",
    'quotes " and \\ backslashes, emoji \U0001f600, accents é, U+2028 \u2028 end',
    "x" * 1000,
    "",
    "   ",
    "controls \x00\x01\x1b\x1f and del \x7f",
    "every space: a\x1cb\x1dc\x1ed\x1fe\x85f\xa0g\u1680h\u2000i\u200aj"
    "\u2028k\u2029l\u202fm\u205fn\u3000o",
    "zero\u200bwidth is not a space",
    " " * 200 + "tail after a long run",
    "a" + " " * 170 + "b",
    "中文文本" * 30,
    "</script> & <b>",
    "\\u005b is text here",
    "[[ emulator: spaced ]] and [emulator:x]",
    "2024-01-01",
    *(
        variant
        for n in range(78, 84)
        for variant in ("a" * n, "a" * (n - 1) + " ", " " + "a" * n, "a" * (n - 2) + "  b")
    ),
    ("word " * 20)[:81],
    ("word " * 20)[:80],
]


def _request(
    custom_id: str,
    prompt: str,
    *,
    system: str | None = None,
    model: str = "gpt-4o-mini",
    **params: Any,
) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    body = {"model": model, "messages": messages, **params}
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}


def _jsonl(requests: list[dict[str, Any]], *, sep: bytes = b"\n", **dumps: Any) -> bytes:
    return sep.join(json.dumps(r, **dumps).encode() for r in requests) + sep


def _whole(tmp_path: Path, data: bytes, max_requests: int = _MAX_REQUESTS) -> Any:
    src, ok, err = tmp_path / "in.jsonl", tmp_path / "ok_whole", tmp_path / "err_whole"
    src.write_bytes(data)
    ok.unlink(missing_ok=True)
    err.unlink(missing_ok=True)
    plan = prepare_plain_chat(src, max_requests=max_requests, ok_path=ok, err_path=err)
    if plan is None:
        assert not ok.exists(), "declined after writing"
        assert not err.exists(), "declined after writing"
        return None
    return asdict(plan), _IDS.sub(b'"ID"', ok.read_bytes()), _IDS.sub(b'"ID"', err.read_bytes())


def _by_line(
    tmp_path: Path,
    data: bytes,
    *,
    whole_file: bool = False,
    max_requests: int = _MAX_REQUESTS,
    faults: RequestFaults | None = None,
) -> Any:
    src, ok, err = tmp_path / "in.jsonl", tmp_path / "ok_line", tmp_path / "err_line"
    src.write_bytes(data)
    try:
        plan = prepare(
            src, endpoint=ENDPOINT, max_requests=max_requests, max_bytes=1 << 20, ok_path=ok,
            err_path=err, faults=faults or RequestFaults(), batch_seq=7, whole_file=whole_file,
        )  # fmt: skip
    except Exception as exc:  # the general path's own failures must stay the same
        return type(exc).__name__
    return asdict(plan), _IDS.sub(b'"ID"', ok.read_bytes()), _IDS.sub(b'"ID"', err.read_bytes())


def _assert_pinned(tmp_path: Path, data: bytes) -> None:
    whole = _whole(tmp_path, data)
    assert whole is not None, "the whole-file path declined a plain file"
    assert whole == _by_line(tmp_path, data)
    assert whole[0]["custom_ids"]
    assert whole[2] == b""


def _rows(**kwargs: Any) -> list[dict[str, Any]]:
    return [_request(f"{i:032x}", prompt, **kwargs) for i, prompt in enumerate(_PROMPTS)]


@pytest.mark.parametrize(
    "data",
    [
        _jsonl(_rows()),
        _jsonl(_rows(), ensure_ascii=False),
        _jsonl(_rows(system="Be brief."), separators=(",", ":"), ensure_ascii=False),
        _jsonl(_rows(system="sys \U0001f600  é\n", temperature=0.7, seed=3, user="u")),
        _jsonl(_rows(temperature=1.5e-7, metadata={"k": ["v", None]}, logprobs=False)),
        _jsonl(_rows(model='gpt-"ü"\\x'), ensure_ascii=False),
        _jsonl(_rows(), sep=b"\r\n"),
        _jsonl(_rows(system=""), separators=(" , ", " : "), indent=None),
        _jsonl(_rows()) + b"\n \t\r\n\n",  # blank lines at the end, which both skip
        _jsonl(_rows())[:-1],  # no newline at the end
        _jsonl([_request("a", ""), _request("b", "", system="")]),  # no text at all
    ],
    ids=[
        "ascii", "utf8", "system", "params", "metadata", "odd-model", "crlf", "spaced",
        "trailing-blank-lines", "no-final-newline", "empty-prompts",
    ],
)  # fmt: skip
def test_plain_files_match_the_line_path(tmp_path: Path, data: bytes) -> None:
    _assert_pinned(tmp_path, data)


def test_mixed_turns_and_odd_custom_ids(tmp_path: Path) -> None:
    ids = ['id "q" \\', "ïd-\U0001f600", "2024-01-01", "@key@", "[[emulator:timeout]]", "x" * 300]
    requests = [
        _request(custom_id, prompt, system="S" if i % 2 else None)
        for i, (custom_id, prompt) in enumerate(zip(ids, _PROMPTS, strict=False))
    ]
    requests[0]["body"]["[[emulator:refused]]"] = "a marker as a key is no marker"
    requests[1]["body"]["messages"][-1]["name"] = "extra message keys change nothing"
    requests[2]["extra"] = {"top-level": ["keys", "too"]}
    _assert_pinned(tmp_path, _jsonl(requests))


def test_jackson_style_escapes(tmp_path: Path) -> None:
    # What the pipeline's JVM encoder writes: raw UTF-8, controls as upper-case \u escapes.
    line = (
        '{"custom_id":"j1","method":"POST","url":"/v1/chat/completions","body":{"model":"m",'
        '"messages":[{"role":"user","content":"a\\u001Fb\\u0000c \u00e9\\t\\n\\"q\\" \\/"}]}}\n'
    )
    _assert_pinned(tmp_path, line.encode())


def test_random_files_over_many_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_openai_vector, "_BLOCK_BYTES", 4096)  # many record batches
    rng = random.Random(20261127)
    pool = 'abc xyz  \t\n\r"\\/é中\U0001f600\u2028\u3000\xa0\x00\x1f\x7f[]{}:,'
    requests = []
    for _ in range(600):
        prompt = "".join(rng.choices(pool, k=rng.randrange(0, 260)))
        system = rng.choice([None, "", "Answer briefly.", "sys " + prompt[:20]])
        requests.append(_request(f"{rng.getrandbits(128):032x}", prompt, system=system))
    _assert_pinned(tmp_path, _jsonl(requests, ensure_ascii=rng.random() < 0.5))


def test_echo_of_a_prefix_is_the_echo() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice("ab \t\n\u3000") for _ in range(rng.randrange(0, 400)))
        assert _echo(text) == " ".join(text.split())[:80]


def _edited(edit: Any) -> bytes:
    """Two requests, the second changed by ``edit(request)``."""
    requests = [_request("a", "hello"), _request("b", "world")]
    edit(requests[1])
    return _jsonl(requests)


def _body_edit(edit: Any) -> bytes:
    return _edited(lambda request: edit(request["body"]))


_LINE = _jsonl([_request("a", "hello")])
_TWO = _jsonl([_request("a", "hello"), _request("b", "world")])

_DECLINED = {
    # Fault markers, literal or spelt with escapes, anywhere in a body.
    "marker": _jsonl([_request("a", "hi [[emulator:refused]]")]),
    "marker-in-system": _jsonl([_request("a", "hi", system="[[emulator:timeout]]")]),
    "marker-in-param": _jsonl([_request("a", "hi", user="[[emulator:server_error]]")]),
    "marker-nested": _jsonl([_request("a", "hi", metadata={"k": ["[[emulator:rate_limited]]"]})]),
    "marker-escaped": _LINE.replace(b"hello", b"\\u005b\\u005bemulator:invalid_request]]"),
    "unknown-marker": _jsonl([_request("a", "[[emulator:bogus]]")]),
    # Keys that shape the answer, even when null.
    **{
        f"shaping-{key}": _jsonl([_request("a", "hi", **{key: value})])
        for key, value in [
            ("max_tokens", 3), ("max_tokens", None), ("max_completion_tokens", 5), ("n", 2),
            ("stop", ["l"]), ("response_format", {"type": "json_object"}),
            ("tools", [{"type": "function", "function": {"name": "f"}}]), ("tool_choice", "auto"),
        ]
    },
    # Messages that are not [user] or [system, user] with string contents.
    "three-turns": _body_edit(lambda b: b["messages"].insert(0, {"role": "user", "content": "x"})),
    "assistant-first": _body_edit(lambda b: b["messages"].insert(0, {"role": "assistant"})),
    "system-only": _body_edit(lambda b: b["messages"][0].update(role="system")),
    "parts": _body_edit(lambda b: b["messages"][0].update(content=[{"type": "text", "text": "x"}])),
    "null-content": _body_edit(lambda b: b["messages"][0].update(content=None)),
    "null-system": _body_edit(lambda b: b["messages"].insert(0, {"role": "system"})),
    "no-messages": _body_edit(lambda b: b["messages"].clear()),
    "null-messages": _body_edit(lambda b: b.update(messages=None)),
    "null-message": _body_edit(lambda b: b["messages"].insert(0, None)),
    "null-body": _edited(lambda r: r.update(body=None)),
    # The general path's validation failures.
    "bad-json": _LINE + b"{not json\n",
    "array-line": _LINE + b"[1, 2]\n",
    "missing-id": _edited(lambda r: r.pop("custom_id")),
    "empty-id": _edited(lambda r: r.update(custom_id="")),
    "numeric-id": _edited(lambda r: r.update(custom_id=2)),
    "duplicate-id": _edited(lambda r: r.update(custom_id="a")),
    "method": _edited(lambda r: r.update(method="GET")),
    "url": _edited(lambda r: r.update(url="/v1/embeddings")),
    "model-mismatch": _body_edit(lambda b: b.update(model="other")),
    "empty-model": _jsonl([_request("a", "hi", model="")]),
    "numeric-model": _body_edit(lambda b: b.update(model=4)),
    "empty-file": b"",
    "only-blank-lines": b"\n \n\t\n",
    # Lines Arrow would read differently from json.loads, or might.
    "blank-line-inside": _TWO.replace(b"\n", b"\n \n", 1),
    "object-across-lines": _TWO.replace(b'"method": "POST", "url"', b'"method": "POST",\n"url"', 1),
    "objects-across-and-on-lines": _LINE.replace(b'"body": ', b'"body":\n')
    + _TWO.replace(b'"a"', b'"c"'),
    "pretty-printed": json.dumps(_request("a", "hi"), indent=2).encode() + b"\n",
    "indented-line": b"  " + _LINE,
    "bom": b"\xef\xbb\xbf" + _LINE,
    "two-objects-one-line": _LINE.rstrip() + b" " + _LINE.replace(b'"a"', b'"b"') + b"\n",
    "cr-separated": _LINE.rstrip() + b"\r" + _LINE.replace(b'"a"', b'"b"'),
    "form-feed-after": _LINE.rstrip() + b"\x0c\n",
    "nul-after": _LINE.rstrip() + b"\x00\n",
    "lone-surrogate": _LINE.replace(b"hello", b"\\ud800"),
    "invalid-utf8": _LINE.replace(b"hello", b"\xff"),
    "encoded-surrogate": _LINE.replace(b"hello", b"\xed\xa0\x80"),
    "huge-number": _LINE.replace(b"}]}", b'}], "temperature": 1e400}'),
    "duplicate-key": _LINE.replace(b'"custom_id": "a"', b'"custom_id": "z", "custom_id": "a"'),
    "duplicate-nested-key": _LINE.replace(b'"content"', b'"content": "x", "content"'),
    "duplicate-escaped-key": _LINE.replace(b'"content"', b'"content": "x", "\\u0063ontent"'),
    **{
        f"number-{token}": _LINE.replace(b"}]}", b"}], \"temperature\": " + token.encode() + b"}")
        for token in ("Inf", "-Inf", "-NaN", "NaN", "Infinity")
    },
    "nested-number-inf": _LINE.replace(b'"url"', b'"x": [{"y": Inf}], "url"'),
    "deep": _jsonl([_request("a", "hi", deep=json.loads("[" * 40 + "]" * 40))]),
    "mixed-list": _jsonl([_request("a", "x", metadata={"k": ["v", 1]})]),
    "changing-type": _jsonl([_request("a", "x", seed=1), _request("b", "y", seed="hot")]),
}  # fmt: skip


@pytest.mark.parametrize("data", list(_DECLINED.values()), ids=list(_DECLINED))
def test_unusual_files_are_declined(tmp_path: Path, data: bytes) -> None:
    assert _whole(tmp_path, data) is None
    assert _by_line(tmp_path, data, whole_file=True) == _by_line(tmp_path, data)


def test_too_many_requests_are_declined(tmp_path: Path) -> None:
    assert _whole(tmp_path, _TWO, max_requests=1) is None
    assert _whole(tmp_path, _TWO, max_requests=2) is not None


def test_lines_longer_than_a_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_openai_vector, "_BLOCK_BYTES", 4096)
    # Arrow reads a long first line into a block of its own (after an empty one) ...
    _assert_pinned(tmp_path, _jsonl([_request("a", "x" * 5000), _request("b", "short")]))
    # ... but may refuse one that straddles two blocks: then the line path answers.
    data = _jsonl([_request("a", "x" * 5000), _request("b", "short"), _request("c", "y " * 4000)])
    whole = _whole(tmp_path, data)
    assert whole is None or whole == _by_line(tmp_path, data)


def test_fault_rates_keep_the_line_path(tmp_path: Path) -> None:
    faults = RequestFaults(rates=((Fault.SERVER_ERROR, 0.5),), seed=3)
    data = _jsonl(_rows())
    whole = _by_line(tmp_path, data, whole_file=True, faults=faults)
    assert whole == _by_line(tmp_path, data, faults=faults)
    assert 0 < sum(whole[0]["ok"]) < len(_PROMPTS)


def test_prepare_answers_a_plain_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[bool] = []

    def spy(src: Path, **kwargs: Any) -> Any:
        plan = prepare_plain_chat(src, **kwargs)
        taken.append(plan is not None)
        return plan

    monkeypatch.setattr(_openai_vector, "prepare_plain_chat", spy)
    whole = _by_line(tmp_path, _TWO, whole_file=True)
    assert taken == [True]
    assert whole == _by_line(tmp_path, _TWO)
