"""The linear-chain CRF (CRFsuite) that tags tokens with BILOU labels, and its training.

One model file (``pii.crfsuite``) holds the weights. A CRFsuite tagger keeps the sequence it is working on, so
each thread gets its own tagger over the same model bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pycrfsuite  # type: ignore[import-untyped]

OUTSIDE = "O"


@dataclass(frozen=True, slots=True)
class TaggedSpan:
    type: str
    start: int
    end: int
    score: float


def encode(tokens: Sequence[tuple[int, int]], spans: Iterable[tuple[int, int, str]]) -> list[str]:
    """BILOU labels of the tokens for character spans: ``U-`` a one-token entity, ``B-``/``I-``/``L-`` the
    first, inner and last tokens of a longer one, ``O`` outside."""
    labels = [OUTSIDE] * len(tokens)
    for start, end, kind in spans:
        inside = [i for i, (a, b) in enumerate(tokens) if a >= start and b <= end]
        if len(inside) == 1:
            labels[inside[0]] = "U-" + kind
        elif inside:
            labels[inside[0]] = "B-" + kind
            for i in inside[1:-1]:
                labels[i] = "I-" + kind
            labels[inside[-1]] = "L-" + kind
    return labels


def decode(labels: Sequence[str], tokens: Sequence[tuple[int, int]]) -> list[tuple[str, int, int, int, int]]:
    """Spans of a BILOU sequence as ``(type, start, end, first_token, last_token)``. Lenient: an inner or last
    label without its beginning opens a span, and a span ends at ``L-``, ``U-``, ``O`` or a change of type."""
    spans: list[tuple[str, int, int, int, int]] = []
    open_span = False
    for i, label in enumerate(labels):
        if label == OUTSIDE:
            open_span = False
            continue
        prefix, kind = label[0], label[2:]
        if prefix in "IL" and open_span and spans[-1][0] == kind:
            spans[-1] = (kind, spans[-1][1], tokens[i][1], spans[-1][3], i)
        else:
            spans.append((kind, tokens[i][0], tokens[i][1], i, i))
        open_span = prefix in "BI"
    return spans


class Tagger:
    def __init__(self, model: bytes) -> None:
        self._model = model
        self._local = threading.local()
        self.labels = frozenset(self._tagger().labels())

    @classmethod
    def load(cls, path: Path) -> Tagger:
        return cls(path.read_bytes())

    def _tagger(self) -> pycrfsuite.Tagger:
        tagger = getattr(self._local, "tagger", None)
        if tagger is None:
            tagger = pycrfsuite.Tagger()
            tagger.open_inmemory(self._model)
            self._local.tagger = tagger
        return tagger

    def tag(
        self, tokens: Sequence[tuple[int, int]], features: list[list[str]], scores: bool = False
    ) -> list[TaggedSpan]:
        """Spans of the best label sequence. With ``scores``, each span's score is the least marginal
        probability of its tokens' labels (a forward-backward pass: about twice the cost of tagging);
        without, it is 1.0."""
        if not tokens:
            return []
        tagger = self._tagger()
        labels = tagger.tag(features)
        out: list[TaggedSpan] = []
        for kind, start, end, first, last in decode(labels, tokens):
            score = min(tagger.marginal(labels[i], i) for i in range(first, last + 1)) if scores else 1.0
            out.append(TaggedSpan(kind, start, end, score))
        return out


@dataclass(frozen=True)
class TrainingOptions:
    c1: float = 0.1
    c2: float = 0.01
    max_iterations: int = 200
    min_feature_frequency: int = 1


def train(
    sequences: Iterable[tuple[list[list[str]], list[str]]], path: Path, options: TrainingOptions
) -> None:
    """Fit the CRF by L-BFGS (deterministic: the same sequences give the same file)."""
    trainer = pycrfsuite.Trainer(algorithm="lbfgs", verbose=False)
    for features, labels in sequences:
        trainer.append(features, labels)
    trainer.set_params(
        {
            "c1": options.c1,
            "c2": options.c2,
            "max_iterations": options.max_iterations,
            "feature.minfreq": options.min_feature_frequency,
            "feature.possible_transitions": True,
        }
    )
    trainer.train(str(path))
