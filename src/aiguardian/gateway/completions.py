"""One chat completion through the whole gateway pipeline, for callers other than ``/v1`` (conversations):
size and reserve (budget, context window), input guards with the caller's policy (redaction included),
answer cache, routing with retries and fallbacks, output guards (and the caller's redacted values put back),
settlement in the usage ledger under the caller's ids. Knows the request only for its id, path and state
(audit verdicts, guard warnings headers).

``admit`` and ``answer_text`` are shared with the ``/v1`` routes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request

from aiguardian.core.errors import AIGError
from aiguardian.gateway.service import Gateway
from aiguardian.guards import token_guard
from aiguardian.guards.chat import SOURCES_FIELD
from aiguardian.guards.pipeline import GuardBlocked
from aiguardian.guards.service import GuardService
from aiguardian.identity.auth import check_model
from aiguardian.identity.service import Principal
from aiguardian.usage import tokens
from aiguardian.usage.service import Call, UsageService


def answer_text(body: dict[str, Any] | None) -> str:
    parts = []
    for choice in (body or {}).get("choices") or []:
        content = (choice.get("message") or {}).get("content") if isinstance(choice, dict) else None
        if isinstance(content, str):
            parts.append(content)
    return "".join(parts)


def context_window(gateway: Gateway, usage: UsageService, model: str) -> int | None:
    """The model's context window: declared on its deployments, else known from the price data."""
    plan = gateway.router.plan(model)
    own = [d for d in plan if d.model == model]
    candidates: list[tuple[str, str]] = [(d.provider, d.upstream_model) for d in own]
    return usage.context_window(model, [d.context_window for d in own], candidates)


async def admit(
    request: Request,
    principal: Principal,
    gateway: Gateway,
    usage: UsageService,
    payload: dict[str, Any],
    *,
    kind: str,
    stream: bool = False,
) -> Call:
    """Size the request, check the context window, reserve its maximum cost. A refusal gets its ledger
    row (status ``blocked``) before it is raised; nothing has been sent upstream."""
    model = payload["model"]
    plan = gateway.router.plan(model)
    candidates: list[tuple[str, str]] = [(d.provider, d.upstream_model) for d in plan]
    ids = {"trace_id": request.state.request_id, "user_id": principal.user_id, "key_id": principal.key_id}
    started = time.perf_counter()
    try:
        if kind == "chat":
            own = [d for d in plan if d.model == model]
            window = usage.context_window(model, [d.context_window for d in own], candidates[: len(own)])
            prompt = await usage.fit_messages(payload["messages"], window)
            completion = usage.max_completion(payload, prompt, window)
        else:
            prompt, completion = await tokens.count_input_async(payload.get("input")), 0
        call = await usage.admit(
            **ids,
            model=model,
            stream=stream,
            prompt_tokens=prompt,
            max_completion=completion,
            candidates=candidates,
        )
    except AIGError as error:
        token_guard.report(request, started, error=error)  # TokenGuard, as the first guard's verdict
        await usage.blocked(**ids, model=model, stream=stream)
        raise
    token_guard.report(request, started, warnings=call.warnings)
    return call


@dataclass
class Completion:
    content: str
    call: Call
    cache: str  # hit, miss, off ...
    deployment: str | None
    prompt_tokens: int
    completion_tokens: int
    warnings: list[str] = field(default_factory=list)


def _usage_of(body: dict[str, Any] | None) -> tuple[int, int]:
    found = (body or {}).get("usage")
    if not isinstance(found, dict):
        return 0, 0
    prompt, done = found.get("prompt_tokens"), found.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else 0, done if isinstance(done, int) else 0)


async def complete_chat(
    request: Request,
    principal: Principal,
    *,
    gateway: Gateway,
    usage: UsageService,
    guards: GuardService,
    payload: dict[str, Any],
    sources: list[str] | None = None,
    saved_tokens: int = 0,
) -> Completion:
    """Answer ``payload`` (OpenAI's chat shape, not streamed) through the pipeline. ``sources`` are the
    documents the guards ground the answer on; ``saved_tokens`` (e.g. by history trimming) go into the
    ledger row. Raises GuardBlocked, BudgetExceeded, ContextExceeded, UpstreamFailed ..."""
    model = payload["model"]
    check_model(principal, model)
    gateway.require_model(model)
    if sources is not None:
        payload[SOURCES_FIELD] = sources
    guard = guards.chat(request, payload, key_id=principal.key_id, user_id=principal.user_id)
    call = await admit(request, principal, gateway, usage, payload, kind="chat")
    try:
        await guard.check_input(payload)
    except BaseException:
        await usage.finish(call, status="blocked", charge=False, saved_tokens=saved_tokens)
        raise
    plan = gateway.cache_plan(payload, user_id=principal.user_id, asked=None, cache_control=None)
    hit = await gateway.cached(plan)
    if hit is not None:
        body = orjson.loads(orjson.dumps(hit.body))  # the guards restore values in place: not the cached copy
        try:
            await guard.check_answer(body)
        except BaseException:
            await usage.finish(call, status="blocked", charge=False, saved_tokens=saved_tokens)
            raise
        await usage.finish(
            call,
            status="ok",
            cache_hit=True,
            usage=hit.usage,
            completion_text=answer_text(hit.body) if hit.usage is None else None,
            provider=hit.provider,
            upstream_model=hit.upstream_model,
            saved_tokens=saved_tokens,
        )
        return Completion(answer_text(body), call, "hit", None, 0, 0, guard.warnings)
    try:
        outcome = await gateway.chat(payload, plan)
    except BaseException:
        await usage.finish(call, status="error", saved_tokens=saved_tokens)
        raise
    deployment = outcome.deployment
    raw = answer_text(outcome.body)
    settle: dict[str, Any] = {
        "usage": outcome.usage,
        "completion_text": raw if outcome.usage is None else None,
        "deployment": deployment.id,
        "provider": deployment.provider,
        "upstream_model": deployment.upstream_model,
        "saved_tokens": saved_tokens,
    }
    try:
        await guard.check_answer(outcome.body)
    except GuardBlocked:
        await usage.finish(call, status="blocked", charge=True, **settle)  # the tokens were spent
        raise
    await usage.finish(call, status="ok", **settle)
    prompt, done = _usage_of(outcome.body)
    return Completion(
        answer_text(outcome.body), call, plan.label, deployment.id, prompt, done, guard.warnings
    )
