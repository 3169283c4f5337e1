"""One behaviour suite for the event bus backends: in process, and Redis pub/sub across processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aiguardian.core import events
from aiguardian.core.bus import EventBus, MemoryBus, RedisBus
from tests.conftest import REDIS_URL

KINDS = ["memory"] + (["redis"] if REDIS_URL else [])


def make(kind: str, namespace: str) -> EventBus:
    if kind == "memory":
        return MemoryBus()
    assert REDIS_URL is not None
    return RedisBus(REDIS_URL, namespace)


@pytest.fixture(params=KINDS)
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[EventBus, EventBus]]:
    """Two buses that should see each other's events: the same object in memory, two clients on Redis."""
    namespace = f"bustest-{uuid.uuid4().hex[:8]}"
    first = make(request.param, namespace)
    second = first if request.param == "memory" else make(request.param, namespace)
    await first.start()
    if second is not first:
        await second.start()
    yield first, second
    await first.close()
    if second is not first:
        await second.close()


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.arrived = asyncio.Event()

    def __call__(self, topic: str, payload: dict[str, Any]) -> None:
        self.got.append((topic, payload))
        self.arrived.set()

    async def wait_for(self, count: int, seconds: float = 3.0) -> None:
        async with asyncio.timeout(seconds):
            while len(self.got) < count:
                self.arrived.clear()
                await self.arrived.wait()


async def test_subscriber_receives_published_payload(pair: tuple[EventBus, EventBus]) -> None:
    publisher, subscriber = pair
    inbox = Inbox()
    subscriber.on("identity.key_changed", inbox)
    await publisher.publish("identity.key_changed", {"key_hash": "abc"})
    await inbox.wait_for(1)
    assert inbox.got == [("identity.key_changed", {"key_hash": "abc"})]


async def test_publisher_sees_its_own_event_once(pair: tuple[EventBus, EventBus]) -> None:
    publisher, _ = pair
    inbox = Inbox()
    publisher.on("t", inbox)
    await publisher.publish("t", {"n": 1})
    await inbox.wait_for(1)
    await asyncio.sleep(0.2)
    assert inbox.got == [("t", {"n": 1})]


async def test_topics_are_separate_and_order_is_kept(pair: tuple[EventBus, EventBus]) -> None:
    publisher, subscriber = pair
    inbox = Inbox()
    subscriber.on("a", inbox)
    for n in range(50):
        await publisher.publish("b", {"n": n})
        await publisher.publish("a", {"n": n})
    await inbox.wait_for(50)
    assert [payload["n"] for _, payload in inbox.got] == list(range(50))
    assert {topic for topic, _ in inbox.got} == {"a"}


async def test_publish_many_keeps_order_across_topics(pair: tuple[EventBus, EventBus]) -> None:
    publisher, subscriber = pair
    inbox = Inbox()
    subscriber.on("a", inbox)
    subscriber.on("b", inbox)
    await publisher.publish_many([(("a", "b")[n % 2], {"n": n}) for n in range(40)])
    await inbox.wait_for(40)
    assert [payload["n"] for _, payload in inbox.got] == list(range(40))
    assert [topic for topic, _ in inbox.got] == [("a", "b")[n % 2] for n in range(40)]


async def test_emitted_events_arrive_once_in_order(pair: tuple[EventBus, EventBus]) -> None:
    publisher, subscriber = pair
    inbox = Inbox()
    subscriber.on(events.UsageUpdated.name, inbox)
    for n in range(300):  # queued faster than published: the outbox sends them in batches
        events.emit(
            publisher,
            events.UsageUpdated(
                user_id=f"u{n}", trace_id="t", model="m", prompt_tokens=1, completion_tokens=1, cost_usd="0"
            ),
        )
    await inbox.wait_for(300)
    await events.drain(publisher)
    await asyncio.sleep(0.1)
    assert [payload["user_id"] for _, payload in inbox.got] == [f"u{n}" for n in range(300)]


async def test_a_failing_handler_does_not_stop_the_others(pair: tuple[EventBus, EventBus]) -> None:
    publisher, subscriber = pair

    def broken(_topic: str, _payload: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    inbox = Inbox()
    subscriber.on("t", broken)
    subscriber.on("t", inbox)
    await publisher.publish("t", {"ok": True})
    await inbox.wait_for(1)
