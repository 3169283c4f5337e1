"""Realtime events over a WebSocket (``/api/v1/ws``, also ``/ws``) and server-sent events (``/api/v1/events``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, WebSocket
from fastapi.sse import EventSourceResponse, ServerSentEvent

from aiguardian.core.errors import ServiceUnavailable, ValidationFailed
from aiguardian.core.events import TOPICS
from aiguardian.core.security import presented_credential
from aiguardian.identity.auth import Reader
from aiguardian.realtime.hub import TRY_AGAIN_LATER, Delivery, Hub, Subscriber, sees_everything
from aiguardian.realtime.session import Session

router = APIRouter(tags=["realtime"])


@router.websocket("/api/v1/ws")
@router.websocket("/ws")
async def websocket_events(websocket: WebSocket) -> None:
    await Session(websocket).run()


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


async def _subscriber(
    request: Request,
    principal: Reader,
    topics: Annotated[
        str,
        Query(
            max_length=2000,
            description=f"Comma-separated topics ({', '.join(TOPICS)}), '*' for all, or a prefix like 'guard.*'.",
        ),
    ] = "*",
) -> Subscriber:
    credential = presented_credential(request)
    assert credential is not None  # Reader has authenticated it
    hub = _hub(request)
    subscriber = hub.subscriber(principal, credential, pings=False)
    try:
        patterns = [part.strip() for part in topics.split(",") if part.strip()]
        if not patterns:
            raise ValueError("name at least one topic, or '*'")
        subscriber.subscribe(patterns)
    except ValueError as exc:
        raise ValidationFailed(
            f"query.topics: {exc}",
            details=[{"field": "query.topics", "message": str(exc), "type": "value_error"}],
        ) from None
    if hub.full:
        raise ServiceUnavailable("too many realtime connections on this process; retry shortly")
    return subscriber


@router.get("/api/v1/events", response_class=EventSourceResponse)
async def event_stream(
    request: Request, subscriber: Annotated[Subscriber, Depends(_subscriber)]
) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events: a `ready` event, then one event per delivery (its name is the topic, its data the
    event as JSON), `: ping` comments when quiet, and a last `close` event if the server ends the stream."""
    hub = _hub(request)
    if not hub.add(subscriber):
        yield ServerSentEvent(event="close", data={"code": TRY_AGAIN_LATER, "reason": "too many connections"})
        return
    try:
        principal = subscriber.principal
        yield ServerSentEvent(
            event="ready",
            data={
                "user_id": principal.user_id,
                "role": principal.role,
                "sees": "all" if sees_everything(principal) else "own",
                "subscribed": sorted(subscriber.patterns),
            },
        )
        while (item := await subscriber.next()) is not None and subscriber.close_code is None:
            if isinstance(item, Delivery):
                yield item.sse
        yield ServerSentEvent(
            event="close", data={"code": subscriber.close_code, "reason": subscriber.close_reason}
        )
    finally:
        hub.remove(subscriber)
