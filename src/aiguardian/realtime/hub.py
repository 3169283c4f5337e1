"""The hub: every WebSocket and SSE subscriber of this process, and the delivery of bus events to them.

The hub listens on the bus for every topic of :mod:`aiguardian.core.events`. An event goes to the
subscribers that asked for its topic and may see it: its owner (``user_id``) and the admins (an admin's
credential with the ``admin`` scope, as for every admin right). It is serialised once, whoever receives it.

Each subscriber has a bounded queue. Delivery never waits: a subscriber whose queue is full is too slow to
keep up and is disconnected (:data:`SLOW_CONSUMER`) instead of holding ever more memory.

One task per process keeps the subscribers alive: every ``ping_seconds`` it pings the WebSocket
subscribers that were sent nothing since the last tick and checks every subscriber's credential again (it is
cached: cheap). Credentials are also checked at once when the identity feature says a user, a key or a
session changed, so a revoked key, an expired token or a disabled account loses its sockets too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from functools import cached_property
from typing import Any

import orjson
import structlog
from fastapi.sse import ServerSentEvent

from aiguardian.core.bus import EventBus
from aiguardian.core.errors import AIGError, ReasonCode, ServiceUnavailable
from aiguardian.core.events import TOPICS, owner_of
from aiguardian.identity.service import KEY_CHANGED, SESSIONS_REVOKED, USER_CHANGED, Identity, Principal

log = structlog.get_logger("aiguardian.realtime")

# WebSocket close codes (the same numbers end an SSE stream, in its last `close` event).
POLICY_VIOLATION = 1008  # no credential, a bad, expired or revoked one, or one without the read scope
UNSUPPORTED_DATA = 1003  # a binary frame
MESSAGE_TOO_BIG = 1009  # a client message over MAX_CLIENT_MESSAGE characters
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013  # too many connections on this process, or connection attempts from this IP
SLOW_CONSUMER = 4008  # the client did not read its events fast enough; its queue was full
GOING_AWAY = 1001  # the server is shutting down
CLIENT_GONE = 0  # not a close code: the client went away first, there is nothing to send

MAX_CLIENT_MESSAGE = 16_384
PING = '{"type":"ping"}'

_PREFIXES = frozenset(topic.rsplit(".", 1)[0] for topic in TOPICS)


def expand(pattern: str) -> frozenset[str]:
    """The topics a pattern names: a topic, ``*`` for all of them, or ``<prefix>.*`` (``guard.*``)."""
    if pattern == "*":
        return frozenset(TOPICS)
    if pattern.endswith(".*") and pattern[:-2] in _PREFIXES:
        prefix = pattern[:-1]
        return frozenset(topic for topic in TOPICS if topic.startswith(prefix))
    if pattern in TOPICS:
        return frozenset((pattern,))
    raise ValueError(
        f"unknown topic {pattern!r}; topics: {', '.join(TOPICS)}; or '*', or a prefix like 'guard.*'"
    )


def sees_everything(principal: Principal) -> bool:
    return principal.is_admin and "admin" in principal.scopes


class Delivery:
    """One event as it reaches this process's subscribers: serialised once, for each transport, on demand."""

    def __init__(self, topic: str, payload: dict[str, Any]) -> None:
        self.topic = topic
        self.payload = payload

    @cached_property
    def data(self) -> str:
        return orjson.dumps(self.payload).decode()

    @cached_property
    def ws(self) -> str:
        return f'{{"type":"event","topic":"{self.topic}","data":{self.data}}}'

    @cached_property
    def sse(self) -> ServerSentEvent:
        return ServerSentEvent(event=self.topic, raw_data=self.data)


