"""The contract every guard keeps: ``Guard.check(context) -> Verdict``.

A guard looks at one :class:`GuardContext` (the text or messages of one direction of one request) and answers a
:class:`Verdict`. Guards never raise for content reasons; an exception inside a guard is a guard failure that
the pipeline turns into a block (fail closed) unless the policy says ``fail_open``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable


class Action(enum.StrEnum):
    ALLOW = "allow"
    WARN = "warn"
    REDACT = "redact"
    BLOCK = "block"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Action.ALLOW: 0, Action.WARN: 1, Action.REDACT: 2, Action.BLOCK: 3}


class Direction(enum.StrEnum):
    INPUT = "input"
    OUTPUT = "output"
    STREAM = "stream"


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a guard found: a span of ``GuardContext.text`` (``start``/``end`` may be None when the finding
    is about the whole text), its type (``EMAIL``, ``injection``, ``aws_access_key`` ...) and a score."""

    type: str
    start: int | None = None
    end: int | None = None
    score: float = 1.0
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "score": round(self.score, 4)}
        if self.start is not None:
            out["start"], out["end"] = self.start, self.end
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(slots=True)
class Verdict:
    guard: str
    action: Action = Action.ALLOW
    score: float = 0.0
    reason_codes: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    elapsed_ms: float = 0.0
    # Set only by guards that rewrite text (PII/secrets redaction): the text to send on instead.
    redacted_text: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "guard": self.guard,
            "action": self.action.value,
            "score": round(self.score, 4),
            "reason_codes": self.reason_codes,
            "findings": [f.as_dict() for f in self.findings],
            "elapsed_ms": round(self.elapsed_ms, 3),
        }
        return out


@dataclass(slots=True)
class GuardContext:
    """What a guard looks at.

    ``text`` is the text under check (input: the user-controlled text of the messages, joined; output: the
    answer; stream: the sliding window). ``messages`` are the chat messages when there are any, so guards that
    care about roles (injection hidden in tool output, message validation, drift) can look at them.
    ``sources`` are documents the request supplies for grounding. ``state`` is scratch space shared by the
    guards of one request (PII placeholders made on input and restored on output live here).
    """

    text: str
    direction: Direction = Direction.INPUT
    messages: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    system_prompt: str | None = None
    model: str | None = None
    route: str | None = None
    state: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Guard(Protocol):
    """A guard. ``name`` is its registry name (``injection``, ``pii`` ...); ``options`` come from the policy.

    ``check`` must be cheap enough to run on the event loop (well under a millisecond) unless ``cpu_bound`` is
    true, in which case the pipeline runs it in a worker thread.
    """

    name: ClassVar[str]
    cpu_bound: ClassVar[bool]

    def check(self, context: GuardContext) -> Verdict: ...


@runtime_checkable
class Redactor(Protocol):
    """A guard that can rewrite what it found (PII, secrets).

    When a redactor's verdict is ``redact``, the pipeline calls ``redact`` on every message text it sends
    upstream (so placeholders stay inside the message they came from) and, for the answer, ``restore`` to put
    the caller's own values back. Placeholders and their values live in ``state`` (``GuardContext.state``),
    which belongs to one request and is never logged.
    """

    def redact(self, text: str, state: dict[str, Any]) -> str: ...
    def restore(self, text: str, state: dict[str, Any]) -> str: ...
