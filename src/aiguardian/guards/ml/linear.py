"""A logistic-regression text classifier that runs on numpy alone.

``margin = bias + w · features(text) + v · signals(text)`` and ``score = sigmoid(margin)``. ``features`` are the
hashed n-grams of :class:`HashingFeaturizer`; ``signals`` are a task's own hand-written numbers about the text
(how many override phrases it has, whether it looks like a table ...), named so a model file and the code that
computes them cannot drift apart unnoticed.

On disk only the non-zero n-gram weights are kept (the steps between their buckets and float16 weights); loading spreads them
back into a dense float32 vector, so scoring is one gather and one sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aiguardian.guards.ml import store
from aiguardian.guards.ml.features import Floats, HashingFeaturizer, SparseRows

Margins = npt.NDArray[np.float64]


def sigmoid(x: Margins) -> Margins:
    out: Margins = 0.5 * (1.0 + np.tanh(0.5 * x))  # tanh does not overflow where exp would
    return out


@dataclass
class LinearModel:
    """A trained classifier: a featurizer, its weights, a bias and the decision threshold on the score."""

    featurizer: HashingFeaturizer
    weights: Floats
    bias: float
    threshold: float = 0.5
    signal_names: tuple[str, ...] = ()
    signal_weights: Floats = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.weights) != self.featurizer.width:
            raise ValueError(f"{len(self.weights)} weights for {self.featurizer.width} buckets")
        if len(self.signal_weights) != len(self.signal_names):
            raise ValueError("one weight per signal")

    def margins(self, rows: SparseRows, signals: npt.ArrayLike | None = None) -> Margins:
        """The margin of every row of ``rows`` (made by this model's featurizer), plus its signals' part."""
        out = rows.dot(self.weights) + self.bias
        if self.signal_names:
            if signals is None:
                raise ValueError(f"this model needs the signals {', '.join(self.signal_names)}")
            out += np.asarray(signals, dtype=np.float64).reshape(len(rows), -1) @ self.signal_weights
        return out

    def scores(self, texts: Sequence[str], signals: npt.ArrayLike | None = None) -> Margins:
        """The probability that each text is positive (compare with ``threshold``)."""
        return sigmoid(self.margins(self.featurizer.transform(texts), signals))

    def save(self, path: Path) -> None:
        nonzero = np.flatnonzero(self.weights).astype(np.uint32)
        meta = {
            "featurizer": self.featurizer.config(),
            "bias": float(self.bias),
            "threshold": float(self.threshold),
            "signal_names": list(self.signal_names),
            "meta": self.meta,
        }
        store.save(
            path,
            meta,
            {
                "index_steps": np.diff(nonzero, prepend=np.uint32(0)),  # small steps compress well
                "weights": self.weights[nonzero].astype(np.float16),
                "signal_weights": self.signal_weights.astype(np.float32),
            },
        )

    @classmethod
    def load(cls, path: Path) -> LinearModel:
        meta, arrays = store.load(path)
        featurizer = HashingFeaturizer.from_config(meta["featurizer"])
        weights = np.zeros(featurizer.width, dtype=np.float32)
        weights[np.cumsum(arrays["index_steps"], dtype=np.int64)] = arrays["weights"]
        return cls(
            featurizer=featurizer,
            weights=weights,
            bias=float(meta["bias"]),
            threshold=float(meta["threshold"]),
            signal_names=tuple(meta["signal_names"]),
            signal_weights=arrays["signal_weights"].astype(np.float32),
            meta=dict(meta["meta"]),
        )

    def quantised(self) -> LinearModel:
        """This model with its weights rounded as :meth:`save` stores them, to measure what a loaded one does."""
        return LinearModel(
            featurizer=self.featurizer,
            weights=self.weights.astype(np.float16).astype(np.float32),
            bias=self.bias,
            threshold=self.threshold,
            signal_names=self.signal_names,
            signal_weights=self.signal_weights,
            meta=self.meta,
        )
