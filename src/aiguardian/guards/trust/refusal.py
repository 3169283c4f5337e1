"""RefusalGuard: notices when the model declined to answer ("I can't help with that").

A refusal is not harmful, but a caller wants to know: an application may retry with another model or show its
own message. The guard looks for refusal phrases near the start of the answer, where models put them; a phrase
later in a long answer counts less (a model that helps and then declines one part still helped).
"""

from __future__ import annotations

import re
import time
from typing import ClassVar

from aiguardian.guards.base import Action, Finding, GuardContext, Verdict
from aiguardian.guards.prefixed import PrefixedPattern

REASON = "TRUST_REFUSAL"

_I = r"(?:i|we)(?:\s+(?:really|simply|just|unfortunately))?"
_CANNOT = (
    r"(?:(?:won't|will\s+not|am\s+not\s+going\s+to)\s+be\s+able\s+to|can(?:no|')t|can\s+not|won't|will\s+not|(?:am|'m|are|'re)\s+(?:not\s+(?:able|allowed|permitted)|unable)"
    r"(?:\s+to)?|must\s+not|(?:do|'m|am)\s+not\s+(?:feel\s+comfortable|comfortable))"
)
_HELP = (
    r"(?:help|assist|provide|comply|fulfil{1,2}|do\s+(?:that|this)|create|generate|write|produce|share|support|answer|"
    r"engage|give|offer|continue|participate|complete|discuss|recommend|make|tell|disclose|reveal)"
)
# (pattern, weight): strong phrases alone are a refusal; weak ones need company.
_PATTERNS: tuple[tuple[re.Pattern[str], float], ...] = tuple(
    (re.compile(p, re.IGNORECASE), w)
    for p, w in (
        (rf"\b{_I}\s+{_CANNOT}\s+(?:\w+\s+){{0,2}}?{_HELP}\b", 0.9),
        (
            r"\b(?:i|we)\s+(?:must|have\s+to|need\s+to|will\s+have\s+to)\s+(?:respectfully\s+|politely\s+)?decline\b",
            0.95,
        ),
        (r"\b(?:i|we)\s+(?:respectfully\s+|politely\s+)?decline\s+to\b", 0.9),
        (
            r"\bas\s+an\s+ai(?:\s+(?:language\s+)?model|\s+assistant)?,?\s+i\s+(?:can(?:no|')t|cannot|am\s+not|don't)",
            0.9,
        ),
        (r"\b(?:this|that|your)\s+(?:request|question)\s+(?:goes\s+against|violates|is\s+against)\b", 0.85),
        (
            r"\bagainst\s+my\s+(?:guidelines|policies|policy|programming|principles|ethical\s+guidelines)\b",
            0.85,
        ),
        (r"\bi'm\s+not\s+(?:able|going)\s+to\s+(?:help|assist|provide)\b", 0.9),
        (r"\bit\s+(?:is|would\s+be)\s+(?:not\s+appropriate|inappropriate|unethical)\s+for\s+me\s+to\b", 0.85),
        (r"\b(?:i'm|i\s+am|we're|we\s+are)\s+(?:so\s+|very\s+|truly\s+)?sorry,?\s+(?:but|however)\b", 0.55),
        (r"\b(?:i\s+)?apologi[sz]e,?\s+(?:but|however)\b", 0.55),
        (r"\bunfortunately,?\s+i\s+(?:can(?:no|')t|cannot|am\s+unable|am\s+not\s+able)\b", 0.8),
        (r"\b(?:i|we)\s+(?:can(?:no|')t|cannot|won't)\s+(?:comply|assist|help)\b", 0.95),
    )
)

# The same matches as each pattern's finditer, tried only where one can begin (when that is known).
_PREFIXED = tuple((PrefixedPattern(pattern), weight) for pattern, weight in _PATTERNS)


class RefusalGuard:
    """Warns (by default) when the answer is a refusal: ``TRUST_REFUSAL``.

    Options: ``threshold`` (default 0.5), ``action`` (default ``warn``), ``window``: how many characters from the
    start count fully (default 400; a phrase further on weighs 0.4 as much).
    """

    name: ClassVar[str] = "refusal"
    cpu_bound: ClassVar[bool] = False
    deterministic: ClassVar[bool] = True  # same options and context, same verdict: the pipeline may reuse it

    def __init__(self, threshold: float = 0.5, action: str = "warn", window: int = 400) -> None:
        self.threshold = threshold
        self.action = Action(action)
        self.window = window

    def check(self, context: GuardContext) -> Verdict:
        started = time.perf_counter()
        verdict = Verdict(self.name)
        text = context.text.replace("\u2019", "'")  # a typographic apostrophe; same length, same spans
        lower = text.lower()
        findings: list[Finding] = []
        for pattern, weight in _PREFIXED:
            for m in pattern.finditer(text, lower):
                score = weight if m.start() < self.window else weight * 0.4
                findings.append(Finding("refusal", m.start(), m.end(), score=score))
        if findings:
            findings.sort(key=lambda f: (-f.score, f.start or 0))
            top = findings[0].score
            # An apology next to a refusal phrase makes it surer.
            verdict.score = min(1.0, top + 0.1 * (len({(f.start, f.end) for f in findings}) > 1))
            if verdict.score >= self.threshold:
                verdict.action = self.action
                verdict.reason_codes.append(REASON)
                verdict.findings = sorted(findings[:3], key=lambda f: f.start or 0)
        verdict.elapsed_ms = (time.perf_counter() - started) * 1000
        return verdict
