"""Temperature scaling (Guo et al., 2017) and expected calibration error.

One scalar T divides the risk logit: it fixes over- or under-confidence without changing the
ranking (AUROC is untouched). T is fitted on the validation split by minimising the negative
log-likelihood, a 1-D bounded search over log T, so it cannot go negative or run away.

A validation split with few deaths (or few survivors) cannot tell a temperature: an
undertrained model whose logits happen to separate 11 deaths from 64 survivors is "best"
sharpened twenty-fold, and would then serve probabilities near 0 and 1. Below
MIN_CALIBRATION_EVENTS of either class the logits are left as trained (T = 1), with a
warning.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import minimize_scalar

__all__ = ["MIN_CALIBRATION_EVENTS", "expected_calibration_error", "fit_temperature", "sigmoid"]

log = logging.getLogger(__name__)
MIN_CALIBRATION_EVENTS = 20  # of each class in the validation split, to fit T at all

# T outside [0.05, 20] means the logits are degenerate, not miscalibrated; clamp the search.
_LOG_T_BOUNDS = (float(np.log(0.05)), float(np.log(20.0)))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64))))


def _nll(logits: np.ndarray, labels: np.ndarray) -> float:
    # log(1 + e^z) - y z, computed stably.
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the NLL of sigmoid(logits / T) on (logits, labels); 1 when
    either class has fewer than MIN_CALIBRATION_EVENTS stays (module docstring)."""
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if z.shape != y.shape or z.size == 0:
        raise ValueError(f"need equal, non-empty logits and labels, got {z.shape}, {y.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinity")
    events = int(min(y.sum(), y.size - y.sum()))
    if events < MIN_CALIBRATION_EVENTS:
        log.warning("temperature scaling skipped (T = 1): the validation split has %d "
                    "stays of its rarer outcome, fewer than %d", events,
                    MIN_CALIBRATION_EVENTS)
        return 1.0
    res = minimize_scalar(lambda log_t: _nll(z / np.exp(log_t), y),
                          bounds=_LOG_T_BOUNDS, method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """ECE with `n_bins` equal-width bins: sum over bins of |mean prob - event rate| x share."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"need equal, non-empty probs and labels, got {p.shape}, {y.shape}")
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    nonempty = count > 0
    gap = np.abs(sum_p[nonempty] - sum_y[nonempty]) / count[nonempty]
    return float(np.sum(gap * count[nonempty]) / p.size)
