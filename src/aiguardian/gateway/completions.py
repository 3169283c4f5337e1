"""One chat completion through the whole gateway pipeline, for callers other than ``/v1`` (conversations):
size and reserve (budget, context window), input guards with the caller's policy (redaction included),
answer cache, routing with retries and fallbacks, output guards (and the caller's redacted values put back),
settlement in the usage ledger under the caller's ids. Knows the request only for its id, path and state
(audit verdicts, guard warnings headers).

:func:`complete_chat` answers at once; :func:`stream_chat` passes the upstream's tokens on as they arrive,
through the stream guards, as ``/v1/chat/completions`` does with ``stream: true``.

``admit``, ``answer_text`` and ``streamed_text`` are shared with the ``/v1`` routes.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
import structlog
from starlette.requests import Request

from aiguardian.core.errors import AIGError, ReasonCode, UpstreamFailed
from aiguardian.gateway.cache import CachedAnswer, CachePlan
from aiguardian.gateway.service import Gateway, Outcome, StreamUsage, UpstreamStream
from aiguardian.guards import token_guard
from aiguardian.guards.base import Action
from aiguardian.guards.chat import SOURCES_FIELD, ChatGuard, warning_items
from aiguardian.guards.pipeline import GuardBlocked
from aiguardian.guards.service import GuardService
from aiguardian.identity.auth import check_model
from aiguardian.identity.service import Principal
from aiguardian.usage import tokens
from aiguardian.usage.service import Call, UsageService

log = structlog.get_logger("aiguardian.gateway")

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def answer_text(body: dict[str, Any] | None) -> str:
    parts = []
    for choice in (body or {}).get("choices") or []:
        content = (choice.get("message") or {}).get("content") if isinstance(choice, dict) else None
        if isinstance(content, str):
            parts.append(content)
    return "".join(parts)


def delta_texts(events: bytes) -> list[str]:
    """The text deltas (``choices[].delta.content``) of the whole server-sent events in ``events``."""
    parts: list[str] = []
    for event in _EVENT_END.split(events):
        if not event.startswith(b"data:"):
            continue
        data = event[5:].strip()
        if not data.startswith(b"{"):
            continue
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        for choice in parsed.get("choices") or []:
            content = (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
            if isinstance(content, str) and content:
                parts.append(content)
    return parts


def streamed_text(chunks: list[bytes]) -> str:
    """The answer's text from the SSE chunks relayed, to count its tokens when no usage came."""
    return "".join(delta_texts(b"".join(chunks)))


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


@dataclass
class _Admitted:
    guard: ChatGuard
    call: Call
    plan: CachePlan
    hit: CachedAnswer | None


async def _admitted(
    request: Request,
    principal: Principal,
    gateway: Gateway,
    usage: UsageService,
    guards: GuardService,
    payload: dict[str, Any],
    sources: list[str] | None,
    saved_tokens: int,
    *,
    stream: bool,
) -> _Admitted:
    """What every answer starts with: model rights, sizing and reservation, input guards (redaction), the
    answer cache's lookup. A refusal here is settled (nothing was sent upstream) before it is raised."""
    model = payload["model"]
    check_model(principal, model)
    gateway.require_model(model)
    if sources is not None:
        payload[SOURCES_FIELD] = sources
    guard = guards.chat(request, payload, key_id=principal.key_id, user_id=principal.user_id)
    call = await admit(request, principal, gateway, usage, payload, kind="chat", stream=stream)
    try:
        await guard.check_input(payload)
    except BaseException:
        await usage.finish(call, status="blocked", charge=False, saved_tokens=saved_tokens)
        raise
    try:
        plan = gateway.cache_plan(payload, user_id=principal.user_id, asked=None, cache_control=None)
        hit = await gateway.cached(plan)
    except BaseException:
        await usage.finish(call, status="error", saved_tokens=saved_tokens)
        raise
    return _Admitted(guard, call, plan, hit)


async def _from_cache(
    usage: UsageService, admitted: _Admitted, hit: CachedAnswer, saved_tokens: int
) -> Completion:
    """A cached answer, after the output guards; no upstream call, the reservation released."""
    guard, call = admitted.guard, admitted.call
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
    admitted = await _admitted(
        request, principal, gateway, usage, guards, payload, sources, saved_tokens, stream=False
    )
    guard, call, plan = admitted.guard, admitted.call, admitted.plan
    if admitted.hit is not None:
        return await _from_cache(usage, admitted, admitted.hit, saved_tokens)
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


async def stream_chat(
    request: Request,
    principal: Principal,
    *,
    gateway: Gateway,
    usage: UsageService,
    guards: GuardService,
    payload: dict[str, Any],
    sources: list[str] | None = None,
    saved_tokens: int = 0,
) -> ChatStream:
    """Start streaming the answer to ``payload`` through the pipeline (as :func:`complete_chat`, whose
    errors it raises before any text: input guards, budget, context window, no deployment starting a
    stream). Iterate the :class:`ChatStream` for the text; close it however the caller ends."""
    admitted = await _admitted(
        request, principal, gateway, usage, guards, payload, sources, saved_tokens, stream=True
    )
    if admitted.hit is not None:
        cached = await _from_cache(usage, admitted, admitted.hit, saved_tokens)
        return ChatStream(request, gateway, usage, admitted, saved_tokens, replayed=cached)
    payload["stream"] = True
    payload["stream_options"] = {"include_usage": True}  # the usage chunk is read, never passed on
    try:
        opened = await gateway.open_stream(payload)
    except BaseException:
        await usage.finish(admitted.call, status="error", saved_tokens=saved_tokens)
        raise
    return ChatStream(request, gateway, usage, admitted, saved_tokens, opened=opened)


