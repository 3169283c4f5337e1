"""Small guards for the pipeline's tests, plugged in the way a user plugs in their own: by ``module:Class``
in a policy (``tests.fakes.guards:KeywordGuard``). They are real guards (the Guard protocol, and a Redactor),
not mocks: what they decide is plain to see from their options."""

from __future__ import annotations

import re
import threading
from typing import Any, ClassVar

from aiguardian.guards.base import Action, Finding, GuardContext, Verdict

HERE = "tests.fakes.guards"


class KeywordGuard:
    """``action`` (default block) when any of ``words`` is in the text, case-insensitively."""

    name: ClassVar[str] = "keyword"
    cpu_bound: ClassVar[bool] = False

    def __init__(
        self, words: list[str], action: str = "block", code: str = "KEYWORD", threshold: float = 0.5
    ):
        self.words = [w.lower() for w in words]
        self.action = Action(action)
        self.code = code
        self.threshold = threshold

    def check(self, context: GuardContext) -> Verdict:
        text = context.text.lower()
        hits = [w for w in self.words if w in text]
        if not hits:
            return Verdict(self.name)
        findings = [Finding(type="keyword", start=text.index(w), end=text.index(w) + len(w)) for w in hits]
        return Verdict(self.name, self.action, 1.0, [self.code], findings)


class BrokenGuard:
    """Raises on every check."""

    name: ClassVar[str] = "broken"
    cpu_bound: ClassVar[bool] = False

    def check(self, context: GuardContext) -> Verdict:
        raise RuntimeError(f"this guard is broken (text: {context.text})")


# Released by the tests that use HangingGuard, so no worker thread is left waiting.
RELEASE = threading.Event()


class HangingGuard:
    """A CPU-bound guard that does not answer until ``RELEASE`` is set (at most 30 s)."""

    name: ClassVar[str] = "hanging"
    cpu_bound: ClassVar[bool] = True

    def check(self, context: GuardContext) -> Verdict:
        RELEASE.wait(30)
        return Verdict(self.name)


class ThreadProbe:
    """Allows, and notes which thread it ran on (``seen``, the thread ids, in order)."""

    name: ClassVar[str] = "thread_probe"
    cpu_bound: ClassVar[bool] = True
    seen: ClassVar[list[int]] = []

    def check(self, context: GuardContext) -> Verdict:
        ThreadProbe.seen.append(threading.get_ident())
        return Verdict(self.name)


class NotARedactor:
    """Answers redact, but cannot rewrite anything."""

    name: ClassVar[str] = "not_a_redactor"
    cpu_bound: ClassVar[bool] = False

    def check(self, context: GuardContext) -> Verdict:
        return Verdict(self.name, Action.REDACT, 0.9, ["SOMETHING"])


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


class EmailMask:
    """Redacts e-mail addresses to ``<EMAIL_n>`` placeholders and restores them (the Redactor protocol)."""

    name: ClassVar[str] = "email_mask"
    cpu_bound: ClassVar[bool] = False

    def __init__(self, action: str = "redact") -> None:
        self.action = Action(action)

    def check(self, context: GuardContext) -> Verdict:
        found = [Finding("EMAIL", m.start(), m.end()) for m in _EMAIL.finditer(context.text)]
        if not found:
            return Verdict(self.name)
        return Verdict(self.name, self.action, 1.0, ["PII_EMAIL"], found)

    def redact(self, text: str, state: dict[str, Any]) -> str:
        placeholders: dict[str, str] = state.setdefault("email_mask", {})

        def swap(match: re.Match[str]) -> str:
            for placeholder, value in placeholders.items():
                if value == match.group(0):
                    return placeholder
            placeholder = f"<EMAIL_{len(placeholders) + 1}>"
            placeholders[placeholder] = match.group(0)
            return placeholder

        return _EMAIL.sub(swap, text)

    def restore(self, text: str, state: dict[str, Any]) -> str:
        for placeholder, value in state.get("email_mask", {}).items():
            text = text.replace(placeholder, value)
        return text


class SlowToLoadGuard:
    """Reads a "model" on its first check, which takes ``load_seconds``; later checks are instant. Counts
    its loads across instances (``LOADS``), as a model shared by the process would be read once."""

    name: ClassVar[str] = "slow_to_load"
    cpu_bound: ClassVar[bool] = False
    LOADS: ClassVar[list[float]] = []

    def __init__(self, load_seconds: float = 0.5) -> None:
        self.load_seconds = load_seconds
        self.loaded = False

    def check(self, context: GuardContext) -> Verdict:
        if not self.loaded:
            threading.Event().wait(self.load_seconds)
            self.loaded = True
            SlowToLoadGuard.LOADS.append(self.load_seconds)
        return Verdict(self.name)
