"""Discrimination and calibration figures with bootstrap 95 % intervals.

Point estimates come from scikit-learn on the whole evaluation set. The interval is the
2.5-97.5 percentile of the same figure over `n_boot` resamples of the patients (with
replacement). A resample is represented by how many times it draws each patient (a weight
row), so all resamples of a figure are computed at once with array operations — the same
formulas scikit-learn uses, with integer weights — instead of hundreds of calls.
Comparisons between two scores on the same patients use *paired* resamples, so the
interval of a difference reflects that both share each patient's noise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from training.calibration import expected_calibration_error

__all__ = [
    "BINARY_METRICS",
    "binary_report",
    "bootstrap_indices",
    "bootstrap_weights",
    "compare_auroc",
    "mean_abs_error",
]

Report = dict[str, float | int | list[float] | None]


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) resampled row indices, the same for every score evaluated on them."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_weights(boot: np.ndarray, n: int) -> np.ndarray:
    """(n_boot, n) float: how often each row is drawn in each resample."""
    b = boot.shape[0]
    flat = (boot + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _grouped(w: np.ndarray, score: np.ndarray, descending: bool) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Sum the weight columns of tied scores: (B, U) in ascending/descending score order."""
    order = np.argsort(-score if descending else score, kind="stable")
    s = score[order]
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    return np.add.reduceat(w[:, order], starts, axis=1), order[starts]


def _auroc_w(w: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUROC per weight row (ties count one half)."""
    pos, _ = _grouped(w * y, s, descending=False)  # (B, U)
    neg, _ = _grouped(w * (1 - y), s, descending=False)
    below = np.cumsum(neg, axis=1) - neg  # negatives strictly below each score
    num = np.sum(pos * (below + 0.5 * neg), axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    return np.divide(num, den, out=np.full(len(den), np.nan), where=den > 0)


def _auprc_w(w: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Weighted average precision (step-wise, as sklearn): sum of dRecall x precision."""
    tp, _ = _grouped(w * y, s, descending=True)
    fp, _ = _grouped(w * (1 - y), s, descending=True)
    ctp, cfp = np.cumsum(tp, axis=1), np.cumsum(fp, axis=1)
    total = ctp[:, -1:]
    prec = np.divide(ctp, ctp + cfp, out=np.zeros_like(ctp), where=(ctp + cfp) > 0)
    ap = np.sum(tp * prec, axis=1, keepdims=True)
    return np.divide(ap, total, out=np.full_like(total, np.nan), where=total > 0)[:, 0]


def _brier_w(w: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.asarray((w @ (p - y) ** 2) / w.sum(axis=1))


def _ece_w(w: np.ndarray, y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> np.ndarray:
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    onehot = np.eye(n_bins)[idx]  # (n, bins)
    sum_p, sum_y = w @ (onehot * p[:, None]), w @ (onehot * y[:, None])  # (B, bins)
    gap = np.abs(sum_p - sum_y)  # = count x |mean p - rate| per bin
    return np.asarray(gap.sum(axis=1) / w.sum(axis=1))


Metric = tuple[Callable[[np.ndarray, np.ndarray], float],
               Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]]

BINARY_METRICS: dict[str, Metric] = {
    "auroc": (lambda y, p: float(roc_auc_score(y, p)), _auroc_w),
    "auprc": (lambda y, p: float(average_precision_score(y, p)), _auprc_w),
    "brier": (lambda y, p: float(brier_score_loss(y, p)), _brier_w),
    "ece": (lambda y, p: expected_calibration_error(p, y), _ece_w),
}
# Figures that need a probability; a raw score (NEWS2, SAPS-I) gets AUROC and AUPRC only.
PROBABILITY_ONLY = ("brier", "ece")


def _ci(values: np.ndarray) -> list[float] | None:
    arr = values[np.isfinite(values)]
    if arr.size < 10:
        return None
    return [float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))]


def _finite(y: np.ndarray, boot: np.ndarray, *scores: np.ndarray) -> tuple[
        np.ndarray, np.ndarray, list[np.ndarray]]:
    """Drop rows where any score is NaN; resample among the rest (same count, seed 1)."""
    keep = np.logical_and.reduce([np.isfinite(s) for s in scores])
    if keep.all():
        return y, boot, list(scores)
    return y[keep], bootstrap_indices(int(keep.sum()), boot.shape[0], 1), \
        [s[keep] for s in scores]


def binary_report(y: np.ndarray, score: np.ndarray, boot: np.ndarray,
                  probability: bool = True,
                  names: tuple[str, ...] = ("auroc", "auprc", "brier", "ece")) -> Report:
    """{"n", name: value, name_ci: [lo, hi]} per metric; NaN scores are left out first."""
    y0 = np.asarray(y, dtype=np.float64)
    y1, boot1, (s,) = _finite(y0, boot, np.asarray(score, dtype=np.float64))
    out: Report = {"n": len(y1)}
    one_class = len(np.unique(y1)) < 2
    w = bootstrap_weights(boot1, len(y1))
    for name in names:
        if not probability and name in PROBABILITY_ONLY:
            continue
        point, vectorised = BINARY_METRICS[name]
        out[name] = float("nan") if one_class else point(y1, s)
        out[f"{name}_ci"] = None if one_class else _ci(vectorised(w, y1, s))
    return out


def compare_auroc(y: np.ndarray, a: np.ndarray, b: np.ndarray, boot: np.ndarray) -> Report:
    """AUROC(a) - AUROC(b) on the same patients, with a paired bootstrap interval."""
    y1, boot1, (a1, b1) = _finite(np.asarray(y, np.float64), boot,
                                  np.asarray(a, np.float64), np.asarray(b, np.float64))
    if len(np.unique(y1)) < 2:
        return {"difference": None, "difference_ci": None, "n": len(y1)}
    w = bootstrap_weights(boot1, len(y1))
    diff = float(roc_auc_score(y1, a1) - roc_auc_score(y1, b1))
    return {"difference": diff, "difference_ci": _ci(_auroc_w(w, y1, a1) - _auroc_w(w, y1, b1)),
            "n": len(y1)}


def mean_abs_error(pred: np.ndarray, true: np.ndarray, boot: np.ndarray) -> Report:
    """MAE over finite pairs with its bootstrap interval."""
    err = np.abs(np.asarray(pred, np.float64) - np.asarray(true, np.float64))
    _, boot1, (e,) = _finite(err, boot, err)
    if e.size == 0:
        return {"mae": None, "mae_ci": None, "n": 0}
    w = bootstrap_weights(boot1, len(e))
    return {"mae": float(e.mean()), "mae_ci": _ci((w @ e) / w.sum(axis=1)), "n": int(e.size)}
