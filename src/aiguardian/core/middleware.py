"""The outermost request layer (plain ASGI, no per-request objects beyond what it needs).

For every HTTP request it: assigns the request / trace id, refuses oversized bodies, answers anything
unexpected fail-closed, times the request, counts it in metrics, writes the access log line, and hands a
:class:`RequestRecord` to whoever listens (the audit log), without knowing who that is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import orjson
import structlog
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aiguardian.core import metrics
from aiguardian.core.clock import utc_now
from aiguardian.core.envelope import error_body
from aiguardian.core.errors import AIGError, InternalError, PayloadTooLarge
from aiguardian.core.ids import accept_request_id

log = structlog.get_logger("aiguardian.http")
# The standard library logger behind ``log``: asked first, a line below the level costs no event at all.
_access_log = logging.getLogger("aiguardian.http")

REQUEST_ID_HEADER = b"x-request-id"


@dataclass(slots=True)
class RequestRecord:
    trace_id: str
    started_at: datetime
    method: str
    path: str
    route: str
    status_code: int
    latency_ms: float
    client_ip: str | None
    session_id: str | None
    actor: str | None
    reason_codes: list[str] = field(default_factory=list)
    action: str | None = None
    target: str | None = None
    guards: list[dict[str, object]] | None = None  # verdict summaries, set by the guard pipeline


class _BodyTooLarge(Exception):
    pass


def error_response_parts(
    error: AIGError, request_id: str, path: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = orjson.dumps(
        error_body(path, error.status_code, error.reason_code.value, error.message, request_id, error.details)
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in error.headers.items()),
    ]
    return error.status_code, headers, body


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        on_complete: Callable[[RequestRecord], None] | None = None,
        admission: Callable[[], AIGError | None] | None = None,
        quiet_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_complete = on_complete
        self.admission = admission
        self.quiet_paths = quiet_paths
        # Each request's metric children: ``labels()`` looks them up under a lock on every call.
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        started_at = utc_now()
        request_id, session_id, content_length = self._read_headers(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = started
        structlog.contextvars.bind_contextvars(trace_id=request_id)
        id_header = (REQUEST_ID_HEADER, request_id.encode())
        response_started = False
        status_code = 500

        too_large = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started, status_code
            if too_large and not response_started:
                # The app caught our signal while parsing the body and answered 400; answer 413 instead.
                too_large_error = PayloadTooLarge(f"request body is larger than {self.max_body_bytes} bytes")
                state["reason_codes"] = [too_large_error.reason_code.value]
                status, headers, body = error_response_parts(too_large_error, request_id, scope["path"])
                response_started = True
                status_code = status
                await send(
                    {"type": "http.response.start", "status": status, "headers": [*headers, id_header]}
                )
                await send({"type": "http.response.body", "body": body})
                return
            if too_large:
                return
            if message["type"] == "http.response.start":
                response_started = True
                status_code = message["status"]
                extra = state.get("response_headers")
                headers = [*message.get("headers", []), id_header]
                if extra:
                    present = {name.lower() for name, _ in headers}
                    headers += [
                        (k.lower().encode(), v.encode())
                        for k, v in extra.items()
                        if k.lower().encode() not in present
                    ]
                message["headers"] = headers
            await send(message)

        received = 0

        async def receive_limited() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def refuse(error: AIGError) -> None:
            state["reason_codes"] = [error.reason_code.value]
            status, headers, body = error_response_parts(error, request_id, scope["path"])
            await send_with_id({"type": "http.response.start", "status": status, "headers": headers})
            await send_with_id({"type": "http.response.body", "body": body})

        try:
            # Probes and scrapes are not audited, so an audit backlog must not fail them.
            quiet = scope["path"] in self.quiet_paths
            refusal = self.admission() if self.admission is not None and not quiet else None
            if refusal is not None:
                await refuse(refusal)
            elif content_length is not None and content_length > self.max_body_bytes:
                await refuse(PayloadTooLarge(f"request body is larger than {self.max_body_bytes} bytes"))
            else:
                await self.app(scope, receive_limited, send_with_id)
        except _BodyTooLarge:
            if not response_started:
                await refuse(PayloadTooLarge(f"request body is larger than {self.max_body_bytes} bytes"))
        except Exception:
            log.exception("unhandled error", path=scope["path"], method=scope["method"])
            if not response_started:
                await refuse(InternalError("internal error; quote the trace id to find it in the log"))
            else:
                status_code = 500
        finally:
            self._finish(scope, state, started, started_at, request_id, session_id, status_code)
            structlog.contextvars.unbind_contextvars("trace_id")

    def _read_headers(self, scope: Scope) -> tuple[str, str | None, int | None]:
        request_id: str | None = None
        session_id: str | None = None
        content_length: int | None = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                request_id = value.decode("latin-1")
            elif name == b"x-session-id":
                session_id = value.decode("latin-1")[:128]
            elif name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = None
        return accept_request_id(request_id), session_id, content_length

    def _finish(
        self,
        scope: Scope,
        state: dict[str, object],
        started: float,
        started_at: datetime,
        request_id: str,
        session_id: str | None,
        status_code: int,
    ) -> None:
        elapsed = time.perf_counter() - started
        route_obj = scope.get("route")
        route = getattr(route_obj, "path", None) or "unmatched"
        method = scope["method"]
        path = scope["path"]
        series = self._series.get((method, route, status_code))
        if series is None:
            series = self._series[(method, route, status_code)] = (
                metrics.HTTP_REQUESTS.labels(method, route, str(status_code)),
                metrics.HTTP_LATENCY.labels(method, route),
            )
        series[0].inc()
        series[1].observe(elapsed)
        latency_ms = round(elapsed * 1000, 3)
        reasons = state.get("reason_codes")
        reason_codes = list(reasons) if isinstance(reasons, list) else []
        if path not in self.quiet_paths and _access_log.isEnabledFor(logging.INFO):
            log.info("request", method=method, path=path, status=status_code, latency_ms=latency_ms)
        if self.on_complete is not None:
            client = scope.get("client")
            actor = state.get("actor")
            action = state.get("audit_action")
            target = state.get("audit_target")
            guards = state.get("guard_verdicts")
            self.on_complete(
                RequestRecord(
                    trace_id=request_id,
                    started_at=started_at,
                    method=method,
                    path=path,
                    route=route,
                    status_code=status_code,
                    latency_ms=latency_ms,
                    client_ip=client[0] if client else None,
                    session_id=session_id,
                    actor=actor if isinstance(actor, str) else None,
                    reason_codes=reason_codes,
                    action=action if isinstance(action, str) else None,
                    target=target if isinstance(target, str) else None,
                    guards=guards if isinstance(guards, list) and guards else None,
                )
            )
