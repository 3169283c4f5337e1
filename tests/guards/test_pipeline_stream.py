"""A chat stream screened as it passes: restored placeholders (even split across events), the check cadence,
the last check at the end, and bytes left alone when there is nothing to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.requests import Request

from aiguardian.core.bus import MemoryBus
from aiguardian.guards.chat import ChatGuard
from aiguardian.guards.pipeline import GuardBlocked
from aiguardian.guards.policy import parse
from aiguardian.guards.service import GuardService
from tests.conftest import make_settings

POLICY = """
guards:
  keyword: tests.fakes.guards:KeywordGuard
  email: tests.fakes.guards:EmailMask
policies:
  default:
    input: [email]
    output: []
    stream: [{guard: keyword, words: [forbidden], code: NOPE}]
    stream_every: 20
    stream_window: 50
  plain:
    input: []
    output: []
    stream: []
"""


def event(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def contents(data: bytes) -> list[str]:
    out = []
    for part in data.split(b"\n\n"):
        if part.startswith(b"data: {"):
            for choice in orjson.loads(part[6:])["choices"]:
                out.append(choice["delta"].get("content") or "")
    return out


async def chat_guard(tmp_path: Path, text: str, policy: str = "default") -> ChatGuard:
    service = GuardService(make_settings(tmp_path, "sqlite", None), MemoryBus())
    service.policies = parse(POLICY)
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    request = Request({**scope, "query_string": b"", "state": {}})
    payload = {"model": "m", "messages": [{"role": "user", "content": text}]}
    chat = ChatGuard(service, service.policies.named(policy), request, model="m", sources=None)
    await chat.check_input(payload)
    return chat


async def test_a_placeholder_split_across_events_is_restored_whole(tmp_path: Path) -> None:
    chat = await chat_guard(tmp_path, "mail ann@example.com")
    assert chat.upstream_messages[0]["content"] == "mail <EMAIL_1>"
    screen = chat.stream()
    out = [
        await screen.feed(event("Sent to <EMA")),
        await screen.feed(event("IL_1> today")),
        await screen.feed(event(finish="stop") + DONE),
    ]
    assert [contents(o) for o in out] == [["Sent to "], ["ann@example.com "], ["today"]]
    assert out[2].endswith(DONE)
    assert (await screen.finish(b"")) == b""


async def test_text_without_spaces_is_held_back_at_most_64_characters(tmp_path: Path) -> None:
    screen = (await chat_guard(tmp_path, "mail ann@example.com")).stream()
    first = contents(await screen.feed(event("x" * 200)))
    assert first == ["x" * 136]
    tail = await screen.finish(DONE)
    assert contents(tail) == ["x" * 64]  # sent before [DONE], as one more chunk
    assert tail.endswith(DONE)


async def test_stream_guards_check_every_n_characters_and_once_more_at_the_end(tmp_path: Path) -> None:
    screen = (await chat_guard(tmp_path, "hello")).stream()
    assert contents(await screen.feed(event("a harmless start of an answer, "))) == [
        "a harmless start of an answer, "
    ]
    assert contents(await screen.feed(event("then forbidden"))) == [
        "then forbidden"
    ]  # 14 < 20: not yet checked
    with pytest.raises(GuardBlocked) as caught:
        await screen.finish(event(finish="stop") + DONE)
    assert caught.value.code == "NOPE"
    assert b"[DONE]" not in caught.value.passed, "the stream does not end as if all was well"
    (verdict,) = screen.worst.values()
    assert verdict.reason_codes == ["NOPE"]


async def test_a_stream_with_nothing_to_do_passes_byte_for_byte(tmp_path: Path) -> None:
    screen = (await chat_guard(tmp_path, "mail ann@example.com", policy="plain")).stream()
    raw = event("hello ") + b": a comment\n\n" + event("world") + DONE
    assert await screen.feed(raw) == raw
