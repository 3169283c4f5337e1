"""Guards over HTTP, both sides: the client the pipeline uses for ``remote:`` policy entries, and the small
app ``aiguardian guard-service NAME`` serves one guard with.

Wire format: ``POST <url>/check`` with ``{"text", "direction", "messages", "sources", "system_prompt",
"model", "route"}``; the answer is ``{"verdict": {"guard", "action", "score", "reason_codes", "findings",
"elapsed_ms"}}``. ``GET <url>/healthz`` answers ``{"status": "ok", "guard": NAME}``. With
``AIG_GUARD_SERVICE_TOKEN`` set, both sides use ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import orjson
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aiguardian.core.errors import ReasonCode
from aiguardian.guards.base import Action, Direction, Finding, Guard, GuardContext, Verdict
from aiguardian.guards.policy import Entry, PolicyError

if TYPE_CHECKING:
    from aiguardian.settings import Settings

log = structlog.get_logger("aiguardian.guards")

_MAX_BODY = 10 * 1024 * 1024


def context_json(context: GuardContext) -> bytes:
    return orjson.dumps(
        {
            "text": context.text,
            "direction": context.direction.value,
            "messages": context.messages,
            "sources": context.sources,
            "system_prompt": context.system_prompt,
            "model": context.model,
            "route": context.route,
        }
    )


def context_from(body: Any) -> GuardContext:
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        raise ValueError("the body needs `text` (a string)")
    messages = body.get("messages") or []
    sources = body.get("sources") or []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError("`messages` must be a list of objects")
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise ValueError("`sources` must be a list of strings")
    return GuardContext(
        text=body["text"],
        direction=Direction(body.get("direction") or "input"),
        messages=messages,
        sources=sources,
        system_prompt=body.get("system_prompt"),
        model=body.get("model"),
        route=body.get("route"),
    )


def verdict_from(data: Any, label: str) -> Verdict:
    """A verdict from a guard service's answer; anything malformed raises ``ValueError``."""
    if not isinstance(data, dict):
        raise ValueError("no verdict object")
    findings = []
    for item in data.get("findings") or []:
        if isinstance(item, dict) and isinstance(item.get("type"), str):
            findings.append(
                Finding(
                    type=item["type"],
                    start=item.get("start"),
                    end=item.get("end"),
                    score=float(item.get("score", 1.0)),
                )
            )
    codes = data.get("reason_codes") or []
    if not isinstance(codes, list):
        raise ValueError("reason_codes is not a list")
    return Verdict(
        guard=label,
        action=Action(data["action"]),
        score=min(1.0, max(0.0, float(data.get("score", 0.0)))),
        reason_codes=[str(c) for c in codes],
        findings=findings,
    )


