"""Fitting a :class:`LinearModel` on naive-Bayes-weighted n-grams (NB-LR, after Wang and Manning's NB-SVM).

Each kept n-gram bucket ``j`` gets the log-count ratio ``r_j = log((p_j / |p|) / (q_j / |q|))``, where ``p_j``
and ``q_j`` are ``alpha`` plus the number of positive and negative training texts that have it. Logistic
regression is fitted on the features multiplied by ``r``: a bucket that splits the classes well starts with a
large scale, so the L2 penalty costs it less than a bucket seen evenly in both classes. The product is
linear, so the shipped model folds ``r`` into its weights (``w_j * r_j``) and runs exactly like any other
:class:`LinearModel`: nothing changes at run time.

Cross-validation is honest about ``r``: each fold's ratios come from that fold's training part only. The
recipe is otherwise :func:`aiguardian.guards.ml.training.fit`'s: the most regularised C within ``tolerance``
of the best cross-validated F1, and the threshold chosen on the out-of-fold scores.

Needs scikit-learn and scipy (the ``train`` extra), imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from aiguardian.guards.ml.features import HashingFeaturizer, SparseRows
from aiguardian.guards.ml.linear import LinearModel, Margins, sigmoid
from aiguardian.guards.ml.training import (
    Choice,
    Fit,
    Labels,
    Signals,
    best_threshold,
    design,
    document_frequency,
)

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix


def log_count_ratios(grams: csr_matrix, labels: Labels, alpha: float) -> npt.NDArray[np.float64]:
    """``r`` of every column of ``grams`` from the rows' labels (a column counts once per row)."""
    present = grams.copy()
    present.data[:] = 1.0
    positive = alpha + np.asarray(present[labels == 1].sum(axis=0), dtype=np.float64).ravel()
    negative = alpha + np.asarray(present[labels == 0].sum(axis=0), dtype=np.float64).ravel()
    ratios: npt.NDArray[np.float64] = np.log((positive / positive.sum()) / (negative / negative.sum()))
    return ratios


def _weighted(grams: csr_matrix, ratios: npt.NDArray[np.float64], signals: Signals | None) -> csr_matrix:
    from scipy.sparse import csr_matrix, diags, hstack

    matrix = csr_matrix(grams @ diags(ratios))
    if signals is not None and signals.shape[1]:
        matrix = hstack([matrix, csr_matrix(signals)], format="csr")
    return matrix


def _solver(c: float, class_weight: dict[int, float] | None) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, solver="liblinear", max_iter=1000, tol=1e-4, class_weight=class_weight)


def fit_nb(
    featurizer: HashingFeaturizer,
    rows: SparseRows,
    labels: Labels,
    *,
    seed: int,
    signals: Signals | None = None,
    signal_names: Sequence[str] = (),
    signal_scale: float = 1.0,
    c_grid: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
    folds: int = 5,
    min_df: int = 2,
    alpha: float = 1.0,
    class_weight: dict[int, float] | None = None,
    tolerance: float = 0.003,
) -> Fit:
    """Fit an NB-weighted logistic regression on ``rows`` (from ``featurizer``) and ``labels``.

    ``signal_scale`` multiplies the signals before fitting (and divides back out of their weights): it sets how
    cheap the L2 penalty makes them next to the ratio-scaled n-grams.
    """
    from sklearn.model_selection import StratifiedKFold

    keep = document_frequency(rows) >= min_df
    grams = design(rows, None, keep)
    scaled = None if signals is None else signals * signal_scale
    splits = list(
        StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
    )
    fold_matrices = [
        _weighted(grams, log_count_ratios(grams[train], labels[train], alpha), scaled) for train, _ in splits
    ]
    choices: list[Choice] = []
    for c in c_grid:
        margins: Margins = np.zeros(len(labels), dtype=np.float64)
        for (train, test), matrix in zip(splits, fold_matrices, strict=True):
            margins[test] = (
                _solver(c, class_weight).fit(matrix[train], labels[train]).decision_function(matrix[test])
            )
        threshold, f1, fpr = best_threshold(labels, sigmoid(margins))
        choices.append(Choice(c, f1, threshold, fpr, margins))
    top = max(choice.f1 for choice in choices)
    chosen = min((choice for choice in choices if choice.f1 >= top - tolerance), key=lambda ch: ch.c)
    ratios = log_count_ratios(grams, labels, alpha)
    solver = _solver(chosen.c, class_weight).fit(_weighted(grams, ratios, scaled), labels)
    coef = solver.coef_.ravel()
    n_kept = int(keep.sum())
    weights = np.zeros(featurizer.width, dtype=np.float32)
    weights[np.flatnonzero(keep)] = coef[:n_kept] * ratios
    summary = {
        "method": "nb-logistic-regression",
        "C": chosen.c,
        "cv_folds": folds,
        "cv_f1": round(chosen.f1, 4),
        "cv_fpr": round(chosen.fpr, 4),
        "threshold": chosen.threshold,
        "features": n_kept,
        "grid": {str(ch.c): round(ch.f1, 4) for ch in choices},
    }
    model = LinearModel(
        featurizer=featurizer,
        weights=weights,
        bias=float(solver.intercept_[0]),
        threshold=chosen.threshold,
        signal_names=tuple(signal_names),
        signal_weights=(coef[n_kept:] * signal_scale).astype(np.float32),
        meta={"training": summary},
    )
    return Fit(model, summary, chosen.margins)
