"""MessageGuard: a chat request's messages are well formed before anything else looks at them.

Checks, in order: the number of messages; each message is an object with a known role; content is text, a
list of content parts or (for an assistant message that calls tools) absent, and not empty; sizes per message
and in total; order: system and developer messages come first, a tool message answers a tool call of an
earlier assistant message (by ``tool_call_id``), and no call is answered twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, ClassVar

from aiguardian.guards.base import Action, Finding, GuardContext, Verdict

REASON = "CONTEXT_INVALID_MESSAGES"
ROLES = ("system", "developer", "user", "assistant", "tool")
_LEADING_ROLES = frozenset({"system", "developer"})


def _text_size(content: Any) -> tuple[int, bool, str | None]:
    """(characters of text, whether there is anything non-empty, a problem with the content's shape)."""
    if content is None:
        return 0, False, None
    if isinstance(content, str):
        return len(content), bool(content.strip()), None
    if isinstance(content, list):
        size, filled = 0, False
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                return size, filled, "a content part without a type"
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    return size, filled, "a text part without text"
                size += len(text)
                filled = filled or bool(text.strip())
            else:
                filled = True  # an image, audio or file part carries content of its own
        return size, filled, None
    return 0, False, f"content of type {type(content).__name__}"


class MessageGuard:
    """Blocks (by default) a request whose messages are malformed: ``CONTEXT_INVALID_MESSAGES``; each finding's
    detail names the problem and the message.

    Options: ``max_messages`` (default 500), ``max_message_chars`` (default 200,000), ``max_total_chars``
    (default 1,000,000), ``roles`` (default system, developer, user, assistant, tool), ``system_first`` (default
    true), ``allow_empty`` (default false) and ``action`` (default ``block``).
    """

    name: ClassVar[str] = "messages"
    cpu_bound: ClassVar[bool] = False
    deterministic: ClassVar[bool] = True  # same options and context, same verdict: the pipeline may reuse it

    def __init__(
        self,
        max_messages: int = 500,
        max_message_chars: int = 200_000,
        max_total_chars: int = 1_000_000,
        roles: list[str] | None = None,
        system_first: bool = True,
        allow_empty: bool = False,
        action: str = "block",
    ) -> None:
        self.max_messages = max_messages
        self.max_message_chars = max_message_chars
        self.max_total_chars = max_total_chars
        self.roles = frozenset(roles or ROLES)
        self.system_first = system_first
        self.allow_empty = allow_empty
        self.action = Action(action)

    def check(self, context: GuardContext) -> Verdict:
        started = time.perf_counter()
        verdict = Verdict(self.name)
        problems = list(self.problems(context.messages))
        if problems:
            verdict.action = self.action
            verdict.score = 1.0
            verdict.reason_codes.append(REASON)
            verdict.findings = [Finding("invalid_message", detail=p) for p in problems[:10]]
        verdict.elapsed_ms = (time.perf_counter() - started) * 1000
        return verdict

    def problems(self, messages: list[dict[str, Any]]) -> Iterator[str]:
        if len(messages) > self.max_messages:
            yield f"{len(messages)} messages; at most {self.max_messages}"
        total = 0
        seen_conversation = False
        open_calls: set[str] = set()
        answered: set[str] = set()
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                yield f"{where}: not an object"
                continue
            role = message.get("role")
            if role not in self.roles:
                yield f"{where}: unknown role {role!r}" if role is not None else f"{where}: no role"
                continue
            size, filled, shape = _text_size(message.get("content"))
            total += size
            calls = message.get("tool_calls") if role == "assistant" else None
            if shape:
                yield f"{where} ({role}): {shape}"
            elif not filled and not calls and not self.allow_empty:
                yield f"{where} ({role}): empty content"
            if size > self.max_message_chars:
                yield f"{where} ({role}): {size} characters; at most {self.max_message_chars}"
            if role in _LEADING_ROLES:
                if self.system_first and seen_conversation:
                    yield f"{where} ({role}): after the conversation started; {role} messages come first"
            else:
                seen_conversation = True
            if calls is not None:
                if not isinstance(calls, list):
                    yield f"{where} (assistant): tool_calls is not a list"
                    continue
                for call in calls:
                    call_id = call.get("id") if isinstance(call, dict) else None
                    if not isinstance(call_id, str) or not call_id:
                        yield f"{where} (assistant): a tool call without an id"
                    else:
                        open_calls.add(call_id)
            if role == "tool":
                call_id = message.get("tool_call_id")
                if not isinstance(call_id, str) or not call_id:
                    yield f"{where} (tool): no tool_call_id"
                elif call_id in answered:
                    yield f"{where} (tool): tool call {call_id!r} answered twice"
                elif call_id not in open_calls:
                    yield f"{where} (tool): answers {call_id!r}, which no earlier assistant message called"
                else:
                    open_calls.discard(call_id)
                    answered.add(call_id)
        if total > self.max_total_chars:
            yield f"{total} characters in all messages; at most {self.max_total_chars}"
