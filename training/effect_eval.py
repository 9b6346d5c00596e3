"""How well a checkpoint's what-if networks predict what the plans truly do.

`python -m training.evaluate` calls `effect_report` for a checkpoint of task "effect" on a
cohort with counterfactual truth (counterfactuals.parquet). Per canonical plan, against the
plan with no further intervention:

- pehe: root mean squared error of the per-patient risk difference (Hill, 2011), and
  ate_error: the absolute error of its mean, for the adjusted ensemble and the naive one;
- coverage: the share of patients whose true difference lies in the interval, beside the
  nominal coverage and the mean interval width;
- map_rmse: RMSE of the MAP forecast at hours 1..6 after the decision against the
  noise-free truth under the plan, beside the naive networks' and the last value's;
- factual_auroc: the networks' risk under the plan each patient actually got, against the
  outcome (the what-if networks see the stay up to the decision hour only).

The top level of metrics.json holds the worst plan for each figure (largest error, lowest
coverage) and names it (`pehe_plan`, ...); `effect.plans` holds every plan. Plots:
predicted against true effect, and the effect by the propensity of the plan (how strongly
the policy pushed that patient towards it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from models.checkpoint import Checkpoint
from models.effect import Outcomes, load_effect
from training.data import Dataset
from training.effect import effect_stays, true_risks
from training.effect_plots import plot_effect_by_propensity, plot_effect_scatter

__all__ = ["effect_report", "effect_summary", "plan_figures"]

_WORST_MAX = ("pehe", "ate_error", "naive_pehe", "naive_ate_error", "map_rmse",
              "naive_map_rmse", "last_value_map_rmse")


def _true_maps(ds: Dataset, ids: list[str], plans: tuple[str, ...], steps: int) -> np.ndarray:
    """(N, P, steps) noise-free MAP at hours 1..steps after the decision, per plan."""
    assert ds.counterfactuals is not None  # noqa: S101 - checked by the caller
    cf = ds.counterfactuals.set_index(["patient_id", "plan"])
    cols = [f"map_{k}" for k in range(1, steps + 1)]
    out = np.full((len(ids), len(plans), steps), np.nan)
    if not all(c in cf.columns for c in cols):
        return out
    for q, plan in enumerate(plans):
        rows = cf.xs(plan, level="plan").reindex(ids)
        out[:, q] = rows[cols].to_numpy(np.float64)
    return out


def _rmse(pred: np.ndarray | None, truth: np.ndarray) -> float | None:
    if pred is None:
        return None
    ok = np.isfinite(truth) & np.isfinite(pred)
    return float(np.sqrt(np.mean((pred[ok] - truth[ok]) ** 2))) if ok.any() else None


def plan_figures(out: Outcomes, truth: np.ndarray, maps: np.ndarray, q: int,
                 interval: np.ndarray | None) -> dict[str, Any]:
    """Figures of plan q (index into the classes; 0 is no further intervention)."""
    fig: dict[str, Any] = {}
    if q > 0:
        tau = truth[:, q] - truth[:, 0]
        for prefix, risk in (("", out.risk), ("naive_", out.naive_risk)):
            est = risk[:, q] - risk[:, 0]
            fig[f"{prefix}pehe"] = float(np.sqrt(np.mean((est - tau) ** 2)))
            fig[f"{prefix}ate"] = float(est.mean())
            fig[f"{prefix}ate_error"] = abs(float(est.mean() - tau.mean()))
        fig["true_ate"] = float(tau.mean())
        if interval is not None:
            fig["coverage"] = float(np.mean((tau >= interval[:, 0]) & (tau <= interval[:, 1])))
            fig["interval_width"] = float(np.mean(interval[:, 1] - interval[:, 0]))
    fig["map_rmse"] = _rmse(None if out.map is None else out.map[:, q], maps[:, q])
    fig["naive_map_rmse"] = _rmse(None if out.naive_map is None else out.naive_map[:, q],
                                  maps[:, q])
    last = None if out.last_map is None else np.repeat(out.last_map[:, None], maps.shape[2], 1)
    fig["last_value_map_rmse"] = _rmse(last, maps[:, q])
    fig["mean_propensity"] = float(out.propensity[:, q].mean())
    return fig


def effect_report(ckpt: Checkpoint, ds: Dataset, ids: list[str], out_dir: Path
                  ) -> dict[str, Any]:
    """The "effect" block of metrics.json (see module docstring), and its plots."""
    model = load_effect(ckpt)
    plans = model.plans
    stays = effect_stays(ds, ids, ckpt.normalizer, ckpt.grid, model.templates, model.cfg)
    dec = stays.decision.numpy()
    out = model.outcomes(stays.hist, dec, model.canonical_plans(dec))
    truth = true_risks(ds, stays.ids, plans)
    maps = _true_maps(ds, stays.ids, plans, model.cfg.map_steps)
    classes = np.arange(len(plans))[None, :].repeat(len(dec), 0)
    intervals = model.intervals(out.risk - out.risk[:, :1], out.risk, out.risk[:, :1],
                                classes)  # (N, P, 2)
    per_plan = {p: plan_figures(out, truth, maps, q, intervals[:, q] if q else None)
                for q, p in enumerate(plans)}
    report: dict[str, Any] = {"effect": {"n": len(dec), "nominal_coverage": model.nominal,
                                         "members": len(model.adjusted), "plans": per_plan}}
    effect_plans = {p: f for p, f in per_plan.items() if p != plans[0]}
    for key in _WORST_MAX:
        values = {p: f[key] for p, f in (effect_plans if "map" not in key else per_plan).items()
                  if f.get(key) is not None}
        if values:
            worst = max(values, key=lambda p: values[p])
            report[key], report[f"{key}_plan"] = values[worst], worst
    cover = {p: f["coverage"] for p, f in effect_plans.items() if "coverage" in f}
    if cover:
        worst = min(cover, key=lambda p: cover[p])
        report["coverage"], report["coverage_plan"] = cover[worst], worst
    y = stays.died.numpy()
    plan = stays.plan_class.numpy()
    if len(np.unique(y)) == 2:
        rows = np.arange(len(y))
        report["factual_auroc"] = float(roc_auc_score(y, out.risk[rows, plan]))
        report["naive_factual_auroc"] = float(roc_auc_score(y, out.naive_risk[rows, plan]))
    est = {p: out.risk[:, q] - out.risk[:, 0] for q, p in enumerate(plans) if q}
    naive = {p: out.naive_risk[:, q] - out.naive_risk[:, 0] for q, p in enumerate(plans) if q}
    true = {p: truth[:, q] - truth[:, 0] for q, p in enumerate(plans) if q}
    prop = {p: out.propensity[:, q] for q, p in enumerate(plans) if q}
    report["plots"] = [plot_effect_scatter(true, est, naive, out_dir / "effect_scatter.png").name,
                       plot_effect_by_propensity(prop, true, est, naive,
                                                 out_dir / "effect_by_propensity.png").name]
    return report


def effect_summary(m: dict[str, Any]) -> list[str]:
    """Lines for the evaluate CLI's summary."""
    lines = []
    for key in ("pehe", "ate_error", "coverage", "map_rmse"):
        if m.get(key) is None:
            continue
        naive = m.get(f"naive_{key}")
        extra = f" (naive {naive:.4f})" if naive is not None else ""
        if key == "map_rmse" and m.get("last_value_map_rmse") is not None:
            extra += f" (last value {m['last_value_map_rmse']:.2f})"
        lines.append(f"{key} {m[key]:.4f}{extra}, worst plan {m[f'{key}_plan']}")
    if m.get("factual_auroc") is not None:
        lines.append(f"factual AUROC of the what-if networks {m['factual_auroc']:.3f} "
                     f"(naive {m['naive_factual_auroc']:.3f})")
    return lines
