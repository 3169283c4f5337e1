"""``/v1``: the OpenAI-compatible API. Errors here use OpenAI's format (see core/envelope.error_body)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from aiguardian.core.errors import ReasonCode
from aiguardian.core.http import audit
from aiguardian.gateway.cache import CachedAnswer, CachePlan, replay
from aiguardian.gateway.completions import admit as _admit
from aiguardian.gateway.completions import answer_text as _answer_text
from aiguardian.gateway.completions import streamed_text as _streamed_text
from aiguardian.gateway.deployments import DEMO_MODEL
from aiguardian.gateway.schemas import ChatCompletionRequest, EmbeddingsRequest, ModelCard, ModelList
from aiguardian.gateway.service import Gateway, Outcome, StreamUsage
from aiguardian.guards.chat import ChatGuard
from aiguardian.guards.pipeline import GuardBlocked
from aiguardian.guards.service import GuardService
from aiguardian.identity.auth import check_model, require_scope
from aiguardian.identity.service import Principal
from aiguardian.usage.routes import UsageDep
from aiguardian.usage.service import Call, UsageService

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

Chatter = Annotated[Principal, Depends(require_scope("chat"))]


async def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def gateway_headers(request: Request, outcome: Outcome, cache: str) -> dict[str, str]:
    elapsed_ms = (time.perf_counter() - request.state.started) * 1000
    return {
        "X-AIG-Overhead-Ms": f"{max(0.0, elapsed_ms - outcome.upstream_ms):.3f}",
        "X-AIG-Deployment": outcome.deployment.id,
        "X-AIG-Cache": cache,
        "X-AIG-Attempts": str(outcome.attempts),
    }


def _stream_error(message: str) -> bytes:
    body = {
        "error": {"message": message, "type": "api_error", "code": ReasonCode.UPSTREAM_STREAM_BROKEN.value}
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


class SettlingStreamingResponse(StreamingResponse):
    """Runs ``on_close`` however the response ends: finished, failed, or the client gone before the first
    byte (when the body generator never starts, so its own ``finally`` never runs)."""

    def __init__(self, *args: Any, on_close: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.on_close()


def _usage_headers(call: Call) -> dict[str, str]:
    headers = {"X-AIG-Cost": f"{call.cost:f}"}
    if call.warnings:
        headers["X-AIG-Budget-Warning"] = ",".join(call.warnings)
    return headers


def _cache_plan(
    request: Request, principal: Principal, gateway: Gateway, payload: dict[str, Any]
) -> CachePlan:
    return gateway.cache_plan(
        payload,
        user_id=principal.user_id,
        asked=request.headers.get("x-aig-cache"),
        cache_control=request.headers.get("cache-control"),
    )


async def _from_cache(
    request: Request, usage: UsageService, call: Call, hit: CachedAnswer, *, stream: bool, wants_usage: bool
) -> Response:
    """Answer from the answer cache: no upstream call, cost 0, the reservation released; the ledger row
    says what the hit saved."""
    await usage.finish(
        call,
        status="ok",
        cache_hit=True,
        usage=hit.usage,
        completion_text=_answer_text(hit.body) if hit.usage is None else None,
        provider=hit.provider,
        upstream_model=hit.upstream_model,
    )
    elapsed_ms = (time.perf_counter() - request.state.started) * 1000
    headers = {"X-AIG-Overhead-Ms": f"{elapsed_ms:.3f}", "X-AIG-Cache": "hit", "X-AIG-Attempts": "0"}
    headers.update(_usage_headers(call))
    if not stream:
        return Response(orjson.dumps(hit.body), media_type="application/json", headers=headers)
    events = replay(hit.body, wants_usage) + f": X-AIG-Cost {call.cost:f}\n\n".encode()
    return Response(events, media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})


async def _settled(
    request: Request,
    usage: UsageService,
    call: Call,
    pending: Awaitable[Outcome],
    cache: str = "off",
    screen: ChatGuard | None = None,
) -> Response:
    """Await a non-streamed call, settle its reservation whatever happens, answer with its body (after the
    output guards, when there are any: an answer they block is paid for, and not given)."""
    try:
        outcome = await pending
    except BaseException:
        await usage.finish(call, status="error")
        raise
    deployment = outcome.deployment
    blocked: GuardBlocked | None = None
    if screen is not None:
        try:
            await screen.check_answer(outcome.body)
        except GuardBlocked as exc:
            blocked = exc
    await usage.finish(
        call,
        status="blocked" if blocked else "ok",
        charge=True,
        usage=outcome.usage,
        completion_text=_answer_text(outcome.body) if outcome.usage is None else None,
        deployment=deployment.id,
        provider=deployment.provider,
        upstream_model=deployment.upstream_model,
    )
    if blocked is not None:
        raise blocked
    return Response(
        orjson.dumps(outcome.body),
        media_type="application/json",
        headers={**gateway_headers(request, outcome, cache), **_usage_headers(call)},
    )


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, principal: Chatter, gateway: GatewayDep, usage: UsageDep
) -> Response:
    payload = body.model_dump(exclude_none=True)
    audit(request, "gateway.chat", body.model)
    check_model(principal, body.model)  # first: a key limited to some models must not probe for others
    gateway.require_model(body.model)
    guards: GuardService = request.app.state.guards
    screen = guards.chat(request, payload, key_id=principal.key_id, user_id=principal.user_id)
    call = await _admit(request, principal, gateway, usage, payload, kind="chat", stream=body.stream)
    client_wants_usage = bool((body.stream_options or {}).get("include_usage"))
    try:  # before the cache lookup, so a cached answer is no way around them; redaction shapes the key
        await screen.check_input(payload)
        plan = _cache_plan(request, principal, gateway, payload)
        hit = await gateway.cached(plan)
        if hit is not None:
            await screen.check_answer(hit.body)
    except GuardBlocked:
        await usage.finish(call, status="blocked")  # nothing was sent upstream; the reservation is released
        raise
    if hit is not None:
        return await _from_cache(
            request, usage, call, hit, stream=body.stream, wants_usage=client_wants_usage
        )
    if not body.stream:
        return await _settled(request, usage, call, gateway.chat(payload, plan), plan.label, screen)

    payload["stream_options"] = {**(body.stream_options or {}), "include_usage": True}
    try:
        outcome, first, stream = await gateway.open_stream(payload)
    except BaseException:
        await usage.finish(call, status="error")
        raise
    usage_reader = StreamUsage(client_wants_usage)
    outward = screen.stream()
    relayed: list[bytes] = []
    completed = False
    stopped = False  # by an output guard

    async def settle() -> None:
        await stream.aclose()
        outward.conclude()
        deployment = outcome.deployment
        await usage.finish(
            call,
            # error: a broken upstream, or the client went away
            status="ok" if completed else "blocked" if stopped else "error",
            charge=True,
            usage=usage_reader.usage,
            completion_text=_streamed_text(relayed) if usage_reader.usage is None else None,
            deployment=deployment.id,
            provider=deployment.provider,
            upstream_model=deployment.upstream_model,
        )

    async def relay() -> AsyncIterator[bytes]:
        nonlocal completed, stopped
        try:
            relayed.append(first)
            head = await outward.feed(usage_reader.feed(first))
            if head:
                yield head
            async for chunk in stream:
                relayed.append(chunk)
                out = await outward.feed(usage_reader.feed(chunk))
                if out:
                    yield out
            rest = await outward.finish(usage_reader.flush())
            if rest:
                yield rest
            completed = True
            await gateway.remember_stream(plan, body.model, outcome, relayed, usage_reader.usage)
        except GuardBlocked as blocked:  # the last event says why; the upstream is closed in settle()
            stopped = True
            request.state.reason_codes = blocked.reason_codes
            yield blocked.sse_event(request.state.request_id)
        except Exception as exc:
            yield _stream_error(f"the upstream stream broke: {getattr(exc, 'message', type(exc).__name__)}")
        finally:
            outcome.usage = usage_reader.usage
            with anyio.CancelScope(shield=True):
                await settle()
        # The cost is known only now: an SSE comment (clients skip comments) carries it.
        yield f": X-AIG-Cost {call.cost:f}\n\n".encode()

    headers = gateway_headers(request, outcome, plan.label)
    headers["Cache-Control"] = "no-cache"
    if call.warnings:
        headers["X-AIG-Budget-Warning"] = ",".join(call.warnings)
    headers["X-AIG-Cost-Reserved"] = str(call.reserved_cost)
    return SettlingStreamingResponse(
        relay(), media_type="text/event-stream", headers=headers, on_close=settle
    )


@router.post("/embeddings", response_model=None)
async def embeddings(
    body: EmbeddingsRequest, request: Request, principal: Chatter, gateway: GatewayDep, usage: UsageDep
) -> Response:
    audit(request, "gateway.embeddings", body.model)
    check_model(principal, body.model)  # first: a key limited to some models must not probe for others
    payload = body.model_dump(exclude_none=True)
    gateway.require_model(body.model)
    call = await _admit(request, principal, gateway, usage, payload, kind="embeddings")
    return await _settled(request, usage, call, gateway.embeddings(payload))


@router.get("/models", response_model=ModelList)
async def models(principal: Chatter, gateway: GatewayDep) -> dict[str, Any]:
    cards = []
    for name in gateway.router.models():
        if not principal.may_use(name):
            continue
        owner = "aiguardian-demo (offline, no LLM is called)" if name == DEMO_MODEL else "aiguardian"
        cards.append(ModelCard(id=name, owned_by=owner).model_dump())
    return {"object": "list", "data": cards}
