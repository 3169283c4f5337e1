"""Metrics for ``aiguardian guards eval``: the same definitions as ``shared/eval/evaluate.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Scores:
    precision: float
    recall: float
    f1: float
    false_positive_rate: float | None = None
    roc_auc: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "false_positive_rate": self.false_positive_rate,
            "roc_auc": self.roc_auc,
        }


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def roc_auc(labels: list[int], scores: list[float]) -> float | None:
    """Mann-Whitney U with ties counted half."""
    ranked = sorted(zip(scores, labels, strict=True))
    positives = sum(labels)
    negatives = len(labels) - positives
    if not positives or not negatives:
        return None
    rank_sum = 0.0
    i = 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid_rank = (i + j + 1) / 2
        rank_sum += mid_rank * sum(label for _, label in ranked[i:j])
        i = j
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def binary_scores(gold: list[dict[str, Any]], predicted: list[dict[str, Any]]) -> Scores:
    labels = [int(g["label"]) for g in gold]
    guesses = [int(p["label"]) for p in predicted]
    tp = sum(1 for y, p in zip(labels, guesses, strict=True) if y and p)
    fp = sum(1 for y, p in zip(labels, guesses, strict=True) if not y and p)
    fn = sum(1 for y, p in zip(labels, guesses, strict=True) if y and not p)
    negatives = labels.count(0)
    precision, recall, f1 = _prf(tp, fp, fn)
    return Scores(
        precision,
        recall,
        f1,
        false_positive_rate=fp / negatives if negatives else None,
        roc_auc=roc_auc(labels, [float(p["score"]) for p in predicted]),
    )


def span_scores(gold: list[dict[str, Any]], predicted: list[dict[str, Any]]) -> Scores:
    """Exact (start, end, type) matching, micro-averaged over all records."""
    tp = fp = fn = 0
    for g, p in zip(gold, predicted, strict=True):
        want = {(s["start"], s["end"], s["type"]) for s in g["spans"]}
        got = {(s["start"], s["end"], s["type"]) for s in p["spans"]}
        tp += len(want & got)
        fp += len(got - want)
        fn += len(want - got)
    return Scores(*_prf(tp, fp, fn))
