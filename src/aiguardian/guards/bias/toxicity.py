"""Toxicity: insults, profanity, hate and harassment (``BIAS_TOXICITY``).

A :class:`~aiguardian.guards.ml.LinearModel` over hashed character and word n-grams (character n-grams see
through ``f*ck`` and ``idiooot``) of the tweet-normalised text (:mod:`.tweet_normalise`: mentions, links,
entities, hashtags, emoji, elongation and leetspeak rewritten the same way in training and at run time), plus
the counts of a hand-written lexicon (:mod:`.lexicon`: profanity, insults, slurs, threats, and whether they are
aimed at someone). The n-grams are weighted by their naive-Bayes log-count ratios in training
(:mod:`aiguardian.guards.ml.nb_linear`); the ratios are folded into the shipped weights, so scoring is the
plain linear model's. Trained on ``shared/eval/toxicity/train.jsonl`` by ``aiguardian guards train toxicity``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aiguardian.guards.bias import lexicon
from aiguardian.guards.bias.tweet_normalise import normalise_tweet
from aiguardian.guards.ml.classifier import TextClassifierTask
from aiguardian.guards.ml.data import read_labelled, train_file
from aiguardian.guards.ml.features import HashingFeaturizer, SparseRows
from aiguardian.guards.ml.guard import ClassifierGuard
from aiguardian.guards.ml.linear import LinearModel, Margins, sigmoid
from aiguardian.guards.tasks import MODELS_DIR, Scorer

SIGNAL_NAMES = lexicon.SIGNAL_NAMES
PREPARE = "tweet-normalise-v1"  # recorded in the model file: a model is only valid with the rewrite it saw
FIT: dict[str, Any] = {"c_grid": (4.0, 8.0, 16.0), "folds": 5, "min_df": 2}


def signals(text: str) -> list[float]:
    """The lexicon signals of one raw text, each in [0, 1], named by ``SIGNAL_NAMES``."""
    return lexicon.signals(normalise_tweet(text))


@dataclass(frozen=True)
class TweetFeaturizer(HashingFeaturizer):
    """The hashed n-grams of the tweet-normalised text: what the guard's segment scoring calls directly."""

    def transform(self, texts: Sequence[str], rows: Sequence[int] | None = None) -> SparseRows:
        return super().transform([normalise_tweet(t) for t in texts], rows)

    def transform_segments(self, segments: Sequence[str]) -> tuple[SparseRows, SparseRows]:
        return super().transform_segments([normalise_tweet(s) for s in segments])

    def transform_normalised(self, texts: Sequence[str]) -> SparseRows:
        """The rows of texts already passed through :func:`normalise_tweet`."""
        return super().transform(texts)


@dataclass
class ToxicityTask(TextClassifierTask):
    """A :class:`TextClassifierTask` whose texts are tweet-normalised once, before n-grams and signals."""

    def model(self, models_dir: Path = MODELS_DIR) -> LinearModel:
        with self._lock:
            model = self._cache.get(models_dir)
            if model is None:
                model = LinearModel.load(models_dir / self.filename)
                if model.signal_names != self.signal_names or model.meta.get("prepare") != PREPARE:
                    raise ValueError(
                        "the toxicity model was trained with other signals or text rewriting; retrain it"
                    )
                model.featurizer = TweetFeaturizer.from_config(model.featurizer.config())
                self._cache[models_dir] = model
            return model

    def signal_matrix(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float64]]:
        return _signal_rows([normalise_tweet(t) for t in texts])

    def scores(self, texts: Sequence[str], models_dir: Path = MODELS_DIR) -> Margins:
        return _scores(self.model(models_dir), [normalise_tweet(t) for t in texts])

    def scorer(self, models_dir: Path = MODELS_DIR) -> Scorer:
        model = self.model(models_dir)

        def score(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
            if not records:
                return []
            values = _scores(model, [normalise_tweet(str(r.get("text", ""))) for r in records])
            return [{"score": round(float(v), 6), "label": int(v >= model.threshold)} for v in values]

        return score

    def train(self, data_dir: Path, out_dir: Path, seed: int) -> dict[str, Any]:
        texts, labels = read_labelled(train_file(data_dir, self.task))
        return self.train_on(texts, labels, out_dir, seed)

    def train_on(
        self, texts: Sequence[str], labels: np.ndarray[Any, np.dtype[np.int64]], out_dir: Path, seed: int
    ) -> dict[str, Any]:
        from aiguardian.guards.ml.nb_linear import fit_nb

        prepared = [normalise_tweet(t) for t in texts]
        result = fit_nb(
            self.featurizer,
            self.featurizer.transform(prepared),
            labels,
            seed=seed,
            signals=_signal_rows(prepared),
            signal_names=self.signal_names,
            **self.fit_options,
        )
        result.model.meta["prepare"] = PREPARE
        out_dir.mkdir(parents=True, exist_ok=True)
        result.model.save(out_dir / self.filename)
        with self._lock:
            self._cache.pop(out_dir, None)
        return result.summary


def _signal_rows(prepared: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.array([lexicon.signals(t) for t in prepared], dtype=np.float64).reshape(len(prepared), -1)


def _scores(model: LinearModel, prepared: Sequence[str]) -> Margins:
    featurizer = model.featurizer
    assert isinstance(featurizer, TweetFeaturizer)
    return sigmoid(model.margins(featurizer.transform_normalised(prepared), _signal_rows(prepared)))


TASK = ToxicityTask(
    "toxicity",
    "toxicity.aigml",
    featurizer=HashingFeaturizer(char_ngrams=(2, 5), word_ngrams=(1, 2), bits=20),
    signals=signals,
    signal_names=SIGNAL_NAMES,
    fit_options=FIT,
)
scorer = TASK.scorer
train = TASK.train


class ToxicityGuard(ClassifierGuard):
    """Toxic language: insults, profanity aimed at people, hate and harassment."""

    name: ClassVar[str] = "toxicity"
    task: ClassVar[TextClassifierTask] = TASK
    reason: ClassVar[str] = "BIAS_TOXICITY"
    finding: ClassVar[str] = "toxicity"
