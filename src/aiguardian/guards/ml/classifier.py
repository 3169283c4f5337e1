"""One text, one score: the whole life of a plain text-classifier task (train, ship, load once, score).

A task module declares one :class:`TextClassifierTask` and gets the ``scorer()`` and ``train()`` functions that
``guards/tasks.py`` asks for, and a cached model for its guard::

    TASK = TextClassifierTask("toxicity", "toxicity.aigml", signals=my_signals, signal_names=NAMES)
    scorer, train = TASK.scorer, TASK.train
    probability = TASK.model().scores([text], [my_signals(text)])[0]
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aiguardian.guards.ml.data import read_labelled, train_file
from aiguardian.guards.ml.features import HashingFeaturizer
from aiguardian.guards.ml.linear import LinearModel, Margins
from aiguardian.guards.tasks import MODELS_DIR, Scorer

SignalFunction = Callable[[str], Sequence[float]]


@dataclass
class TextClassifierTask:
    """A task whose model maps a text to a probability.

    ``signals`` computes the task's hand-written signals of a text (named by ``signal_names``, in that order);
    ``fit_options`` go to :func:`aiguardian.guards.ml.training.fit` (``c_grid``, ``max_fpr``, ``min_df`` ...).
    """

    task: str
    filename: str
    featurizer: HashingFeaturizer = field(default_factory=HashingFeaturizer)
    signals: SignalFunction | None = None
    signal_names: tuple[str, ...] = ()
    fit_options: dict[str, Any] = field(default_factory=dict)
    _cache: dict[Path, LinearModel] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def model(self, models_dir: Path = MODELS_DIR) -> LinearModel:
        """The shipped model (or the one in ``models_dir``), loaded on first use and kept for the process."""
        with self._lock:
            model = self._cache.get(models_dir)
            if model is None:
                model = LinearModel.load(models_dir / self.filename)
                if model.signal_names != self.signal_names:
                    raise ValueError(f"the {self.task} model was trained with other signals; retrain it")
                self._cache[models_dir] = model
            return model

    def signal_matrix(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float64]] | None:
        if self.signals is None:
            return None
        return np.array([self.signals(t) for t in texts], dtype=np.float64).reshape(len(texts), -1)

    def scores(self, texts: Sequence[str], models_dir: Path = MODELS_DIR) -> Margins:
        return self.model(models_dir).scores(texts, self.signal_matrix(texts))

    def scorer(self, models_dir: Path = MODELS_DIR) -> Scorer:
        model = self.model(models_dir)

        def score(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
            texts = [str(r.get("text", "")) for r in records]
            if not texts:
                return []
            values = model.scores(texts, self.signal_matrix(texts))
            return [{"score": round(float(v), 6), "label": int(v >= model.threshold)} for v in values]

        return score

    def train(self, data_dir: Path, out_dir: Path, seed: int) -> dict[str, Any]:
        """Train on ``data_dir/<task>/train.jsonl`` and write the model into ``out_dir``."""
        texts, labels = read_labelled(train_file(data_dir, self.task))
        return self.train_on(texts, labels, out_dir, seed)

    def train_on(
        self, texts: Sequence[str], labels: np.ndarray[Any, np.dtype[np.int64]], out_dir: Path, seed: int
    ) -> dict[str, Any]:
        """Train on the given texts and labels and write the model into ``out_dir``."""
        from aiguardian.guards.ml import training

        rows = self.featurizer.transform(texts)
        result = training.fit(
            self.featurizer,
            rows,
            labels,
            seed=seed,
            signals=self.signal_matrix(texts),
            signal_names=self.signal_names,
            **self.fit_options,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        result.model.save(out_dir / self.filename)
        with self._lock:
            self._cache.pop(out_dir, None)
        return result.summary
