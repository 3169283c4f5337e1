"""Small text classifiers that train with scikit-learn and run on numpy alone.

The pieces, each usable alone:

- :class:`HashingFeaturizer` (``features``): character and word n-grams of a normalised text, hashed with a
  stable 64-bit hash into ``2**bits`` buckets, in a few vectorised numpy operations. ``transform(texts)`` gives
  :class:`SparseRows` (CSR arrays, unit-length rows); ``transform_segments(pieces)`` gives one row per segment
  and one for the whole document from a single pass.
- :class:`LinearModel` (``linear``): logistic regression over those features plus optional named
  hand-written signals; ``scores(texts, signals)``, ``save(path)`` / ``load(path)`` (a compact, reproducible
  file of ``store``).
- ``training.fit(featurizer, rows, labels, seed=...)``: L2-regularised logistic regression with C chosen by
  stratified cross-validation (the most regularised C within a hair of the best) and the decision threshold
  chosen on out-of-fold scores, optionally under a false-positive-rate cap. Imports scikit-learn, so only
  training code calls it.
- :func:`segments` (``text``): line and sentence spans, to score the parts of a document.
- :func:`read_labelled` (``data``): ``(texts, labels)`` of a ``shared/eval`` file; nothing else of a record.

A task module typically does::

    featurizer = HashingFeaturizer(char_ngrams=(2, 5), word_ngrams=(1, 2), bits=20)
    rows = featurizer.transform(texts)
    model, summary = training.fit(featurizer, rows, labels, seed=seed)
    model.save(out_dir / "task.aigml")
    ...
    model = LinearModel.load(path)          # at run time: numpy only
    probability = model.scores([text])[0]
"""

from aiguardian.guards.ml.data import read_labelled, train_file
from aiguardian.guards.ml.features import HashingFeaturizer, SparseRows, normalise
from aiguardian.guards.ml.linear import LinearModel, sigmoid
from aiguardian.guards.ml.text import segments

__all__ = [
    "HashingFeaturizer",
    "LinearModel",
    "SparseRows",
    "normalise",
    "read_labelled",
    "segments",
    "sigmoid",
    "train_file",
]
