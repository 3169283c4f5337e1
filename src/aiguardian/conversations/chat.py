"""``POST /api/v1/chat``: one conversation turn through the gateway pipeline (gateway/completions.py).

The turn: the conversation is created (or the caller's own is continued: anyone else's is a 404), the
history is built by :mod:`aiguardian.conversations.memory` within the model's context window less the room
kept for the answer, DriftGuard scores the new user message against the conversation's purpose (its
``purpose``, or else its system prompt, and its first user turns), the gateway answers with the caller's
guard policy and budgets, and both messages are stored. The history also stays within the caller's guard
policy's ``history_tokens``, when it sets one. The tokens the trimmed history saved go into the turn's usage
row (``saved_tokens``). A turn the guards block leaves nothing stored: a blocked message may hold what must
not be kept (a secret), and the error names the reason code.

A streamed turn (:func:`start_stream`) passes the upstream's tokens on as they arrive and stores both
messages once the answer is complete, as one turn: a stream that a guard stops, that breaks, or whose client
leaves stores nothing and publishes no ``conversation.message`` (its usage row says ``blocked`` or
``error``, with the tokens streamed paid for). A complete answer is stored even if the client left while it
was being stored.

When the history was trimmed, a background task asks the model, through the same pipeline, to summarise the
turns left out, and stores the summary (:func:`service.set_summary`); one such task per conversation at a
time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request

from aiguardian.conversations import service
from aiguardian.conversations.memory import SUMMARY_PREFIX, History, Turn, limit_of
from aiguardian.conversations.models import Conversation, Message
from aiguardian.conversations.schemas import (
    DEFAULT_TITLE,
    ChatOut,
    ChatRequest,
    ConversationCreate,
    MessageOut,
)
from aiguardian.core import events
from aiguardian.core.db import Database
from aiguardian.core.runtime import Runtime
from aiguardian.gateway.completions import ChatStream, Completion, complete_chat, context_window, stream_chat
from aiguardian.gateway.service import Gateway
from aiguardian.guards.base import Action, Direction, GuardContext
from aiguardian.guards.pipeline import GuardBlocked, summary
from aiguardian.guards.service import GuardService
from aiguardian.identity.service import Principal
from aiguardian.usage.service import UsageService

log = structlog.get_logger("aiguardian.conversations")

# DriftGuard's reason code. DriftGuard is used through the guard registry only (loaded lazily, by name): a
# drift check that cannot run (GUARD_ERROR) neither warns nor blocks a turn, as drift is a warning signal.
DRIFT_REASON = "CONTEXT_DRIFT"
DEFAULT_WINDOW = 8192
DEFAULT_MODEL_FALLBACK = "aiguardian-demo"
PURPOSE_TURNS = 2
SUMMARY_INSTRUCTION = (
    "Summarise the following conversation turns in a few sentences, keeping names, numbers and decisions."
)


@dataclass
class ChatResult:
    conversation_id: str
    user: MessageOut
    message: MessageOut
    verdicts: list[dict[str, Any]]
    warnings: list[str]
    usage: dict[str, Any]
    history: History


@dataclass
class Summaries:
    """At most one background summary per conversation at a time (per process)."""

    running: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    closed: bool = False

    def start(self, conversation_id: str, work: Coroutine[Any, Any, None]) -> bool:
        if self.closed or conversation_id in self.running:
            work.close()
            return False
        task = asyncio.get_running_loop().create_task(work)
        self.running[conversation_id] = task
        task.add_done_callback(lambda _t: self.running.pop(conversation_id, None))
        return True

    async def close(self) -> None:
        """At shutdown: cancel the summaries under way (each settles its usage) and wait for them."""
        self.closed = True
        for task in list(self.running.values()):
            task.cancel()
        for task in list(self.running.values()):
            with contextlib.suppress(BaseException):
                await task


@dataclass
class Pipeline:
    db: Database
    gateway: Gateway
    usage: UsageService
    guards: GuardService
    summaries: Summaries
    max_completion: int

    @classmethod
    def of(cls, request: Request, runtime: Runtime) -> Pipeline:
        state = request.app.state
        return cls(
            runtime.db,
            state.gateway,
            state.usage,
            state.guards,
            state.conversation_summaries,
            runtime.settings.usage_max_completion_tokens,
        )


def reserve_for(window: int, cap: int) -> int:
    """Room kept for the answer: the usual cap, but at most a quarter of a small window."""
    return max(1, min(cap, window // 4))


async def _purpose_messages(db: Database, conversation: Conversation, new: str) -> list[dict[str, Any]]:
    """What drift is measured against: the purpose (or system prompt), the first user turns, the new one."""
    async with db.session() as session:
        rows = await session.scalars(
            select(Message.content)
            .where(Message.conversation_id == conversation.id, Message.role == "user")
            .order_by(Message.id)
            .limit(PURPOSE_TURNS)
        )
        first = list(rows)
    purpose = conversation.purpose or conversation.system_prompt
    head = [{"role": "system", "content": purpose}] if purpose else []
    return [*head, *({"role": "user", "content": t} for t in first), {"role": "user", "content": new}]


def _drift_threshold(options: dict[str, Any]) -> float:
    given = options.get("threshold")
    if isinstance(given, int | float):
        return float(given)
    try:  # imported here, as the registry does: the guard's module loads only when a drift is reported
        from aiguardian.guards.context.drift import load_model

        return float(load_model(None).threshold)
    except Exception:
        return 0.0


async def _check_drift(
    pipeline: Pipeline, request: Request, principal: Principal, conversation: Conversation, content: str
) -> list[dict[str, Any]]:
    """Run DriftGuard (with the options of the caller's policy when it names ``drift``, else its defaults);
    publish ``guard.drift`` over the threshold; raise GuardBlocked when the policy's action is block."""
    messages = await _purpose_messages(pipeline.db, conversation, content)
    if len(messages) < 2:  # nothing to drift from yet
        return []
    policy = pipeline.guards.policy_for(request.url.path, principal.key_id, principal.user_id)
    options: dict[str, Any] = next((dict(e.options) for e in policy.input if e.label == "drift"), {})
    context = GuardContext(
        text=content, direction=Direction.INPUT, messages=messages, model=conversation.model, route="chat"
    )
    verdict = await pipeline.guards.check_guard("drift", context, options)
    if DRIFT_REASON in verdict.reason_codes:
        await events.publish(
            pipeline.guards.bus,
            events.GuardDrift(
                user_id=principal.user_id,
                trace_id=str(request.state.request_id),
                conversation_id=conversation.id,
                score=round(verdict.score, 4),
                threshold=_drift_threshold(options),
                action=verdict.action.value,
            ),
        )
        if verdict.action is Action.BLOCK:
            raise GuardBlocked([verdict], Direction.INPUT)
    return [summary(verdict, Direction.INPUT)]


@dataclass
class Prepared:
    """A turn ready to be answered: its conversation, its history, the drift verdict, the payload."""

    conversation_id: str
    model: str
    window: int
    reserve: int
    budget: int | None  # the policy's history_tokens
    history: History
    verdicts: list[dict[str, Any]]
    drift_warnings: list[str]
    payload: dict[str, Any]
    sources: list[str] | None


async def _prepare(pipeline: Pipeline, request: Request, principal: Principal, body: ChatRequest) -> Prepared:
    db = pipeline.db
    viewer = service.Viewer(principal.user_id)
    if body.conversation_id is None:
        model = body.model or DEFAULT_MODEL_FALLBACK
        title = body.message.strip().splitlines()[0][:80] if body.message.strip() else DEFAULT_TITLE
        created = await service.create_conversation(
            db, viewer, ConversationCreate(model=model, title=title, system_prompt=body.system_prompt or "")
        )
        conversation_id = created.id
    else:
        conversation_id = body.conversation_id
    async with db.session() as session:
        conversation = await service._readable(session, viewer, conversation_id)
    model = body.model or conversation.model
    pipeline.gateway.require_model(model)

    window = context_window(pipeline.gateway, pipeline.usage, model) or DEFAULT_WINDOW
    reserve = reserve_for(window, pipeline.max_completion)
    policy = pipeline.guards.policy_for(request.url.path, principal.key_id, principal.user_id)
    budget = policy.history_tokens
    new = Turn(service.NEW_TURN_ID, "user", body.message, await service.message_tokens("user", body.message))
    history = await service.history_for(
        db, conversation_id, new, window=window, reserve=reserve, budget=budget
    )

    verdicts = await _check_drift(pipeline, request, principal, conversation, body.message)
    drift_warnings = [f"drift:{DRIFT_REASON}" for v in verdicts if v["action"] == Action.WARN.value]
    payload: dict[str, Any] = {"model": model, "messages": list(history.messages), "max_tokens": reserve}
    sources = list(body.documents) if body.documents else None
    return Prepared(
        conversation_id, model, window, reserve, budget, history, verdicts, drift_warnings, payload, sources
    )


async def _store(
    pipeline: Pipeline,
    request: Request,
    principal: Principal,
    body: ChatRequest,
    turn: Prepared,
    completion: Completion,
) -> ChatResult:
    """Both messages of an answered turn, stored together; then the summary of what the history left out."""
    verdicts = turn.verdicts + list(getattr(request.state, "guard_verdicts", None) or [])
    warnings = turn.drift_warnings + completion.warnings
    flagged = {"verdicts": verdicts, "warnings": warnings} if warnings else None
    user_verdict = {"warnings": turn.drift_warnings} if turn.drift_warnings else None
    user, assistant = await service.add_messages(
        pipeline.db,
        pipeline.guards.bus,
        turn.conversation_id,
        [("user", body.message, user_verdict), ("assistant", completion.content, flagged)],
    )
    history = turn.history
    if history.dropped:
        limit = limit_of(turn.window, turn.reserve, turn.budget)
        pipeline.summaries.start(
            turn.conversation_id,
            summarise(
                pipeline,
                request,
                principal,
                turn.conversation_id,
                turn.model,
                turn.window,
                turn.reserve,
                limit,
            ),
        )
    usage = {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "cost_usd": str(completion.call.cost),
        "history_tokens": history.tokens,
        "history_budget": turn.budget,
        "saved_tokens": history.saved_tokens,
        "dropped_turns": history.dropped,
        "summarised": history.summarised,
        "cache": completion.cache,
        "context_window": turn.window,
    }
    return ChatResult(turn.conversation_id, user, assistant, verdicts, warnings, usage, history)


async def chat(pipeline: Pipeline, request: Request, principal: Principal, body: ChatRequest) -> ChatResult:
    turn = await _prepare(pipeline, request, principal, body)
    completion = await complete_chat(
        request,
        principal,
        gateway=pipeline.gateway,
        usage=pipeline.usage,
        guards=pipeline.guards,
        payload=turn.payload,
        sources=turn.sources,
        saved_tokens=turn.history.saved_tokens,
    )
    return await _store(pipeline, request, principal, body, turn, completion)


class StreamedTurn:
    """A turn whose answer is streaming. :meth:`frames` gives ``chat.delta`` frames as the tokens arrive,
    then one ``chat.done`` with the stored turn; a guard stopping the stream or the upstream breaking is
    raised from it (GuardBlocked, UpstreamFailed) and nothing is stored. :meth:`aclose` in every case (it
    cancels an upstream request still open and settles the usage; repeating it is harmless)."""

    def __init__(
        self,
        pipeline: Pipeline,
        request: Request,
        principal: Principal,
        body: ChatRequest,
        turn: Prepared,
        answer: ChatStream,
    ) -> None:
        self.pipeline = pipeline
        self.request = request
        self.principal = principal
        self.body = body
        self.turn = turn
        self.answer = answer

    @property
    def conversation_id(self) -> str:
        return self.turn.conversation_id

    async def frames(self) -> AsyncIterator[dict[str, Any]]:
        async for piece in self.answer:
            yield {"type": "chat.delta", "conversation_id": self.conversation_id, "content": piece}
        completion = self.answer.completion
        assert completion is not None  # the stream ended well, or the iteration raised
        with anyio.CancelScope(shield=True):  # complete and paid for: kept, even if the client left now
            result = await _store(
                self.pipeline, self.request, self.principal, self.body, self.turn, completion
            )
        yield {"type": "chat.done", "data": chat_out(result).model_dump(mode="json")}

    async def aclose(self) -> None:
        await self.answer.aclose()


async def start_stream(
    pipeline: Pipeline, request: Request, principal: Principal, body: ChatRequest
) -> StreamedTurn:
    """Prepare the turn and open the upstream stream; what refuses the turn before any token (404, drift
    block, input guards, budget, no deployment) is raised here."""
    turn = await _prepare(pipeline, request, principal, body)
    answer = await stream_chat(
        request,
        principal,
        gateway=pipeline.gateway,
        usage=pipeline.usage,
        guards=pipeline.guards,
        payload=turn.payload,
        sources=turn.sources,
        saved_tokens=turn.history.saved_tokens,
    )
    return StreamedTurn(pipeline, request, principal, body, turn, answer)


async def summarise(
    pipeline: Pipeline,
    request: Request,
    principal: Principal,
    conversation_id: str,
    model: str,
    window: int,
    reserve: int,
    limit: int,
) -> None:
    """Summarise the stored turns the history no longer carries verbatim (after the last summary, before the
    newest turns that fit), through the same pipeline, and store it. Failures are logged, never raised."""
    try:
        db = pipeline.db
        async with db.session() as session:
            conversation = await session.get(Conversation, conversation_id)
            if conversation is None:
                return
            after = conversation.summary_upto or 0
            rows = list(
                (
                    await session.execute(
                        select(Message.id, Message.role, Message.content, Message.tokens)
                        .where(Message.conversation_id == conversation_id, Message.id > after)
                        .order_by(Message.id)
                    )
                ).all()
            )
            previous = conversation.summary
        # Keep the newest half of a history's worth of turns (``limit``) verbatim; summarise what is older.
        keep_budget, kept = limit // 2, 0
        cut = len(rows)
        while cut > 0 and kept + rows[cut - 1][3] <= keep_budget:
            cut -= 1
            kept += rows[cut][3]
        older = rows[:cut]
        if not older:
            return
        room = max(200, (window - reserve) * 3)  # characters: ~3 per token, on the safe side
        lines = [f"{SUMMARY_PREFIX}{previous}"] if previous else []
        lines += [f"{role}: {content}" for _id, role, content, _n in older]
        transcript = "\n".join(lines)[-room:]
        payload: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": "system", "content": SUMMARY_INSTRUCTION},
                {"role": "user", "content": transcript},
            ],
            "max_tokens": reserve,
        }
        done = await complete_chat(
            request,
            principal,
            gateway=pipeline.gateway,
            usage=pipeline.usage,
            guards=pipeline.guards,
            payload=payload,
        )
        if done.content.strip():
            await service.set_summary(db, conversation_id, done.content.strip(), older[-1][0])
    except Exception as exc:  # a background task: the answer went out already
        log.warning("conversation summary failed", conversation_id=conversation_id, error=str(exc)[:200])


def chat_out(result: ChatResult) -> ChatOut:
    return ChatOut(
        conversation_id=result.conversation_id,
        user_message_id=result.user.id,
        message=result.message,
        verdicts=result.verdicts,
        warnings=result.warnings,
        usage=result.usage,
    )


async def over_socket(
    app: Starlette, principal: Principal, body: ChatRequest, trace_id: str
) -> AsyncIterator[dict[str, Any]]:
    """A turn asked over the WebSocket: ``chat.delta`` frames as the upstream's tokens arrive, then
    ``chat.done`` (see :class:`StreamedTurn`). The pipeline sees it as a request to ``/api/v1/chat`` (its guard policy, its audit verdicts) with the socket's trace id."""
    request = Request({"type": "http", "method": "POST", "path": "/api/v1/chat", "headers": [], "app": app})
    request.state.request_id = trace_id
    request.state.started = 0.0
    runtime: Runtime = app.state.runtime
    turn = await start_stream(Pipeline.of(request, runtime), request, principal, body)
    try:
        async for frame in turn.frames():
            yield frame
    finally:
        await turn.aclose()
