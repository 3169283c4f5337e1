"""``/v1``: the OpenAI-compatible API. Errors here use OpenAI's format (see core/envelope.error_body)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from aiguardian.core.errors import ReasonCode
from aiguardian.gateway.deployments import DEMO_MODEL
from aiguardian.gateway.schemas import ChatCompletionRequest, EmbeddingsRequest, ModelCard, ModelList
from aiguardian.gateway.service import Gateway, Outcome, StreamUsage
from aiguardian.identity.auth import require_scope
from aiguardian.identity.service import Principal

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

Chatter = Annotated[Principal, Depends(require_scope("chat"))]


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def gateway_headers(request: Request, outcome: Outcome, cache: str = "miss") -> dict[str, str]:
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


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, principal: Chatter, gateway: GatewayDep
) -> Response:
    payload = body.model_dump(exclude_none=True)
    request.state.audit_action = "gateway.chat"
    request.state.audit_target = body.model
    if not body.stream:
        outcome = await gateway.chat(payload)
        return Response(
            orjson.dumps(outcome.body),
            media_type="application/json",
            headers=gateway_headers(request, outcome),
        )

    client_wants_usage = bool((body.stream_options or {}).get("include_usage"))
    payload["stream_options"] = {**(body.stream_options or {}), "include_usage": True}
    outcome, first, stream = await gateway.open_stream(payload)
    usage = StreamUsage(client_wants_usage)

    async def relay() -> AsyncIterator[bytes]:
        try:
            head = usage.feed(first)
            if head:
                yield head
            async for chunk in stream:
                out = usage.feed(chunk)
                if out:
                    yield out
            rest = usage.flush()
            if rest:
                yield rest
        except Exception as exc:
            yield _stream_error(f"the upstream stream broke: {getattr(exc, 'message', type(exc).__name__)}")
        finally:
            await stream.aclose()
            outcome.usage = usage.usage

    headers = gateway_headers(request, outcome)
    headers["Cache-Control"] = "no-cache"
    return StreamingResponse(relay(), media_type="text/event-stream", headers=headers)


@router.post("/embeddings", response_model=None)
async def embeddings(
    body: EmbeddingsRequest, request: Request, principal: Chatter, gateway: GatewayDep
) -> Response:
    request.state.audit_action = "gateway.embeddings"
    request.state.audit_target = body.model
    outcome = await gateway.embeddings(body.model_dump(exclude_none=True))
    return Response(
        orjson.dumps(outcome.body), media_type="application/json", headers=gateway_headers(request, outcome)
    )


@router.get("/models", response_model=ModelList)
async def models(principal: Chatter, gateway: GatewayDep) -> dict[str, Any]:
    cards = []
    for name in gateway.router.models():
        owner = "aiguardian-demo (offline, no LLM is called)" if name == DEMO_MODEL else "aiguardian"
        cards.append(ModelCard(id=name, owned_by=owner).model_dump())
    return {"object": "list", "data": cards}
