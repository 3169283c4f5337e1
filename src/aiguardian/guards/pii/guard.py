"""PIIGuard: finds personal data (names, addresses, contact details, card and account numbers, national ids)
and, by default, replaces it with reversible placeholders before the request goes upstream.

Options: ``entities`` (the types to look for; default all of :data:`ENTITY_TYPES`), ``action`` (``redact``
by default, or ``block`` / ``warn``) and ``threshold`` (default 0: every entity the tagger chose; above 0, each
tagged entity is scored by its marginal probability and kept only if it reaches the threshold, which about
doubles the tagger's cost; validated patterns always carry their own score).
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any, ClassVar

from aiguardian.guards.base import Action, Finding, GuardContext, Verdict
from aiguardian.guards.pii.detector import ENTITY_TYPES, Entity, PIIDetector
from aiguardian.guards.pii.placeholders import replace_spans, restore

REASON = "PII_DETECTED"
NAMESPACE = "pii"


@lru_cache(maxsize=1)
def shared_detector() -> PIIDetector:
    """One detector per process: the model is read once, whichever policies use the guard."""
    return PIIDetector.load()


class PIIGuard:
    name: ClassVar[str] = "pii"
    # The tagger costs about a millisecond per thousand characters: run it off the event loop.
    cpu_bound: ClassVar[bool] = True

    def __init__(
        self, entities: list[str] | None = None, action: str = "redact", threshold: float = 0.0
    ) -> None:
        wanted = {e.upper() for e in entities} if entities else set(ENTITY_TYPES)
        unknown = wanted - ENTITY_TYPES
        if unknown:
            raise ValueError(f"unknown PII types: {', '.join(sorted(unknown))}")
        self.entities = frozenset(wanted)
        self.action = Action(action)
        self.threshold = threshold

    def find(self, text: str) -> list[Entity]:
        return [
            e for e in shared_detector().detect(text) if e.type in self.entities and e.score >= self.threshold
        ]

    def check(self, context: GuardContext) -> Verdict:
        started = time.perf_counter()
        verdict = Verdict(self.name)
        found = self.find(context.text)
        if found:
            verdict.findings = [Finding(e.type, e.start, e.end, e.score, e.detail) for e in found]
            verdict.score = max(e.score for e in found)
            verdict.reason_codes.append(REASON)
            verdict.action = self.action
            if self.action is Action.REDACT:
                verdict.redacted_text = self._replace(context.text, found, context.state)
        verdict.elapsed_ms = (time.perf_counter() - started) * 1000
        return verdict

    def redact(self, text: str, state: dict[str, Any]) -> str:
        return self._replace(text, self.find(text), state)

    def _replace(self, text: str, found: list[Entity], state: dict[str, Any]) -> str:
        spans = [(e.start, e.end, e.type) for e in found]
        # Repeats of a value found once in the request are replaced too, but not short ones ("36", "Mr.").
        return replace_spans(text, spans, state, NAMESPACE, repeats_from=6)

    def restore(self, text: str, state: dict[str, Any]) -> str:
        return restore(text, state, NAMESPACE)
