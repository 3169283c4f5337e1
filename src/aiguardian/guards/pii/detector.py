"""PII detection: a CRF sequence tagger for names, places, organisations, addresses and the like, and validated
patterns for structured values. Also the ``pii`` task of ``aiguardian guards train|score``.

The tagger sees every pattern match as a feature, so it learns when a digit group is a phone number, a zip code
or part of an address. Validated matches that the tagger left out (a Luhn-valid card, an IBAN, an e-mail, an
IP address, an SSN, a national id number) are added afterwards: a value that passes its check is PII whatever
the sentence around it looks like.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from aiguardian.guards.pii import gazetteer, patterns
from aiguardian.guards.pii.features import sequence_features, tokenize
from aiguardian.guards.pii.tagger import Tagger, TrainingOptions, encode
from aiguardian.guards.pii.tagger import train as train_tagger
from aiguardian.guards.tasks import MODELS_DIR

MODEL_FILE = "pii.crfsuite"
GAZETTEER_FILE = "pii.gazetteer.json"
FOLDS = 5

# Kinds whose validated pattern is trusted on its own when the tagger did not mark the value.
TRUSTED_PATTERN_TYPES = frozenset(
    {"EMAIL", "IBAN", "CREDIT_CARD", "IP_ADDRESS", "SSN", "DOMAIN_NAME", patterns.NATIONAL_ID}
)
ENTITY_TYPES = frozenset(
    {
        "PERSON", "ADDRESS", "LOCATION", "ORGANIZATION", "CREDIT_CARD", "PHONE", "TITLE", "DATE_TIME", "EMAIL",
        "AGE", "DOMAIN_NAME", "SSN", "NRP", "IBAN", "ZIP_CODE", "IP_ADDRESS", "DRIVER_LICENSE",
        patterns.NATIONAL_ID,
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Entity:
    type: str
    start: int
    end: int
    score: float
    detail: str | None = None


class PIIDetector:
    def __init__(self, tagger: Tagger, lists: Mapping[str, tuple[str, ...]]) -> None:
        self.tagger = tagger
        self.lists = lists

    @classmethod
    def load(cls, models_dir: Path = MODELS_DIR) -> PIIDetector:
        raw = orjson.loads((models_dir / GAZETTEER_FILE).read_bytes())
        return cls(Tagger.load(models_dir / MODEL_FILE), {word: tuple(kinds) for word, kinds in raw.items()})

    def detect(self, text: str, scores: bool = False) -> list[Entity]:
        """Entities in text order; no two overlap. ``scores``: see :meth:`Tagger.tag`."""
        if not text.strip():
            return []
        tokens = tokenize(text)
        matches = patterns.find(text)
        tagged = self.tagger.tag(tokens, sequence_features(text, tokens, matches, self.lists), scores)
        found = [Entity(s.type, s.start, s.end, s.score) for s in tagged]
        added: list[Entity] = []
        for match in matches:
            if match.type not in TRUSTED_PATTERN_TYPES:
                continue
            overlapping = [e for e in found if e.start < match.end and match.start < e.end]
            # A validated value the tagger missed, cut into pieces (a card written in groups of four) or took
            # for something else: the pattern wins, unless the tagger found the same type around it (its
            # boundaries follow the conventions it was trained on).
            if any(
                e in added or (e.type == match.type and e.start <= match.start and match.end <= e.end)
                for e in overlapping
            ):
                continue  # the first (longest) of overlapping matches wins
            found = [e for e in found if e not in overlapping]
            added.append(Entity(match.type, match.start, match.end, match.score, match.detail))
            found.append(added[-1])
        found.sort(key=lambda e: (e.start, -e.end))
        return found


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _template(record: Mapping[str, Any]) -> str:
    """A record's sentence with its entity values replaced by their types: records made from the same template
    share it, so folds split by it keep a template's records together."""
    text, last, parts = str(record["text"]), 0, []
    for span in sorted(record["spans"], key=lambda s: int(s["start"])):
        parts += [text[last : span["start"]], "[" + span["type"] + "]"]
        last = span["end"]
    parts.append(text[last:])
    return re.sub(r"\s+", " ", "".join(parts)).lower()


def template_folds(records: Sequence[Mapping[str, Any]], k: int, seed: int) -> list[int]:
    templates = sorted({_template(r) for r in records})
    random.Random(seed).shuffle(templates)
    fold_of = {t: i % k for i, t in enumerate(templates)}
    return [fold_of[_template(r)] for r in records]


def training_sequences(
    records: Sequence[Mapping[str, Any]], lists: Iterable[Mapping[str, tuple[str, ...]]]
) -> list[tuple[list[list[str]], list[str]]]:
    out = []
    for record, words in zip(records, lists, strict=True):
        text = str(record["text"])
        tokens = tokenize(text)
        spans = [(s["start"], s["end"], s["type"]) for s in record["spans"]]
        out.append((sequence_features(text, tokens, patterns.find(text), words), encode(tokens, spans)))
    return out


def train(data_dir: Path, out_dir: Path, seed: int, options: TrainingOptions | None = None) -> dict[str, Any]:
    records = _load_jsonl(data_dir / "pii" / "train.jsonl")
    public = gazetteer.public_lists()
    folds = template_folds(records, FOLDS, seed)
    learnt = gazetteer.cross_fitted(records, folds)
    merged = {id(lists): gazetteer.merge(public, lists) for lists in learnt}  # one per fold
    lists = [merged[id(fold_lists)] for fold_lists in learnt]
    train_tagger(training_sequences(records, lists), out_dir / MODEL_FILE, options or TrainingOptions())
    shipped = gazetteer.merge(public, gazetteer.build(records))
    (out_dir / GAZETTEER_FILE).write_bytes(orjson.dumps(shipped, option=orjson.OPT_SORT_KEYS) + b"\n")
    return {
        "records": len(records),
        "spans": sum(len(r["spans"]) for r in records),
        "model_bytes": (out_dir / MODEL_FILE).stat().st_size + (out_dir / GAZETTEER_FILE).stat().st_size,
    }


def scorer(models_dir: Path = MODELS_DIR) -> Any:
    detector = PIIDetector.load(models_dir)

    def score(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {"spans": [{"start": e.start, "end": e.end, "type": e.type} for e in detector.detect(r["text"])]}
            for r in batch
        ]

    return score
