"""SecretsGuard: API keys, tokens, private keys and passwords in a request or an answer.

Options: ``action`` (``block`` by default, or ``redact`` / ``warn``), ``threshold`` (least confidence, default
0.5), ``types`` (only these secret types, e.g. ``["aws_access_key", "private_key"]``; default all) and
``restore`` (default false).

Redaction replaces each secret with ``[SECRET_1]``, ``[SECRET_2]`` ... By default the answer is NOT restored:
the point of redacting a credential is that it never appears in a transcript again, and an answer that
echoes it back would put it in the caller's logs, conversation memory and anything that stores answers. The
caller still has the secret it sent. ``restore: true`` puts the values back, like PII placeholders.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any, ClassVar

from aiguardian.guards.base import Action, Finding, GuardContext, Verdict
from aiguardian.guards.pii.placeholders import replace_spans
from aiguardian.guards.pii.placeholders import restore as restore_placeholders
from aiguardian.guards.secrets.detector import Secret, SecretsDetector

REASON = "SECRET_DETECTED"
NAMESPACE = "secrets"
PLACEHOLDER_TYPE = "SECRET"


@lru_cache(maxsize=1)
def shared_detector() -> SecretsDetector:
    return SecretsDetector.load()


class SecretsGuard:
    name: ClassVar[str] = "secrets"
    # Regular expressions only: well under a millisecond for a thousand characters.
    cpu_bound: ClassVar[bool] = False

    def __init__(
        self,
        action: str = "block",
        threshold: float | None = None,
        types: list[str] | None = None,
        restore: bool = False,
    ) -> None:
        self.action = Action(action)
        self.threshold = shared_detector().threshold if threshold is None else threshold
        self.types = frozenset(types) if types else None
        self.restore_values = restore

    def find(self, text: str) -> list[Secret]:
        return [
            s
            for s in shared_detector().detect(text)
            if s.score >= self.threshold and (self.types is None or s.type in self.types)
        ]

    def check(self, context: GuardContext) -> Verdict:
        started = time.perf_counter()
        verdict = Verdict(self.name)
        found = self.find(context.text)
        if found:
            # The detail names the rule, never the value: verdicts are logged and audited.
            verdict.findings = [Finding(s.type, s.start, s.end, s.score) for s in found]
            verdict.score = max(s.score for s in found)
            verdict.reason_codes.append(REASON)
            verdict.action = self.action
            if self.action is Action.REDACT:
                verdict.redacted_text = self._replace(context.text, found, context.state)
        verdict.elapsed_ms = (time.perf_counter() - started) * 1000
        return verdict

    def redact(self, text: str, state: dict[str, Any]) -> str:
        return self._replace(text, self.find(text), state)

    def _replace(self, text: str, found: list[Secret], state: dict[str, Any]) -> str:
        spans = [(s.start, s.end, PLACEHOLDER_TYPE) for s in found]
        # A secret quoted again elsewhere (or in a later message) is replaced wherever it appears.
        return replace_spans(text, spans, state, NAMESPACE, repeats_from=4)

    def restore(self, text: str, state: dict[str, Any]) -> str:
        if not self.restore_values:
            return text
        return restore_placeholders(text, state, NAMESPACE)
