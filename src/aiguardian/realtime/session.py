"""One WebSocket session: authenticate, then answer the client's messages and send it its events.

Two tasks per connection: this one sends (everything the client gets goes through the subscriber's queue,
so answers and events keep their order and one bound covers both), a second one reads the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
import structlog
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from aiguardian.audit import service as audit_service
from aiguardian.audit.writer import AuditWriter
from aiguardian.conversations import chat
from aiguardian.conversations.schemas import ChatRequest
from aiguardian.core.clock import utc_now
from aiguardian.core.errors import AIGError, ReasonCode
from aiguardian.core.events import TOPICS
from aiguardian.core.ids import accept_request_id
from aiguardian.core.middleware import RequestRecord
from aiguardian.core.runtime import Runtime
from aiguardian.core.security import presented_credential
from aiguardian.identity.service import Identity, Principal
from aiguardian.realtime.hub import (
    CLIENT_GONE,
    INTERNAL_ERROR,
    MAX_CLIENT_MESSAGE,
    MESSAGE_TOO_BIG,
    POLICY_VIOLATION,
    SLOW_CONSUMER,
    TRY_AGAIN_LATER,
    UNSUPPORTED_DATA,
    Hub,
    Subscriber,
    sees_everything,
)
from aiguardian.realtime.schemas import Auth, Chat, Ping, Pong, Subscribe, Unsubscribe, client_message

log = structlog.get_logger("aiguardian.realtime")

# Seconds a close may wait for a client that does not read; then the session ends without it.
CLOSE_TIMEOUT = 5.0


def _frame(**fields: object) -> str:
    return orjson.dumps({k: v for k, v in fields.items() if v is not None or k == "id"}).decode()


def _error(message_id: str | int | None, code: ReasonCode, message: str) -> str:
    return _frame(type="error", id=message_id, code=code.value, message=message)


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "message"
    return f"{where}: {first.get('msg', 'invalid')}"


class Session:
    def __init__(self, websocket: WebSocket) -> None:
        self.ws = websocket
        state = websocket.app.state
        self.runtime: Runtime = state.runtime
        self.hub: Hub = state.hub
        self.identity: Identity = state.identity
        self.settings = self.runtime.settings
        self.started = time.perf_counter()
        self.started_at = utc_now()
        self.trace_id = accept_request_id(websocket.headers.get("x-request-id"))
        self.client_ip = websocket.client.host if websocket.client else "unknown"
        self.principal: Principal | None = None
        self.status = 101
        self.reason_codes: list[str] = []

    async def run(self) -> None:
        await self.ws.accept()
        try:
            subscriber = await self._authenticate()
            if subscriber is None:
                return
            if not self.hub.add(subscriber):
                self.status = 503
                await self._close(TRY_AGAIN_LATER, "too many connections")
                return
            try:
                await self._serve(subscriber)
            finally:
                self.hub.remove(subscriber)
        finally:
            self._audit()

    # -- authentication -------------------------------------------------------------------------------------

    async def _authenticate(self) -> Subscriber | None:
        credential = presented_credential(self.ws)
        message_id: str | int | None = None
        if credential is None:
            auth = await self._first_message()
            if auth is None:
                return None
            credential, message_id = auth.token, auth.id
        if not await self._within_ip_limit():
            return None
        try:
            principal = await self.identity.authenticate(credential)
        except AIGError as exc:
            await self._refuse(exc.reason_code, exc.status_code)
            return None
        self.principal = principal
        if "read" not in principal.scopes:
            await self._refuse(ReasonCode.SCOPE_MISSING, 403)
            return None
        subscriber = self.hub.subscriber(principal, credential, pings=True)
        subscriber.offer(self._ready(subscriber, message_id))
        return subscriber

    async def _first_message(self) -> Auth | None:
        try:
            async with asyncio.timeout(self.settings.realtime_auth_timeout_seconds):
                message = await self.ws.receive()
        except TimeoutError:
            await self._refuse(ReasonCode.AUTH_NOT_CONFIGURED, 401)
            return None
        if message["type"] == "websocket.disconnect":
            self.status = 401
            self.reason_codes = [ReasonCode.AUTH_NOT_CONFIGURED.value]
            return None
        text = message.get("text")
        try:
            parsed = client_message.validate_json(text) if text else None
        except ValidationError:
            parsed = None
        if not isinstance(parsed, Auth):
            await self._refuse(ReasonCode.AUTH_NOT_CONFIGURED, 401)
            return None
        return parsed

    async def _within_ip_limit(self) -> bool:
        if not self.settings.rate_limit_enabled:
            return True
        decision = await self.runtime.limiter.hit(self.settings.rate_limit_per_ip, f"ip:{self.client_ip}")
        if not decision.allowed:
            self.status = 429
            self.reason_codes = [ReasonCode.RATE_LIMITED.value]
            await self._close(TRY_AGAIN_LATER, ReasonCode.RATE_LIMITED.value)
        return decision.allowed

    async def _refuse(self, code: ReasonCode, http_status: int) -> None:
        self.status = http_status
        self.reason_codes = [code.value]
        await self._close(POLICY_VIOLATION, code.value)

    def _ready(self, subscriber: Subscriber, message_id: str | int | None) -> str:
        principal = subscriber.principal
        return _frame(
            type="ready",
            id=message_id,
            user_id=principal.user_id,
            role=principal.role,
            sees="all" if sees_everything(principal) else "own",
            topics=list(TOPICS),
            subscribed=sorted(subscriber.patterns),
        )

    # -- the session ----------------------------------------------------------------------------------------

    async def _serve(self, subscriber: Subscriber) -> None:
        reader = asyncio.get_running_loop().create_task(self._read(subscriber), name="ws-reader")
        try:
            await self._send(subscriber)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if subscriber.close_code not in (None, CLIENT_GONE):
            await self._close(subscriber.close_code, subscriber.close_reason)

    async def _send(self, subscriber: Subscriber) -> None:
        bound = self.settings.realtime_ping_seconds
        try:
            while (item := await subscriber.next()) is not None and subscriber.close_code is None:
                # A client that takes a whole ping interval to accept one frame is as slow as one whose
                # queue overflows; without this bound a client that stops reading would hold its task.
                async with asyncio.timeout(bound):
                    await self.ws.send_text(item if isinstance(item, str) else item.ws)
        except TimeoutError:
            subscriber.kick(SLOW_CONSUMER, "slow consumer")
        except (WebSocketDisconnect, WebSocketDisconnected):
            subscriber.kick(CLIENT_GONE, "")

    async def _read(self, subscriber: Subscriber) -> None:
        try:
            while subscriber.close_code is None:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    subscriber.kick(CLIENT_GONE, "")
                    return
                text = message.get("text")
                if text is None:
                    subscriber.kick(UNSUPPORTED_DATA, "send JSON text frames")
                elif len(text) > MAX_CLIENT_MESSAGE:
                    subscriber.kick(MESSAGE_TOO_BIG, f"messages have at most {MAX_CLIENT_MESSAGE} characters")
                else:
                    answer = await self._answer(subscriber, text)
                    if answer is not None:
                        subscriber.offer(answer)
        except (WebSocketDisconnect, WebSocketDisconnected):
            subscriber.kick(CLIENT_GONE, "")
        except Exception:
            log.exception("websocket reader failed", trace_id=self.trace_id)
            subscriber.kick(INTERNAL_ERROR, "internal error")

    async def _answer(self, subscriber: Subscriber, text: str) -> str | None:
        try:
            message = client_message.validate_json(text)
        except ValidationError as exc:
            return _error(None, ReasonCode.VALIDATION_ERROR, _first_error(exc))
        if isinstance(message, Ping):
            return _frame(type="pong", id=message.id)
        if isinstance(message, Pong):
            return None
        if isinstance(message, Subscribe):
            try:
                subscriber.subscribe(message.topics)
            except ValueError as exc:
                return _error(message.id, ReasonCode.VALIDATION_ERROR, str(exc))
            return _frame(type="subscribed", id=message.id, topics=sorted(subscriber.patterns))
        if isinstance(message, Unsubscribe):
            subscriber.unsubscribe(message.topics)
            return _frame(type="unsubscribed", id=message.id, topics=sorted(subscriber.patterns))
        if isinstance(message, Chat):
            return await self._chat(subscriber, message)
        return await self._reauthenticate(subscriber, message)

    async def _chat(self, subscriber: Subscriber, message: Chat) -> str | None:
        """A conversation turn, as ``POST /api/v1/chat`` runs it: ``chat.delta`` frames, then ``chat.done``
        with the stored message (or one ``error`` frame). One turn at a time per socket: the next message is
        read once this turn is answered."""
        principal = self.principal
        if principal is None or "chat" not in principal.scopes:
            return _error(message.id, ReasonCode.FORBIDDEN, "this credential lacks the chat scope")
        try:
            body = ChatRequest.model_validate(message.model_dump(exclude={"id", "type"}, exclude_none=True))
        except ValidationError as exc:
            return _error(message.id, ReasonCode.VALIDATION_ERROR, _first_error(exc))
        try:
            async for frame in chat.over_socket(self.ws.app, principal, body, self.trace_id):
                subscriber.offer(_frame(id=message.id, **frame))
        except AIGError as exc:
            code = getattr(exc, "code", None) or exc.reason_code.value
            reasons = getattr(exc, "reason_codes", None) or [code]
            return _frame(type="error", id=message.id, code=code, message=exc.message, reason_codes=reasons)
        return None

    async def _reauthenticate(self, subscriber: Subscriber, message: Auth) -> str | None:
        """A fresh credential for the same user, e.g. before the access token expires."""
        if not await self._within_ip_limit():
            subscriber.kick(TRY_AGAIN_LATER, ReasonCode.RATE_LIMITED.value)
            return None
        try:
            principal = await self.identity.authenticate(message.token)
        except AIGError as exc:
            subscriber.kick(POLICY_VIOLATION, exc.reason_code.value)
            return None
        if principal.user_id != subscriber.user_id:
            return _error(
                message.id, ReasonCode.BAD_REQUEST, "a connection stays with the user it signed in as"
            )
        subscriber.credential = message.token
        if not self.hub.reauthenticated(subscriber, principal):
            return None
        return self._ready(subscriber, message.id)

    # -- the end --------------------------------------------------------------------------------------------

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.ws.close(code, reason)

    def _audit(self) -> None:
        """One audit row per connection, like one per HTTP request: who, from where, for how long."""
        writer: AuditWriter | None = getattr(self.ws.app.state, "audit_writer", None)
        path = self.ws.url.path
        if writer is None or path in self.settings.audit_exclude_paths:
            return
        record = RequestRecord(
            trace_id=self.trace_id,
            started_at=self.started_at,
            method="GET",
            path=path,
            route=getattr(self.ws.scope.get("route"), "path", path),
            status_code=self.status,
            latency_ms=round((time.perf_counter() - self.started) * 1000, 3),
            client_ip=self.client_ip,
            session_id=(self.ws.headers.get("x-session-id") or "")[:128] or None,
            actor=self.principal.actor if self.principal else None,
            reason_codes=self.reason_codes,
        )
        writer.submit(audit_service.entry_from_request(record))
