"""Secret detection by rules (``rules.py``), with per-rule confidence calibrated on the training data; also the
``secrets`` task of ``aiguardian guards train|score``.

The "model" is small on purpose: ``secrets.json`` holds, for each rule, the share of training records it fired
on that really hold a credential (smoothed towards the rule's prior), so a rule that misfires on ordinary text
loses weight without being hand-tuned. Rules that never fired in training keep their prior.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from aiguardian.guards.secrets.rules import PROVIDER_RULES, RULES, scan
from aiguardian.guards.tasks import MODELS_DIR

MODEL_FILE = "secrets.json"
THRESHOLD = 0.5
PRIOR_WEIGHT = 4.0  # pseudo-records of the prior in each rule's calibrated score
_PROVIDER_NAMES = frozenset(r.name for r in PROVIDER_RULES)


@dataclass(frozen=True, slots=True)
class Secret:
    type: str
    start: int
    end: int
    score: float


def _tier(rule: str) -> int:
    return 0 if rule in _PROVIDER_NAMES else 2 if rule == "high_entropy" else 1


class SecretsDetector:
    def __init__(self, rule_scores: dict[str, float], threshold: float = THRESHOLD) -> None:
        self.rule_scores = rule_scores
        self.threshold = threshold

    @classmethod
    def load(cls, models_dir: Path = MODELS_DIR) -> SecretsDetector:
        model = orjson.loads((models_dir / MODEL_FILE).read_bytes())
        return cls({str(k): float(v) for k, v in model["rule_scores"].items()}, float(model["threshold"]))

    def detect(self, text: str) -> list[Secret]:
        """Secrets in text order; of overlapping hits a provider format wins over a context rule and that over
        bare entropy, then the more confident, then the longer one."""
        hits = sorted(
            (Secret(h.rule, h.start, h.end, self.rule_scores.get(h.rule, h.score)) for h in scan(text)),
            key=lambda s: (_tier(s.type), -s.score, -(s.end - s.start), s.start),
        )
        kept: list[Secret] = []
        for hit in hits:
            if not any(k.start < hit.end and hit.start < k.end for k in kept):
                kept.append(hit)
        return sorted(kept, key=lambda s: s.start)

    def score(self, text: str) -> float:
        return max((s.score for s in self.detect(text)), default=0.0)


def _prior(rule: str) -> float:
    return max(r.score for r in RULES if r.name == rule)


def calibrate(records: list[dict[str, Any]]) -> dict[str, float]:
    """Per rule: (credential records it fired on + prior pseudo-counts) / (records it fired on + weight)."""
    fired: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        for rule in {h.rule for h in scan(record["text"])}:
            fired[rule][0] += int(record["label"])
            fired[rule][1] += 1
    scores = {}
    for rule in sorted({r.name for r in RULES}):
        positives, total = fired.get(rule, (0, 0))
        prior = _prior(rule)
        scores[rule] = round((positives + PRIOR_WEIGHT * prior) / (total + PRIOR_WEIGHT), 4)
    return scores


def train(data_dir: Path, out_dir: Path, seed: int) -> dict[str, Any]:
    records = [
        orjson.loads(line)
        for line in (data_dir / "secrets" / "train.jsonl").read_bytes().splitlines()
        if line.strip()
    ]
    scores = calibrate(records)  # deterministic: counting needs no seed
    model = {"threshold": THRESHOLD, "rule_scores": scores, "trained_on": len(records)}
    (out_dir / MODEL_FILE).write_bytes(orjson.dumps(model, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))
    detector = SecretsDetector(scores)
    predicted = [detector.score(r["text"]) >= THRESHOLD for r in records]
    tp = sum(1 for p, r in zip(predicted, records, strict=True) if p and r["label"])
    return {
        "records": len(records),
        "rules": len(scores),
        "train_recall": round(tp / max(1, sum(r["label"] for r in records)), 4),
        "train_precision": round(tp / max(1, sum(predicted)), 4),
    }


def scorer(models_dir: Path = MODELS_DIR) -> Any:
    detector = SecretsDetector.load(models_dir)

    def score(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for record in batch:
            value = detector.score(record["text"])
            out.append({"score": round(value, 4), "label": int(value >= detector.threshold)})
        return out

    return score