class Subscriber:
    """One connected client: who it is, the topics it asked for, and what waits to be sent to it."""

    def __init__(self, principal: Principal, credential: str, queue_max: int, *, pings: bool) -> None:
        self.principal = principal
        self.credential = credential
        self.pings = pings  # a WebSocket: pinged when quiet (SSE streams get FastAPI's keepalive comments)
        self.patterns: set[str] = set()
        self.topics: frozenset[str] = frozenset()
        # Items are deliveries, or (WebSocket only) answers to the client's own messages, ready to send.
        self.queue: asyncio.Queue[Delivery | str | None] = asyncio.Queue(queue_max)
        self.quiet = False  # nothing was offered since the hub's last keepalive tick
        self.close_code: int | None = None
        self.close_reason = ""

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    def subscribe(self, patterns: Iterable[str]) -> None:
        """Add patterns; raises ValueError, and changes nothing, if one names no topic."""
        patterns = list(patterns)
        topics = set(self.topics)
        for pattern in patterns:
            topics |= expand(pattern)
        self.patterns.update(patterns)
        self.topics = frozenset(topics)

    def unsubscribe(self, patterns: Iterable[str]) -> None:
        self.patterns.difference_update(patterns)
        self.topics = frozenset().union(*(expand(pattern) for pattern in self.patterns))

    def offer(self, item: Delivery | str) -> None:
        if self.close_code is not None:
            return
        self.quiet = False
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.kick(SLOW_CONSUMER, "slow consumer")

    def kick(self, code: int, reason: str) -> None:
        """End this subscription. Whatever serves it stops after the item it is sending now, if any."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        # None wakes a server waiting for the next item. A full queue means the server is busy sending, not
        # waiting: it sees the code when it looks for the next.
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    async def next(self) -> Delivery | str | None:
        """The next item to send; None once the subscription has ended (then ``close_code`` says why)."""
        if self.close_code is not None:
            return None
        return await self.queue.get()


class Hub:
    def __init__(
        self, bus: EventBus, identity: Identity, *, queue_max: int, max_connections: int, ping_seconds: float
    ) -> None:
        self.identity = identity
        self.queue_max = queue_max
        self.max_connections = max_connections
        self.ping_seconds = ping_seconds
        self._keepalive: asyncio.Task[None] | None = None
        self._subscribers: set[Subscriber] = set()
        self._admins: set[Subscriber] = set()
        self._by_user: dict[str, set[Subscriber]] = {}
        self._rechecks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.slow_consumers = 0
        for topic in TOPICS:
            bus.on(topic, self._deliver)
        bus.on(USER_CHANGED, self._user_changed)
        bus.on(KEY_CHANGED, self._credentials_changed)
        bus.on(SESSIONS_REVOKED, self._credentials_changed)

    @property
    def connections(self) -> int:
        return len(self._subscribers)

    @property
    def subscribers(self) -> frozenset[Subscriber]:
        return frozenset(self._subscribers)

    @property
    def full(self) -> bool:
        return len(self._subscribers) >= self.max_connections

    def subscriber(self, principal: Principal, credential: str, *, pings: bool) -> Subscriber:
        return Subscriber(principal, credential, self.queue_max, pings=pings)

    def start(self) -> None:
        self._keepalive = asyncio.get_running_loop().create_task(
            self._keep_alive(), name="realtime-keepalive"
        )

    async def close(self) -> None:
        for subscriber in list(self._subscribers):
            subscriber.kick(GOING_AWAY, "server shutting down")
        for task in [self._keepalive, *self._rechecks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def add(self, subscriber: Subscriber) -> bool:
        if self.full:
            return False
        self._subscribers.add(subscriber)
        self._index(subscriber)
        return True

    def remove(self, subscriber: Subscriber) -> None:
        if subscriber not in self._subscribers:
            return
        self._subscribers.discard(subscriber)
        self._unindex(subscriber)
        if subscriber.close_code == SLOW_CONSUMER:
            self.slow_consumers += 1

    def _index(self, subscriber: Subscriber) -> None:
        if sees_everything(subscriber.principal):
            self._admins.add(subscriber)
        else:
            self._by_user.setdefault(subscriber.user_id, set()).add(subscriber)

    def _unindex(self, subscriber: Subscriber) -> None:
        self._admins.discard(subscriber)
        own = self._by_user.get(subscriber.user_id)
        if own is not None:
            own.discard(subscriber)
            if not own:
                del self._by_user[subscriber.user_id]

    # -- delivery -------------------------------------------------------------------------------------------

    def _deliver(self, topic: str, payload: dict[str, Any]) -> None:
        owner = owner_of(payload)
        delivery: Delivery | None = None
        for group in (self._admins, self._by_user.get(owner, ()) if owner else ()):
            for subscriber in group:
                if topic in subscriber.topics:
                    delivery = delivery or Delivery(topic, payload)
                    subscriber.offer(delivery)
                    self.delivered += 1

    # -- keepalive and credentials --------------------------------------------------------------------------

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.ping_seconds)
            for subscriber in list(self._subscribers):
                if subscriber.quiet and subscriber.pings:
                    subscriber.offer(PING)
                subscriber.quiet = True
                try:
                    await self.recheck(subscriber)
                except Exception:
                    log.exception("credential re-check failed")

    async def recheck(self, subscriber: Subscriber) -> None:
        """End the subscription (1008) if its credential is no longer good."""
        try:
            principal = await self.identity.authenticate(subscriber.credential)
        except ServiceUnavailable:
            return  # the database is down for a moment: that says nothing against the credential
        except AIGError as exc:
            subscriber.kick(POLICY_VIOLATION, exc.reason_code.value)
            return
        self.reauthenticated(subscriber, principal)

    def reauthenticated(self, subscriber: Subscriber, principal: Principal) -> bool:
        """Take a newer view of the same user (a changed role, a fresh token); refuse a credential without
        the read scope."""
        if "read" not in principal.scopes:
            subscriber.kick(POLICY_VIOLATION, ReasonCode.SCOPE_MISSING.value)
            return False
        known = subscriber in self._subscribers
        if known:
            self._unindex(subscriber)
        subscriber.principal = principal
        if known:
            self._index(subscriber)
        return True

    def _recheck_soon(self, subscribers: Iterable[Subscriber]) -> None:
        for subscriber in subscribers:
            task = asyncio.get_running_loop().create_task(self.recheck(subscriber))
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)

    def _user_changed(self, _topic: str, payload: dict[str, Any]) -> None:
        user_id = payload.get("user_id")
        self._recheck_soon(s for s in list(self._subscribers) if s.user_id == user_id)

    def _credentials_changed(self, _topic: str, _payload: dict[str, Any]) -> None:
        # Rare (a key revoked, sessions signed out); the credentials are cached, so checking all is cheap.
        self._recheck_soon(list(self._subscribers))
