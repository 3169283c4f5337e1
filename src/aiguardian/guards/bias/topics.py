"""Banned topics, listed in the policy (``BIAS_BANNED_TOPIC``).

Each topic is a list of keywords and phrases, a free-text description, or both::

    - guard: banned_topics
      topics:
        weapons: [firearm, "3d-printed gun", ammunition, explosives]
        gambling: "betting, casinos, poker, sports wagers and online slots"
        medical:
          keywords: [diagnosis, prescription]
          description: "medical advice about symptoms, drugs and doses"

A keyword matches as a whole word or phrase, case-insensitively, on the normalised text (NFKC, so full-width
and styled letters count), with an optional plural ``s``/``es``; a match scores 1. A description is cut into
its content words, which match the same way but score ``description_hit`` each (two different ones reach the
default threshold), and the text's segments are compared with the whole description by the cosine of their
hashed n-gram vectors (the featurizer the trained guards use), so ``casino betting`` is close to
``betting, casinos ...``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from aiguardian.guards.base import Action, Finding, GuardContext, Verdict
from aiguardian.guards.ml.features import HashingFeaturizer, SparseRows
from aiguardian.guards.ml.text import segments

REASON = "BIAS_BANNED_TOPIC"

_STOPWORD_TEXT = """a about above after again against all also an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers him his how i if in into is it its itself just me more most my no nor not of off on once
    only or other our ours out over own same she should so some such than that the their theirs them then there
    these they this those through to too under until up very was we were what when where which while who whom
    why will with would you your yours topic topics content discussion discussions advice information talk
    talking anything things thing related including include such like etc"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[^\W\d_][\w'-]*")
_FEATURIZER = HashingFeaturizer(char_ngrams=(3, 5), word_ngrams=(1, 1), bits=18)


def _normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _phrase_pattern(phrases: list[str]) -> re.Pattern[str] | None:
    parts = []
    for phrase in sorted({_normal(p).strip() for p in phrases if p.strip()}, key=len, reverse=True):
        words = [re.escape(w) for w in re.split(r"[\s\-_]+", phrase) if w]
        parts.append(r"[\s\-_]+".join(words) + r"(?:e?s)?")
    if not parts:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)")


@dataclass(frozen=True)
class Topic:
    name: str
    keywords: re.Pattern[str] | None
    description_words: re.Pattern[str] | None
    description: SparseRows | None
    description_weights: np.ndarray[Any, np.dtype[np.float32]] | None

    @classmethod
    def parse(cls, name: str, spec: Any) -> Topic:
        keywords: list[str] = []
        description = ""
        if isinstance(spec, str):
            description = spec
        elif isinstance(spec, list):
            keywords = [str(k) for k in spec]
        elif isinstance(spec, dict) and set(spec) <= {"keywords", "description"}:
            keywords = [str(k) for k in spec.get("keywords", [])]
            description = str(spec.get("description", ""))
        else:
            raise ValueError(f"topic {name!r}: give a list of keywords, a description, or both")
        if not keywords and not description.strip():
            raise ValueError(f"topic {name!r} is empty")
        content = [w for w in _WORD.findall(_normal(description)) if w not in _STOPWORDS and len(w) > 2]
        stems = [w[:-1] if w.endswith("s") and len(w) > 4 else w for w in content]
        vector = _FEATURIZER.transform([description]) if description.strip() else None
        weights = None
        if vector is not None:
            weights = np.zeros(_FEATURIZER.width, dtype=np.float32)
            weights[vector.indices] = vector.data
        return cls(
            name=name,
            description_weights=weights,
            keywords=_phrase_pattern(keywords),
            description_words=_phrase_pattern(stems),
            description=vector,
        )


class BannedTopicsGuard:
    """Options: ``topics`` (name -> keywords, description, or both), ``threshold`` (default 0.5), ``action``
    (``block`` or ``warn``), ``description_hit`` (score of one description word, default 0.3),
    ``similarity_weight`` (how much the n-gram cosine to a description counts, default 1.5)."""

    name: ClassVar[str] = "banned_topics"
    cpu_bound: ClassVar[bool] = False
    deterministic: ClassVar[bool] = True  # same options and context, same verdict: the pipeline may reuse it

    def __init__(
        self,
        topics: dict[str, Any] | None = None,
        threshold: float = 0.5,
        action: Literal["block", "warn"] = "block",
        description_hit: float = 0.3,
        similarity_weight: float = 1.5,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("threshold must be between 0 and 1")
        if action not in ("block", "warn"):
            raise ValueError("action must be 'block' or 'warn'")
        if not isinstance(topics, dict):
            raise ValueError("topics must be a mapping of topic name to keywords or a description")
        self.topics = [Topic.parse(str(name), spec) for name, spec in topics.items()]
        self.threshold = threshold
        self.action = Action(action)
        self.description_hit = description_hit
        self.similarity_weight = similarity_weight

    def score_topic(self, topic: Topic, text: str, normal: str) -> tuple[float, tuple[int, int] | None]:
        """A topic's score on a text and the span that gave it. Spans index ``normal`` (the casefolded NFKC
        form), which has the same offsets as the text unless normalisation changed its length."""
        if topic.keywords is not None and (match := topic.keywords.search(normal)):
            return 1.0, match.span()
        best, span = 0.0, None
        if topic.description_words is not None:
            hits = list(topic.description_words.finditer(normal))
            distinct = {m.group().rstrip("s") for m in hits}
            if distinct:
                best, span = min(1.0, self.description_hit * len(distinct)), hits[0].span()
        if topic.description_weights is not None:
            spans = segments(text, long_line=200) or [(0, len(text))]
            rows = _FEATURIZER.transform_segments([text[s:e] for s, e in spans])[0]
            cosine = rows.dot(topic.description_weights)
            top = int(np.argmax(cosine))
            similarity = min(1.0, float(cosine[top]) * self.similarity_weight)
            if similarity > best:
                best, span = similarity, spans[top]
        return best, span

    def check(self, context: GuardContext) -> Verdict:
        verdict = Verdict(guard=self.name)
        text = context.text
        if not text.strip():
            return verdict
        normal = _normal(text)
        same_offsets = len(normal) == len(text)
        for topic in self.topics:
            score, span = self.score_topic(topic, text, normal)
            verdict.score = max(verdict.score, score)
            if score >= self.threshold:
                start, end = span if span and same_offsets else (None, None)
                verdict.findings.append(Finding("banned_topic", start, end, score, topic.name))
        if verdict.findings:
            verdict.action = self.action
            verdict.reason_codes = [REASON]
        return verdict