class ChatStream:
    """An answer streaming through the pipeline: iterate for its text as the upstream sends it, after the
    stream guards (every ``stream_every`` characters, over the last ``stream_window``) and with the caller's
    redacted values put back. ``completion`` is set once it ended well (a cached answer is one piece).

    How it ends decides the ledger row, written exactly once: ``ok``; ``blocked`` when a stream guard stops
    it (the iteration raises GuardBlocked, after the text that passed); ``error`` when the upstream breaks
    (UpstreamFailed, ``U3_upstream_stream_broken``) or the consumer leaves early. The tokens streamed are
    paid for in every case. :meth:`aclose` (safe to repeat, and needed when the iteration was never started
    or left early) cancels the upstream request and settles."""

    def __init__(
        self,
        request: Request,
        gateway: Gateway,
        usage: UsageService,
        admitted: _Admitted,
        saved_tokens: int,
        *,
        opened: tuple[Outcome, bytes, UpstreamStream] | None = None,
        replayed: Completion | None = None,
    ) -> None:
        self.completion = replayed
        self._request = request
        self._gateway = gateway
        self._usage = usage
        self._admitted = admitted
        self._saved_tokens = saved_tokens
        self._opened = opened
        self._reader = StreamUsage(client_wants_usage=False)
        self._screen = admitted.guard.stream()
        self._relayed: list[bytes] = []
        self._status = "error"  # until it ends otherwise
        self._settled = opened is None
        self._texts = self._run()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._texts

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._texts.aclose()
            await self._settle()

    async def _run(self) -> AsyncGenerator[str]:
        if self._opened is None:
            if self.completion is not None and self.completion.content:
                yield self.completion.content
            return
        outcome, first, upstream = self._opened
        parts: list[str] = []
        stopped: GuardBlocked | None = None
        try:
            async with contextlib.aclosing(self._screened(first, upstream)) as events:
                async for out in events:
                    for text in delta_texts(out):
                        parts.append(text)
                        yield text
            self._status = "ok"
        except GuardBlocked as blocked:
            self._status = "blocked"
            self._request.state.reason_codes = blocked.reason_codes
            stopped = blocked
        except Exception as exc:
            reason = getattr(exc, "message", None) or type(exc).__name__
            raise UpstreamFailed(
                f"the upstream stream broke: {reason}", reason_code=ReasonCode.UPSTREAM_STREAM_BROKEN
            ) from None
        finally:
            with anyio.CancelScope(shield=True):
                await self._settle()
        if stopped is not None:
            for text in delta_texts(stopped.passed):  # what passed the checks before the blocked event
                yield text
            raise stopped
        if self._status == "ok":
            await self._remember(outcome)
            prompt, done = _usage_of({"usage": self._reader.usage})
            worst = self._screen.worst.values()
            warnings = self._admitted.guard.warnings + warning_items(
                [v for v in worst if v.action is Action.WARN]
            )
            deployment = outcome.deployment.id
            self.completion = Completion(
                "".join(parts),
                self._admitted.call,
                self._admitted.plan.label,
                deployment,
                prompt,
                done,
                warnings,
            )

    async def _screened(self, first: bytes, upstream: UpstreamStream) -> AsyncGenerator[bytes]:
        """The upstream's whole events as the caller may see them; the usage chunk is read and dropped."""
        self._relayed.append(first)
        yield await self._screen.feed(self._reader.feed(first))
        async for chunk in upstream:
            self._relayed.append(chunk)
            yield await self._screen.feed(self._reader.feed(chunk))
        yield await self._screen.finish(self._reader.flush())

    async def _remember(self, outcome: Outcome) -> None:
        try:
            model = self._admitted.call.model
            await self._gateway.remember_stream(
                self._admitted.plan, model, outcome, self._relayed, self._reader.usage
            )
        except Exception as exc:  # the answer went out and is paid for: a cache failure changes neither
            log.warning("could not cache a streamed answer", error=type(exc).__name__)

    async def _settle(self) -> None:
        if self._settled or self._opened is None:
            return
        self._settled = True
        outcome, _first, upstream = self._opened
        try:
            await upstream.aclose()  # a stream still open: the upstream request is cancelled
        finally:
            self._screen.conclude()
            deployment = outcome.deployment
            usage = self._reader.usage
            await self._usage.finish(
                self._admitted.call,
                status=self._status,
                charge=True,
                usage=usage,
                completion_text=streamed_text(self._relayed) if usage is None else None,
                deployment=deployment.id,
                provider=deployment.provider,
                upstream_model=deployment.upstream_model,
                saved_tokens=self._saved_tokens,
            )
