"""Typed events: their shape on the bus, who owns them, topic patterns, and in-order publishing from code
that cannot await (on the in-process bus and across processes through Redis)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI

from aiguardian.conversations import service
from aiguardian.conversations.schemas import ConversationCreate
from aiguardian.core import events
from aiguardian.core.bus import EventBus, MemoryBus, RedisBus
from aiguardian.core.clock import utc_now
from aiguardian.core.middleware import RequestRecord
from aiguardian.realtime.hub import expand
from tests.conftest import REDIS_URL, Account
from tests.realtime.conftest import Live, next_message, open_socket


def _record(actor: str | None) -> RequestRecord:
    return RequestRecord(
        trace_id="t1",
        started_at=utc_now(),
        method="GET",
        path="/api/v1/auth/me",
        route="/api/v1/auth/me",
        status_code=200,
        latency_ms=1.5,
        client_ip="127.0.0.1",
        session_id=None,
        actor=actor,
        reason_codes=["X"],
    )


@pytest.mark.parametrize(
    ("actor", "owner"),
    [("user:u1", "u1"), ("user:u1/key:k9", "u1"), ("login:a@b.c", None), (None, None)],
)
def test_a_request_event_belongs_to_the_user_who_made_it(actor: str | None, owner: str | None) -> None:
    payload = events.RequestCompleted.from_record(_record(actor)).payload()
    assert payload["user_id"] == owner
    assert events.owner_of(payload) == owner
    assert payload["trace_id"] == "t1"
    assert payload["http_status"] == 200
    assert payload["at"].endswith("Z")
    assert "name" not in payload  # the topic is the channel, not a field


def test_every_topic_has_one_event_class() -> None:
    names = [
        value.name
        for key, value in vars(events).items()
        if isinstance(value, type) and issubclass(value, events.Event) and value is not events.Event
        if not key.startswith("_")
    ]
    assert sorted(names) == sorted(events.TOPICS)


def test_topic_patterns() -> None:
    assert expand("*") == frozenset(events.TOPICS)
    assert expand("guard.*") == {"guard.blocked", "guard.warned", "guard.drift"}
    assert expand("usage.updated") == {"usage.updated"}
    for bad in ("guard", "nope.*", "*.blocked", "request.completed.*", ""):
        with pytest.raises(ValueError, match="unknown topic"):
            expand(bad)


@pytest.fixture(params=["memory"] + (["redis"] if REDIS_URL else []))
async def buses(request: pytest.FixtureRequest) -> AsyncIterator[tuple[EventBus, EventBus]]:
    """A publishing bus and a subscribing one: the same in memory, two processes' worth on Redis."""
    if request.param == "memory":
        bus = MemoryBus()
        yield bus, bus
        return
    assert REDIS_URL is not None
    namespace = f"evtest-{uuid.uuid4().hex[:8]}"
    publisher, subscriber = RedisBus(REDIS_URL, namespace), RedisBus(REDIS_URL, namespace)
    await publisher.start()
    await subscriber.start()
    yield publisher, subscriber
    await publisher.close()
    await subscriber.close()


async def test_emit_publishes_later_and_in_order(buses: tuple[EventBus, EventBus]) -> None:
    publisher, subscriber = buses
    got: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    def inbox(_topic: str, payload: dict[str, Any]) -> None:
        got.append(payload)
        if len(got) == 200:
            arrived.set()

    subscriber.on("usage.updated", inbox)
    for n in range(200):
        events.emit(
            publisher,
            events.UsageUpdated(
                user_id="u", trace_id=str(n), model="m", prompt_tokens=n, completion_tokens=0, cost_usd="0"
            ),
        )
    assert got == []  # nothing on the caller's path
    await events.drain(publisher)
    async with asyncio.timeout(10):
        await arrived.wait()
    assert [p["trace_id"] for p in got] == [str(n) for n in range(200)]


async def test_conversation_messages_reach_their_owner(app: FastAPI, live: Live, member: Account) -> None:
    ws = await open_socket(live, headers=member.headers, topics=["conversation.*"])
    db, bus = app.state.runtime.db, app.state.runtime.bus
    conversation = await service.create_conversation(
        db, service.Viewer(member.id), ConversationCreate(model="m")
    )
    long_answer = "word " * 200
    stored = await service.add_messages(
        db, bus, conversation.id, [("user", "hi", None), ("assistant", long_answer, None)]
    )
    first, second = await next_message(ws), await next_message(ws)
    assert first["topic"] == "conversation.message"
    assert {
        k: first["data"][k]
        for k in ("user_id", "conversation_id", "message_id", "role", "preview", "truncated")
    } == {
        "user_id": member.id,
        "conversation_id": conversation.id,
        "message_id": stored[0].id,
        "role": "user",
        "preview": "hi",
        "truncated": False,
    }
    assert second["data"]["message_id"] == stored[1].id
    assert second["data"]["truncated"] is True
    assert len(second["data"]["preview"]) == service.PREVIEW_CHARS
