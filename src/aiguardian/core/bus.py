"""The event bus: in process by default, Redis pub/sub when ``REDIS_URL`` is set.

A publisher names a topic and a JSON-able payload; every subscriber of that topic, in this process or (with
Redis) in any process, gets it. Handlers run in the receiving process's event loop and must be quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
import structlog
from redis.asyncio import Redis

log = structlog.get_logger("aiguardian.bus")

Handler = Callable[[str, dict[str, Any]], Awaitable[None] | None]


class EventBus(Protocol):
    """What every bus backend offers. ``tests/contracts/test_bus.py`` holds each backend to it."""

    name: str

    def on(self, topic: str, handler: Handler) -> None: ...
    async def publish(self, topic: str, payload: dict[str, Any]) -> None: ...
    async def publish_many(self, messages: list[tuple[str, dict[str, Any]]]) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


class _Dispatcher:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)

    def on(self, topic: str, handler: Handler) -> None:
        self._handlers[topic].append(handler)

    async def dispatch(self, topic: str, payload: dict[str, Any]) -> None:
        for handler in self._handlers.get(topic, ()):
            try:
                result = handler(topic, payload)
                if result is not None:
                    await result
            except Exception:
                log.exception("event handler failed", topic=topic)


class MemoryBus(_Dispatcher):
    name = "memory"

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        await self.dispatch(topic, payload)

    async def publish_many(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        for topic, payload in messages:
            await self.dispatch(topic, payload)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisBus(_Dispatcher):
    """Redis pub/sub on ``<namespace>:bus:<topic>`` channels.

    If Redis is unreachable, ``publish`` still delivers in this process (so this process never serves stale
    state) and logs a warning; the listener reconnects by itself.
    """

    name = "redis"

    def __init__(self, url: str, namespace: str, *, timeout: float = 1.0, retry_seconds: float = 1.0) -> None:
        super().__init__()
        self._redis = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._listen_redis = Redis.from_url(url, socket_connect_timeout=timeout)
        self._prefix = f"{namespace}:bus:"
        self._retry_seconds = retry_seconds
        self._origin = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        message = orjson.dumps({"origin": self._origin, "payload": payload})
        await self.dispatch(topic, payload)
        try:
            await self._redis.publish(self._prefix + topic, message)
        except Exception as exc:
            log.warning("event not published to redis", topic=topic, error=type(exc).__name__)

    async def publish_many(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """Publish in order, in one round trip to Redis."""
        pipe = self._redis.pipeline(transaction=False)
        for topic, payload in messages:
            await self.dispatch(topic, payload)
            pipe.publish(self._prefix + topic, orjson.dumps({"origin": self._origin, "payload": payload}))
        try:
            await pipe.execute()
        except Exception as exc:
            log.warning("events not published to redis", count=len(messages), error=type(exc).__name__)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(), name="redis-bus")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=2.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose()
        await self._listen_redis.aclose()

    async def _listen(self) -> None:
        while True:
            try:
                async with self._listen_redis.pubsub() as pubsub:
                    await pubsub.psubscribe(self._prefix + "*")
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") != "pmessage":
                            continue
                        await self._deliver(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._subscribed.clear()
                log.warning("redis bus disconnected, retrying", error=type(exc).__name__)
                await asyncio.sleep(self._retry_seconds)

    async def _deliver(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        topic = (channel.decode() if isinstance(channel, bytes) else str(channel))[len(self._prefix) :]
        try:
            envelope = orjson.loads(message["data"])
        except orjson.JSONDecodeError:
            return
        if envelope.get("origin") == self._origin:
            return  # already delivered locally when published
        await self.dispatch(topic, envelope.get("payload") or {})


def build_bus(redis_url: str | None, namespace: str) -> MemoryBus | RedisBus:
    return RedisBus(redis_url, namespace) if redis_url else MemoryBus()
