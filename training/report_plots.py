"""PNG figures for an evaluation report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

__all__ = [
    "AttentionExample",
    "plot_attention_examples",
    "plot_forecast_errors",
    "plot_los",
    "plot_reliability",
    "plot_roc",
]

# Vitals drawn under each attention strip, in this order where measured.
EXAMPLE_VITALS = ("heart_rate", "resp_rate", "sbp", "spo2", "temperature", "lactate")


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_roc(y: np.ndarray, scores: Mapping[str, np.ndarray], path: Path) -> Path:
    """One ROC curve per score (model first, then baselines); NaN scores are skipped."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for label, s in scores.items():
        keep = np.isfinite(s)
        if len(np.unique(y[keep])) < 2:
            continue
        fpr, tpr, _ = roc_curve(y[keep], s[keep])
        auc = roc_auc_score(y[keep], s[keep])
        ax.plot(fpr, tpr, label=f"{label} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate",
           title="ROC, in-hospital death")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_reliability(y: np.ndarray, probs: Mapping[str, np.ndarray], path: Path,
                     n_bins: int = 10) -> Path:
    """Reliability diagram (observed rate vs mean predicted, quantile bins) + histogram."""
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5.5, 6), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="perfect")
    for label, p in probs.items():
        keep = np.isfinite(p)
        true_rate, mean_pred = calibration_curve(y[keep], p[keep], n_bins=n_bins,
                                                 strategy="quantile")
        ax.plot(mean_pred, true_rate, marker="o", ms=3, label=label)
        hx.hist(p[keep], bins=40, range=(0, 1), histtype="step", label=label)
    ax.set(ylabel="observed death rate", title="Reliability")
    ax.legend(loc="upper left", fontsize=8)
    hx.set(xlabel="predicted probability", ylabel="stays")
    return _save(fig, path)


def plot_los(pred: np.ndarray, true: np.ndarray, path: Path) -> Path:
    keep = np.isfinite(pred) & np.isfinite(true)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true[keep], pred[keep], s=4, alpha=0.3)
    hi = float(np.percentile(np.r_[true[keep], pred[keep]], 99)) if keep.any() else 1.0
    ax.plot([0, hi], [0, hi], ls=":", c="grey")
    ax.set(xlim=(0, hi), ylim=(0, hi), xlabel="true LOS (days)", ylabel="predicted LOS (days)",
           title="Length of stay")
    return _save(fig, path)


@dataclass
class AttentionExample:
    title: str  # e.g. "died, p=0.83" (no identifiers)
    hours: np.ndarray  # (T,) start hour of each bin
    attention: np.ndarray  # (T,)
    series: dict[str, tuple[np.ndarray, np.ndarray]]  # variable -> (times, values)
    onset_hour: float | None  # true onset (synthetic), drawn as a line


def plot_attention_examples(examples: Sequence[AttentionExample], step_hours: float,
                            path: Path) -> Path:
    """Per example: an attention heat strip over time above the vitals it was computed on."""
    n = max(len(examples), 1)
    fig, axes = plt.subplots(2 * n, 1, figsize=(9, 3.2 * n), sharex=True,
                             height_ratios=[1, 4] * n, squeeze=False)
    for i, ex in enumerate(examples):
        strip, ax = axes[2 * i, 0], axes[2 * i + 1, 0]
        edges = np.r_[ex.hours, ex.hours[-1] + step_hours] if len(ex.hours) else np.zeros(1)
        strip.pcolormesh(edges, [0, 1], ex.attention[None, :], cmap="magma_r",
                         vmin=0, vmax=max(float(ex.attention.max()), 1e-9))
        strip.set_yticks([])
        strip.set_title(ex.title, fontsize=9, loc="left")
        for name, (t, v) in ex.series.items():
            if len(t) and np.nanmax(np.abs(v)) > 0:
                # Each vital on its own scale: z-score so one axis holds them all.
                z = (v - np.nanmean(v)) / (np.nanstd(v) or 1.0)
                ax.plot(t, z, marker=".", ms=3, lw=0.8, label=name)
        if ex.onset_hour is not None and np.isfinite(ex.onset_hour):
            for a in (strip, ax):
                a.axvline(ex.onset_hour, c="red", ls="--", lw=1)
        ax.set_ylabel("z-score")
        ax.legend(fontsize=7, ncol=3, loc="upper left")
    axes[-1, 0].set_xlabel("hours since admission (red: true onset)")
    return _save(fig, path)


def plot_forecast_errors(per_target: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """MAE of the forecast vs carry-forward per target, as a ratio (below 1 = better)."""
    names = list(per_target)
    ratio = [per_target[n]["mae"] / per_target[n]["carry_forward_mae"]
             if per_target[n]["carry_forward_mae"] else np.nan for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, ratio)
    ax.axhline(1.0, c="grey", ls=":")
    ax.set(ylabel="MAE / carry-forward MAE", title="Forecast error vs carry-forward")
    ax.tick_params(axis="x", rotation=45)
    return _save(fig, path)
