"""Typed events: what happened, and who may see it, carried by the event bus to every process.

Each event is a small frozen dataclass; its class names its topic (``GuardBlocked.name`` is
``"guard.blocked"``). On the bus it travels as a flat JSON object of its fields: ``user_id`` is its owner,
the one account besides the admins that may see it (``None``: admins only), and ``at`` is when it
happened (ISO 8601, UTC). That is the shape ``budget.exceeded`` and ``deployment.health`` were already
published in, so a subscriber reads every topic alike. ``realtime/`` delivers them over WebSocket and SSE.

Publishing is one call, from any feature::

    from aiguardian.core import events

    await events.publish(runtime.bus, events.GuardBlocked(
        user_id=principal.user_id, trace_id=trace_id, guard="trust", stage="input",
        reason_codes=["PROMPT_INJECTION"], score=0.97,
    ))

Code that cannot await (a sync callback) uses ``events.emit(bus, event)`` instead: the event is queued and
one task per bus publishes the queue in order, off the caller's path. Either way the events of one topic
from one process reach every subscriber, in this process or (through Redis) any other, in the order they
were published.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import structlog

from aiguardian.core.bus import EventBus
from aiguardian.core.clock import utc_now_iso

if TYPE_CHECKING:
    from aiguardian.core.middleware import RequestRecord

log = structlog.get_logger("aiguardian.events")

EventName = Literal[
    "request.completed",
    "guard.blocked",
    "guard.warned",
    "guard.drift",
    "budget.exceeded",
    "usage.updated",
    "conversation.message",
    "deployment.health",
    "audit.appended",
]
TOPICS: tuple[EventName, ...] = get_args(EventName)

# Events waiting in one bus's outbox (``emit``) before newer ones are dropped, with a warning.
OUTBOX_MAX = 10_000
_PUBLISH_BATCH = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    name: ClassVar[EventName]
    user_id: str | None  # the owner, who may see it besides the admins; None: admins only
    at: str = field(default_factory=utc_now_iso)

    def payload(self) -> dict[str, Any]:
        # Shallow on purpose: dataclasses.asdict deep-copies every field, several times the cost on the hot
        # path, and the values (str, numbers, lists of str) are not changed after the event is made.
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = _FIELD_NAMES[type(self)] = tuple(item.name for item in dataclasses.fields(self))
        return {name: getattr(self, name) for name in names}


_FIELD_NAMES: dict[type[Event], tuple[str, ...]] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCompleted(Event):
    name: ClassVar[EventName] = "request.completed"
    trace_id: str
    method: str
    path: str
    route: str
    http_status: int
    latency_ms: float
    reason_codes: list[str]
    actor: str | None

    @classmethod
    def from_record(cls, record: RequestRecord) -> RequestCompleted:
        return cls(
            user_id=user_of_actor(record.actor),
            trace_id=record.trace_id,
            method=record.method,
            path=record.path,
            route=record.route,
            http_status=record.status_code,
            latency_ms=record.latency_ms,
            reason_codes=list(record.reason_codes),
            actor=record.actor,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class _GuardVerdict(Event):
    trace_id: str
    guard: str
    stage: Literal["input", "output", "stream"]
    reason_codes: list[str]
    score: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardBlocked(_GuardVerdict):
    name: ClassVar[EventName] = "guard.blocked"


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardWarned(_GuardVerdict):
    name: ClassVar[EventName] = "guard.warned"


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardDrift(Event):
    name: ClassVar[EventName] = "guard.drift"
    trace_id: str
    conversation_id: str
    score: float
    threshold: float
    action: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetExceeded(Event):
    """A soft budget went over its limit (a hard one refuses the request instead)."""

    name: ClassVar[EventName] = "budget.exceeded"
    budget_id: str
    key_id: str | None
    trace_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageUpdated(Event):
    name: ClassVar[EventName] = "usage.updated"
    trace_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: str  # a decimal, as text: no float rounding on the way
    key_id: str | None = None
    saved_tokens: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationMessage(Event):
    """A message was added to a conversation. ``preview`` is the start of its text; GET the conversation for
    the rest."""

    name: ClassVar[EventName] = "conversation.message"
    conversation_id: str
    message_id: int
    role: str
    tokens: int
    preview: str
    truncated: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DeploymentHealth(Event):
    name: ClassVar[EventName] = "deployment.health"
    id: str
    model: str
    state: str
    previous: str
    error_rate: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditAppended(Event):
    """A batch of audit rows was stored: how many, the times of the first and last, and the chain's head."""

    name: ClassVar[EventName] = "audit.appended"
    count: int
    first_at: str
    last_at: str
    head_hash: str


def user_of_actor(actor: str | None) -> str | None:
    """The user id in an audit actor (``user:<id>`` or ``user:<id>/key:<key id>``); None for anyone else."""
    if actor is None or not actor.startswith("user:"):
        return None
    return actor[len("user:") :].split("/", 1)[0] or None


def owner_of(payload: dict[str, Any]) -> str | None:
    """Who may see an event as it came off the bus, besides the admins."""
    owner = payload.get("user_id")
    return owner if isinstance(owner, str) and owner else None


async def publish(bus: EventBus, event: Event) -> None:
    await bus.publish(event.name, event.payload())


def emit(bus: EventBus, event: Event) -> None:
    """Publish from code that cannot await: queued, and published in order by one task per bus."""
    outbox = _outboxes.get(bus)
    if outbox is None:
        outbox = _outboxes[bus] = _Outbox(bus)
    outbox.put(event)


async def drain(bus: EventBus, within: float = 5.0) -> None:
    """Publish what ``emit`` queued for ``bus``, then stop its task. Call before closing the bus."""
    outbox = _outboxes.pop(bus, None)
    if outbox is not None:
        await outbox.close(within)


class _Outbox:
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.queue: asyncio.Queue[Event] = asyncio.Queue(OUTBOX_MAX)
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0

    def put(self, event: Event) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(), name="events-outbox")
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("event outbox full; events dropped", dropped=self.dropped, topic=event.name)

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            # Under load events queue up while one is being published: send them together, one round trip.
            while len(batch) < _PUBLISH_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await self.bus.publish_many([(event.name, event.payload()) for event in batch])
            except Exception:
                log.exception("events not published", count=len(batch))
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def close(self, within: float) -> None:
        if self.task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.queue.join()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


_outboxes: weakref.WeakKeyDictionary[EventBus, _Outbox] = weakref.WeakKeyDictionary()
