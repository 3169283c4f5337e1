"""Fitting a :class:`LinearModel`: cross-validated regularisation, a threshold from out-of-fold scores.

Needs scikit-learn and scipy (the ``train`` extra); they are imported inside the functions, so the shipped
guards never import them.

The recipe, the same for every task:

1. Drop n-gram buckets seen in fewer than ``min_df`` training texts (a one-off n-gram is memorised, not
   learned, and only makes the file bigger).
2. For each C of ``c_grid`` (inverse L2 strength), k-fold stratified cross-validation on the training set
   gives out-of-fold scores; each C is judged by the F1 it reaches at its best threshold (under ``max_fpr`` when
   given). The *smallest* C within ``tolerance`` of the best wins: the most regularised model that is as good,
   which is the one that travels best to other data.
3. The final model is fitted on all of the training set with that C; the threshold is the one chosen on the
   out-of-fold scores.

Same data and seed give the same weights (the solver is deterministic; folds come from the seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from aiguardian.guards.ml.features import HashingFeaturizer, SparseRows
from aiguardian.guards.ml.linear import LinearModel, Margins, sigmoid

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

Labels = npt.NDArray[np.int64]
Signals = npt.NDArray[np.float64]

THRESHOLDS = np.round(np.linspace(0.05, 0.95, 91), 2)


@dataclass(frozen=True)
class Fit:
    """What :func:`fit` returns: the model, a summary for people, and the chosen C's out-of-fold margins
    (for a model stacked on top of this one)."""

    model: LinearModel
    summary: dict[str, Any]
    out_of_fold: Margins


@dataclass(frozen=True)
class Choice:
    """What cross-validation found for one C."""

    c: float
    f1: float
    threshold: float
    fpr: float
    margins: Margins


def design(rows: SparseRows, signals: Signals | None, keep: npt.NDArray[np.bool_]) -> csr_matrix:
    """The scipy matrix a solver sees: kept n-gram columns, then the signal columns."""
    from scipy.sparse import csr_matrix, hstack

    matrix = csr_matrix(
        (rows.data, rows.indices, rows.indptr), shape=(len(rows), rows.width), dtype=np.float64
    )
    matrix = matrix[:, np.flatnonzero(keep)]
    if signals is not None and signals.shape[1]:
        matrix = hstack([matrix, csr_matrix(signals)], format="csr")
    return matrix


def document_frequency(rows: SparseRows) -> npt.NDArray[np.int64]:
    return np.bincount(rows.indices, minlength=rows.width)


def _solver(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    # liblinear's primal trust-region Newton: deterministic, and on these sparse problems faster than lbfgs.
    return LogisticRegression(C=c, solver="liblinear", max_iter=1000, tol=1e-5)


def best_threshold(
    labels: Labels, scores: Margins, max_fpr: float | None = None
) -> tuple[float, float, float]:
    """``(threshold, f1, fpr)`` with the best F1 on these scores, keeping the false-positive rate under
    ``max_fpr`` when given (the lowest-FPR threshold when none does)."""
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    best: tuple[float, float, float] | None = None
    fallback: tuple[float, float, float] | None = None
    for threshold in THRESHOLDS:
        flagged = scores >= threshold
        tp = int((flagged & positives).sum())
        fp = int((flagged & ~positives).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / n_pos if n_pos else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        fpr = fp / n_neg if n_neg else 0.0
        candidate = (float(threshold), f1, fpr)
        if fallback is None or fpr < fallback[2]:
            fallback = candidate
        if max_fpr is not None and fpr > max_fpr:
            continue
        if best is None or f1 > best[1]:
            best = candidate
    result = best or fallback
    assert result is not None
    return result


def out_of_fold(
    matrix: csr_matrix, labels: Labels, c: float, seed: int, folds: int, groups: Sequence[int] | None = None
) -> Margins:
    """Margins for every training row from models that did not see it.

    ``groups`` keeps rows with the same group number in the same fold (segments of one document, say).
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    margins = np.zeros(len(labels), dtype=np.float64)
    if groups is None:
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
    else:
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(labels)), labels, groups)
    for train_index, test_index in splits:
        model = _solver(c).fit(matrix[train_index], labels[train_index])
        margins[test_index] = model.decision_function(matrix[test_index])
    return margins


def fit(
    featurizer: HashingFeaturizer,
    rows: SparseRows,
    labels: Labels,
    *,
    seed: int,
    signals: Signals | None = None,
    signal_names: Sequence[str] = (),
    c_grid: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
    folds: int = 4,
    min_df: int = 2,
    max_fpr: float | None = None,
    tolerance: float = 0.003,
    groups: Sequence[int] | None = None,
) -> Fit:
    """Fit a model on ``rows`` (from ``featurizer``) and ``labels``."""
    keep = document_frequency(rows) >= min_df
    matrix = design(rows, signals, keep)
    choices: list[Choice] = []
    for c in c_grid:
        margins = out_of_fold(matrix, labels, c, seed, folds, groups)
        threshold, f1, fpr = best_threshold(labels, sigmoid(margins), max_fpr)
        choices.append(Choice(c, f1, threshold, fpr, margins))
    top = max(choice.f1 for choice in choices)
    chosen = min((choice for choice in choices if choice.f1 >= top - tolerance), key=lambda ch: ch.c)
    solver = _solver(chosen.c).fit(matrix, labels)
    coef = solver.coef_.ravel()
    n_kept = int(keep.sum())
    weights = np.zeros(featurizer.width, dtype=np.float32)
    weights[np.flatnonzero(keep)] = coef[:n_kept]
    model = LinearModel(
        featurizer=featurizer,
        weights=weights,
        bias=float(solver.intercept_[0]),
        threshold=chosen.threshold,
        signal_names=tuple(signal_names),
        signal_weights=coef[n_kept:].astype(np.float32),
    )
    summary = {
        "C": chosen.c,
        "cv_f1": round(chosen.f1, 4),
        "cv_fpr": round(chosen.fpr, 4),
        "threshold": chosen.threshold,
        "features": n_kept,
        "grid": {str(ch.c): round(ch.f1, 4) for ch in choices},
    }
    model.meta = {"training": summary}
    return Fit(model, summary, chosen.margins)
