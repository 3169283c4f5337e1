"""One behaviour suite for the event bus backends: in process, and Redis pub/sub across processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

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


async def test_a_failing_handler_does_not_stop_the_others(pair: tuple[EventBus, EventBus]) -> None:
    publisher, subscriber = pair

    def broken(_topic: str, _payload: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    inbox = Inbox()
    subscriber.on("t", broken)
    subscriber.on("t", inbox)
    await publisher.publish("t", {"ok": True})
    await inbox.wait_for(1)
