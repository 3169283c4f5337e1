"""The guards of one chat completion: input check and redaction before the upstream call, the answer's check
and the caller's values put back after it, and a stream screened as it passes.

What the guards see of a chat request:

- ``text``: the text of the ``user``, ``tool`` and ``function`` messages (text parts of multi-part content),
  joined by blank lines; ``system`` and ``developer`` messages are the ``system_prompt``; every message is
  in ``messages``.
- ``sources`` (for grounding and URL checks): the request's ``aig_sources`` field (a list of strings; it is
  taken out of the request and never sent upstream), or else the text of its ``tool`` messages.

Redaction: when an input guard that is a :class:`Redactor` answers ``redact``, its ``redact`` runs on the text
of every message sent upstream, and ``restore`` on the answer (output guards look at the answer before it is
restored, so the caller's own values are not reported back as a leak). In a stream, the text after the last
whitespace (at most 64 characters) is held back until the next event, so a placeholder split across two
events is restored whole: placeholders must be shorter than 64 characters and contain no whitespace.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request

from aiguardian.core import events, metrics
from aiguardian.core.errors import ValidationFailed
from aiguardian.guards.base import Action, Direction, GuardContext, Redactor, Verdict
from aiguardian.guards.pipeline import Decision, GuardBlocked, redact_text, restore_text, summary
from aiguardian.guards.policy import ResolvedPolicy

if TYPE_CHECKING:
    from aiguardian.guards.service import GuardService

SOURCES_FIELD = "aig_sources"
WARNINGS_HEADER = "X-AIG-Guard-Warnings"
SYSTEM_ROLES = frozenset({"system", "developer"})
CHECKED_ROLES = frozenset({"user", "tool", "function"})
SOURCE_ROLES = frozenset({"tool", "function"})
_HOLD_MAX = 64
_EVENT_SPLIT = re.compile(rb"(\r\n\r\n|\n\n|\r\r)")


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def chat_context(
    messages: list[dict[str, Any]], sources: list[str] | None = None, *, model: str | None, route: str
) -> GuardContext:
    checked: list[str] = []
    system: list[str] = []
    tool_texts: list[str] = []
    for message in messages:
        role = message.get("role")
        text = content_text(message.get("content"))
        if not text:
            continue
        if role in SYSTEM_ROLES:
            system.append(text)
        elif role in CHECKED_ROLES:
            checked.append(text)
            if role in SOURCE_ROLES:
                tool_texts.append(text)
    return GuardContext(
        text="\n\n".join(checked),
        direction=Direction.INPUT,
        messages=messages,
        sources=sources if sources is not None else tool_texts,
        system_prompt="\n\n".join(system) or None,
        model=model,
        route=route,
    )


def take_sources(payload: dict[str, Any]) -> list[str] | None:
    """Remove ``aig_sources`` from the request (it is ours, not the provider's) and check it."""
    if SOURCES_FIELD not in payload:
        return None
    sources = payload.pop(SOURCES_FIELD)
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        message = "must be a list of strings"
        raise ValidationFailed(
            f"body.{SOURCES_FIELD}: {message}",
            details=[{"field": f"body.{SOURCES_FIELD}", "message": message}],
        )
    return sources


def _redacted_content(content: Any, redactors: list[Redactor], state: dict[str, Any]) -> Any:
    if isinstance(content, str):
        return redact_text(content, redactors, state)
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                part = {**part, "text": redact_text(part["text"], redactors, state)}
            parts.append(part)
        return parts
    return content


def redact_messages(
    messages: list[dict[str, Any]], redactors: list[Redactor], state: dict[str, Any]
) -> list[dict[str, Any]]:
    """New message list for upstream; a message whose text did not change is the same object."""
    out = []
    for message in messages:
        content = message.get("content")
        redacted = _redacted_content(content, redactors, state)
        out.append(message if redacted == content else {**message, "content": redacted})
    return out


def _tool_functions(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``function`` objects of a message's tool calls that carry their arguments as text."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return []
    functions = (call.get("function") for call in calls if isinstance(call, dict))
    return [f for f in functions if isinstance(f, dict) and isinstance(f.get("arguments"), str)]


def _rewrite_arguments(arguments: str, rewrite: Callable[[str], str]) -> str:
    """Rewrite the strings inside a tool call's JSON arguments (so a restored value with a quote in it is
    escaped, and the arguments stay valid JSON); arguments that are not JSON are rewritten as text."""
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return rewrite(arguments)

    changed = False

    def walk(value: Any) -> Any:
        nonlocal changed
        if isinstance(value, str):
            new = rewrite(value)
            changed = changed or new != value
            return new
        if isinstance(value, list):
            return [walk(item) for item in value]
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        return value

    rewritten = walk(parsed)
    return orjson.dumps(rewritten).decode() if changed else arguments  # untouched: byte for byte


def record(request: Request, direction: Direction, verdicts: list[Verdict]) -> None:
    """Add verdicts to the request's audit row (``guards``), as summaries without text."""
    kept = getattr(request.state, "guard_verdicts", None)
    if kept is None:
        kept = []
        request.state.guard_verdicts = kept
    kept.extend(summary(v, direction) for v in verdicts)


def warning_items(verdicts: list[Verdict]) -> list[str]:
    return [f"{v.guard}:{v.reason_codes[0]}" if v.reason_codes else v.guard for v in verdicts]


class ChatGuard:
    def __init__(
        self,
        service: GuardService,
        policy: ResolvedPolicy,
        request: Request,
        *,
        model: str,
        sources: list[str] | None,
        user_id: str | None = None,
    ) -> None:
        self.service = service
        self.user_id = user_id
        self.policy = policy
        self.request = request
        self.model = model
        self.sources = sources
        self.route = request.url.path
        self.state: dict[str, Any] = {}
        self.redactors: list[Redactor] = []
        self.upstream_messages: list[dict[str, Any]] = []
        self.context_sources: list[str] = []
        self.warnings: list[str] = []

    def announce(self, direction: Direction, verdicts: list[Verdict]) -> None:
        """``guard.blocked`` / ``guard.warned`` on the event bus (realtime subscribers, other processes)."""
        trace_id = str(getattr(self.request.state, "request_id", ""))
        for v in verdicts:
            kind = {Action.BLOCK: events.GuardBlocked, Action.WARN: events.GuardWarned}.get(v.action)
            if kind is not None:
                event = kind(
                    user_id=self.user_id,
                    trace_id=trace_id,
                    guard=v.guard,
                    stage=direction.value,
                    reason_codes=list(v.reason_codes),
                    score=round(v.score, 4),
                )
                events.emit(self.service.bus, event)

    def _decided(self, direction: Direction, decision: Decision) -> None:
        record(self.request, direction, decision.verdicts)
        self.announce(direction, decision.verdicts)
        warned = warning_items(decision.with_action(Action.WARN))
        if warned:
            self.warnings += warned
            # Added to whichever answer goes out, streamed or not, from the cache or not (core/middleware).
            extra = dict(getattr(self.request.state, "response_headers", None) or {})
            extra[WARNINGS_HEADER] = ",".join(self.warnings)
            self.request.state.response_headers = extra
        if decision.blocked:
            raise GuardBlocked(decision.with_action(Action.BLOCK), direction)

    async def check_input(self, payload: dict[str, Any]) -> None:
        """Run the input guards; block (GuardBlocked) or redact ``payload["messages"]`` in place."""
        messages: list[dict[str, Any]] = payload["messages"]
        context = chat_context(messages, self.sources, model=self.model, route=self.route)
        context.state = self.state
        self.context_sources = context.sources
        decision = await self.service.run(self.policy, Direction.INPUT, context)
        self._decided(Direction.INPUT, decision)
        if decision.redactors:
            self.redactors = decision.redactors
            payload["messages"] = redact_messages(messages, decision.redactors, self.state)
        self.upstream_messages = payload["messages"]

    def _output_context(self, text: str) -> GuardContext:
        return GuardContext(
            text=text,
            direction=Direction.OUTPUT,
            messages=self.upstream_messages,
            sources=self.context_sources,
            model=self.model,
            route=self.route,
            state=self.state,
        )

    async def check_answer(self, body: dict[str, Any] | None) -> None:
        """Run the output guards on a whole answer (its text and its tool calls' arguments: a secret can
        leave through either); block, or put the caller's values back in place in both."""
        messages = [
            choice["message"]
            for choice in (body or {}).get("choices") or []
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict)
        ]
        calls = [function for message in messages for function in _tool_functions(message)]
        texts = [m["content"] for m in messages if isinstance(m.get("content"), str)]
        texts += [function["arguments"] for function in calls]
        text = "\n\n".join(t for t in texts if t)
        if text and self.policy.output:
            decision = await self.service.run(self.policy, Direction.OUTPUT, self._output_context(text))
            self._decided(Direction.OUTPUT, decision)
            masking = decision.redactors
        else:
            masking = []
        if not self.redactors and not masking:
            return
        own: dict[str, Any] = {}  # output placeholders are not the caller's: never restored

        def rewrite(value: str) -> str:
            restored = restore_text(value, self.redactors, self.state)
            return redact_text(restored, masking, own) if masking else restored

        for message in messages:
            content = message.get("content")
            if isinstance(content, str):
                message["content"] = rewrite(content)
        for function in calls:
            function["arguments"] = _rewrite_arguments(function["arguments"], rewrite)

    def stream(self) -> StreamScreen:
        return StreamScreen(self)


class StreamScreen:
    """Watches a stream's events as they pass: runs the stream guards over the last ``stream_window``
    characters every ``stream_every`` new ones and once at the end, and restores redacted values.

    Each event is checked before it is passed on, so at most ``stream_every`` characters reach the caller
    ahead of the check that blocks them. Without stream guards and without redaction, bytes pass untouched.
    """

    def __init__(self, chat: ChatGuard) -> None:
        self.chat = chat
        self.entries = chat.policy.stream
        self.every = chat.policy.stream_every
        self.window = chat.policy.stream_window
        self.restoring = bool(chat.redactors)
        self.active = bool(self.entries) or self.restoring
        self.texts: dict[int, str] = {}
        self.unchecked: dict[int, int] = {}
        self.pending: dict[int, str] = {}
        self.worst: dict[str, Verdict] = {}
        self.skeleton: dict[str, Any] = {}
        self.ended = False
        self.concluded = False

    async def feed(self, data: bytes) -> bytes:
        """Whole SSE events in, the events to send out; raises GuardBlocked when a check blocks."""
        if not self.active or not data:
            return data
        parts = _EVENT_SPLIT.split(data)
        out: list[bytes] = []
        try:
            for event, separator in zip(parts[::2], [*parts[1::2], b""], strict=True):
                if event:
                    out.append(await self._event(event) + separator)
                elif separator:
                    out.append(separator)
        except GuardBlocked as blocked:
            blocked.passed = b"".join(out)  # the events of this chunk before the blocked one still go out
            raise
        return b"".join(out)

    async def finish(self, rest: bytes) -> bytes:
        """The stream ended: the last check (if the ``[DONE]`` event did not do it already), anything held
        back, and an SSE comment naming the stream's warnings."""
        out = await self.feed(rest)
        if self.active and not self.ended:
            out += await self._end()
        self.conclude()
        items = warning_items([v for v in self.worst.values() if v.action is Action.WARN])
        if items:
            out += f": {WARNINGS_HEADER} {','.join(items)}\n\n".encode()
        return out

    def conclude(self) -> None:
        """Count and audit each stream guard once, at its worst verdict (called however the stream ends)."""
        if self.concluded:
            return
        self.concluded = True
        verdicts = list(self.worst.values())
        record(self.chat.request, Direction.STREAM, verdicts)
        self.chat.announce(Direction.STREAM, verdicts)
        for v in verdicts:
            metrics.GUARD_VERDICTS.labels(v.guard, Direction.STREAM.value, v.action.value).inc()

    async def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data:"):
            return event
        payload = event[5:].strip()
        if payload == b"[DONE]":
            return await self._end() + event
        if not payload.startswith(b"{"):
            return event
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return event
        changed = False
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0) if isinstance(choice.get("index"), int) else 0
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            final = choice.get("finish_reason") is not None
            if isinstance(content, str) and content:
                self.texts[index] = (self.texts.get(index, "") + content)[-self.window :]
                self.unchecked[index] = self.unchecked.get(index, 0) + len(content)
            if self.restoring and (
                (isinstance(content, str) and content) or (final and self.pending.get(index))
            ):
                if not isinstance(delta, dict):
                    delta = choice["delta"] = {}
                delta["content"] = self._restore(index, content or "", final)
                changed = True
        if not self.skeleton:
            self.skeleton = {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}
        await self._check(final=False)
        return b"data: " + orjson.dumps(chunk) if changed else event

    def _restore(self, index: int, content: str, final: bool) -> str:
        pending = self.pending.get(index, "") + content
        if final:
            ready, self.pending[index] = pending, ""
        else:
            cut = len(pending)
            floor = max(0, cut - _HOLD_MAX)
            while cut > floor and not pending[cut - 1].isspace():
                cut -= 1  # stops after the last whitespace, or holds the last _HOLD_MAX characters
            ready, self.pending[index] = pending[:cut], pending[cut:]
        return restore_text(ready, self.chat.redactors, self.chat.state) if ready else ""

    async def _end(self) -> bytes:
        """Last check, then whatever restoration held back, as one more chunk per choice."""
        self.ended = True
        await self._check(final=True)
        out = b""
        for index, held in list(self.pending.items()):
            if not held:
                continue
            self.pending[index] = ""
            text = restore_text(held, self.chat.redactors, self.chat.state)
            chunk = {
                **self.skeleton,
                "choices": [{"index": index, "delta": {"content": text}, "finish_reason": None}],
            }
            out += b"data: " + orjson.dumps(chunk) + b"\n\n"
        return out

    async def _check(self, *, final: bool) -> None:
        if not self.entries:
            return
        for index, count in list(self.unchecked.items()):
            if count < self.every and not (final and count > 0):
                continue
            self.unchecked[index] = 0
            context = self.chat._output_context(self.texts[index])
            decision = await self.chat.service.run(self.chat.policy, Direction.STREAM, context, count=False)
            for verdict in decision.verdicts:
                seen = self.worst.get(verdict.guard)
                if seen is None or (verdict.action.rank, verdict.score) > (seen.action.rank, seen.score):
                    self.worst[verdict.guard] = verdict
            if decision.blocked:
                self.conclude()
                raise GuardBlocked(decision.with_action(Action.BLOCK), Direction.STREAM)