class RemoteGuards:
    """One pooled aiohttp session for every remote guard of this process."""

    def __init__(self, token: str | None = None) -> None:
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def check(self, entry: Entry, context: GuardContext) -> Verdict:
        """The remote verdict, or a failure verdict (``GUARD_TIMEOUT``, ``GUARD_UNAVAILABLE``); never raises."""
        from aiguardian.guards.pipeline import failure

        assert entry.remote is not None
        url = entry.remote.url.rstrip("/") + "/check"
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        started = time.perf_counter()
        try:
            timeout = aiohttp.ClientTimeout(total=entry.timeout_s)
            async with self._client().post(
                url, data=context_json(context), headers=headers, timeout=timeout
            ) as response:
                raw = await response.read()
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
            verdict = verdict_from(orjson.loads(raw).get("verdict"), entry.label)
        except TimeoutError:
            elapsed = (time.perf_counter() - started) * 1000
            log.warning("remote guard timed out", guard=entry.label, url=entry.remote.url)
            return failure(entry, ReasonCode.GUARD_TIMEOUT, elapsed)
        except (aiohttp.ClientError, ValueError, KeyError, AttributeError, orjson.JSONDecodeError) as exc:
            elapsed = (time.perf_counter() - started) * 1000
            log.warning(
                "remote guard unavailable", guard=entry.label, url=entry.remote.url, error=type(exc).__name__
            )
            return failure(entry, ReasonCode.GUARD_UNAVAILABLE, elapsed)
        verdict.elapsed_ms = (time.perf_counter() - started) * 1000
        return verdict

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def guard_service_app(guard: Guard, label: str, token: str | None = None) -> Starlette:
    """The HTTP app of ``aiguardian guard-service``: one guard, ``POST /check`` and ``GET /healthz``."""

    def authorized(request: Request) -> bool:
        if not token:
            return True
        presented = request.headers.get("authorization", "").removeprefix("Bearer ")
        return hmac.compare_digest(presented.encode(), token.encode())

    def error(status: int, code: str, message: str) -> Response:
        body = {"error": {"code": code, "message": message}}
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    async def check(request: Request) -> Response:
        if not authorized(request):
            return error(
                401, ReasonCode.AUTH_INVALID.value, "send Authorization: Bearer <guard service token>"
            )
        raw = await request.body()
        if len(raw) > _MAX_BODY:
            return error(413, ReasonCode.PAYLOAD_TOO_LARGE.value, "the body is too large")
        try:
            context = context_from(orjson.loads(raw))
        except (orjson.JSONDecodeError, ValueError) as exc:
            return error(422, ReasonCode.VALIDATION_ERROR.value, str(exc))
        started = time.perf_counter()
        try:
            if guard.cpu_bound:
                verdict = await anyio.to_thread.run_sync(guard.check, context)
            else:
                verdict = guard.check(context)
        except Exception as exc:
            log.warning("guard failed", guard=label, error=type(exc).__name__)
            return error(500, ReasonCode.GUARD_ERROR.value, "the guard failed")
        verdict.guard = label
        verdict.elapsed_ms = (time.perf_counter() - started) * 1000
        return Response(orjson.dumps({"verdict": verdict.as_dict()}), media_type="application/json")

    async def healthz(_request: Request) -> Response:
        return Response(orjson.dumps({"status": "ok", "guard": label}), media_type="application/json")

    return Starlette(routes=[Route("/check", check, methods=["POST"]), Route("/healthz", healthz)])


class GuardServiceError(Exception):
    """``aiguardian guard-service`` cannot start; the message says why."""


def serve(name: str, *, host: str, port: int, options: str | None, settings: Settings) -> None:
    """Build the guard named ``name`` (a registry name, a name from the policy file's ``guards:``, or
    ``module:Class``) with ``options`` (a JSON object) and serve it until stopped."""
    import uvicorn

    from aiguardian.core.logging import configure_logging
    from aiguardian.guards.loader import GuardLoadError, build
    from aiguardian.guards.service import read_policy

    try:
        names = read_policy(settings.guards_policy_file).names()
    except PolicyError as exc:
        raise GuardServiceError(str(exc)) from None
    target = names.get(name) or (name if ":" in name else None)
    if target is None:
        raise GuardServiceError(f"unknown guard {name!r}; one of {', '.join(sorted(names))}, or module:Class")
    try:
        parsed = orjson.loads(options) if options else {}
    except orjson.JSONDecodeError as exc:
        raise GuardServiceError(f"--options is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise GuardServiceError("--options must be a JSON object, e.g. '{\"threshold\": 0.8}'")
    try:
        guard = build(target, parsed)
    except GuardLoadError as exc:
        raise GuardServiceError(str(exc)) from None
    configure_logging(settings.log_level, settings.log_format)
    label = name.rpartition(":")[2]
    token = settings.guard_service_token.get_secret_value() if settings.guard_service_token else None
    log.info("guard service starting", guard=label, host=host, port=port, token_required=bool(token))
    uvicorn.run(
        guard_service_app(guard, label, token), host=host, port=port, log_config=None, server_header=False
    )
