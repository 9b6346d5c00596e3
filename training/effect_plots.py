"""PNG figures of the what-if evaluation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["plot_effect_by_confounding", "plot_effect_by_propensity", "plot_effect_scatter"]

_BINS = 8  # propensity bins (quantiles) in the by-propensity plot


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_effect_scatter(true: Mapping[str, np.ndarray], adjusted: Mapping[str, np.ndarray],
                        naive: Mapping[str, np.ndarray], path: Path) -> Path:
    """Per plan, each patient's predicted risk difference against the true one."""
    fig, axes = plt.subplots(1, len(true), figsize=(5 * len(true), 4.6), squeeze=False)
    for ax, plan in zip(axes[0], true, strict=True):
        t = true[plan]
        ax.scatter(t, naive[plan], s=4, alpha=0.3, c="tab:orange", label="naive")
        ax.scatter(t, adjusted[plan], s=4, alpha=0.3, c="tab:blue", label="adjusted (IPW)")
        lo = float(min(t.min(), adjusted[plan].min(), naive[plan].min()))
        hi = float(max(t.max(), adjusted[plan].max(), naive[plan].max()))
        ax.plot([lo, hi], [lo, hi], ls=":", c="grey")
        ax.set(xlabel="true risk difference", ylabel="predicted risk difference",
               title=f"{plan} vs no further intervention")
        ax.legend(loc="upper left", fontsize=8, markerscale=3)
    return save_figure(fig, path)


def plot_effect_by_propensity(propensity: Mapping[str, np.ndarray],
                              true: Mapping[str, np.ndarray],
                              adjusted: Mapping[str, np.ndarray],
                              naive: Mapping[str, np.ndarray], path: Path) -> Path:
    """Mean effect by how strongly the policy pushed patients towards the plan (quantile
    bins of the plan's estimated propensity): where confounding bites, the naive estimate
    parts from the truth."""
    fig, axes = plt.subplots(1, len(true), figsize=(5 * len(true), 4.2), squeeze=False)
    for ax, plan in zip(axes[0], true, strict=True):
        p = propensity[plan]
        edges = np.unique(np.quantile(p, np.linspace(0, 1, _BINS + 1)))
        which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
        centre = [float(p[which == b].mean()) for b in range(len(edges) - 1)]
        for label, values, style in (("true", true[plan], "k-"),
                                     ("adjusted (IPW)", adjusted[plan], "o-"),
                                     ("naive", naive[plan], "s--")):
            means = [float(values[which == b].mean()) for b in range(len(edges) - 1)]
            ax.plot(centre, means, style, ms=4, label=label)
        ax.axhline(0.0, c="grey", ls=":")
        ax.set(xscale="log", xlabel="estimated propensity of the plan",
               ylabel="mean risk difference", title=plan)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_effect_by_confounding(strengths: Sequence[float],
                               rows: Mapping[str, Mapping[str, Sequence[float]]],
                               path: Path) -> Path:
    """PEHE and ATE error against the confounding strength G, adjusted vs naive; `rows`
    maps a plan to its series (pehe, naive_pehe, ate_error, naive_ate_error) over G."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for plan, series in rows.items():
        for ax, key in ((left, "pehe"), (right, "ate_error")):
            ax.plot(strengths, series[key], "o-", label=f"{plan}, adjusted")
            ax.plot(strengths, series[f"naive_{key}"], "s--", label=f"{plan}, naive")
    left.set(xlabel="confounding strength G", ylabel="PEHE", title="per-patient error")
    right.set(xlabel="confounding strength G", ylabel="|ATE error|",
              title="average-effect error")
    right.axhline(0.02, c="grey", ls=":")
    left.legend(fontsize=7)
    return save_figure(fig, path)
