"""Evaluate the newest version of a checkpoint on a data directory and write a report.

    python -m training.evaluate --model-dir DIR --name NAME --data DIR --out REPORT_DIR
                                [--version V] [--bootstrap N] [--explain-sample N]

Scores every patient of the data directory, unless it is the data the model was trained
on (same fingerprint): then only that run's held-out test split. Scoring goes through
`models.predict` — the service's own path — on the first `window` hours of each stay.

Writes REPORT_DIR/metrics.json and PNG plots. Risk checkpoints: AUROC, AUPRC, Brier, ECE and
LOS MAE, each with a bootstrap 95 % interval; the same for the baselines (NEWS2, last-value
logistic regression, SAPS-I where present, the oracle where ground truth exists) and the
paired difference model - baseline; on synthetic data, attention faithfulness (attention
mass at or after the true onset vs the share a uniform weighting gives) and how often the
top integrated-gradients variable is one the deterioration drives. Forecast checkpoints:
MAE per target against the carry-forward forecast. Effect checkpoints (`--task effect`) on
a cohort with counterfactual truth: the risk figures plus the what-if figures of
`training.effect_eval` (pehe, ate_error, coverage, map_rmse, ...; worst plan on top).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.catalogue import CATALOGUE
from models.checkpoint import Checkpoint, CheckpointError, latest_version_dir, load_checkpoint
from models.features import Tensors, tensorise
from models.predict import Prediction, score, score_tensors
from training.baselines import LastValueModel, last_value_matrix, news2_scores, patient_column
from training.data import Dataset, load_dataset
from training.effect_eval import effect_report, effect_summary
from training.metrics import binary_report, bootstrap_indices, compare_auroc, mean_abs_error
from training.report_plots import (
    EXAMPLE_VITALS,
    AttentionExample,
    plot_attention_examples,
    plot_forecast_errors,
    plot_los,
    plot_reliability,
    plot_roc,
)

__all__ = ["EvalConfig", "evaluate", "main"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    model_dir: str  # where the checkpoint lives
    name: str  # checkpoint name; the newest version is evaluated unless `version`
    data: str  # data directory to score
    out: str  # report directory (created)
    version: str | None = None  # a specific version instead of the newest
    n_boot: int = 500  # bootstrap resamples for the 95 % intervals
    seed: int = 0  # bootstrap, example and prefix draws
    explain_sample: int = 200  # stays explained with integrated gradients (slow part)
    n_examples: int = 4  # patients in the attention heat-map
    train_data: str | None = None  # where to fit the last-value LR (default: the ckpt's data)


def _load(cfg: EvalConfig) -> Checkpoint:
    if cfg.version:
        path = Path(cfg.model_dir) / cfg.name / cfg.version
    else:
        found = latest_version_dir(cfg.model_dir, cfg.name)
        if found is None:
            raise CheckpointError(f"no published version of {cfg.name!r} in {cfg.model_dir}")
        path = found
    return load_checkpoint(path)


def _table(patients: pd.DataFrame) -> pd.DataFrame:
    return patients.set_index(patients["patient_id"].astype(str))


def _cohort(ckpt: Checkpoint, ds: Dataset) -> tuple[list[str], str]:
    """The ids to score and a phrase saying which."""
    pats = _table(ds.patients)
    observed = set(ds.observations["patient_id"].astype(str).unique())
    died = pd.to_numeric(pats["died"], errors="coerce")
    usable = [i for i in pats.index[died.notna()] if i in observed]
    split = ckpt.extra.get("split") or {}
    if ckpt.fingerprint and ds.fingerprint == ckpt.fingerprint:
        if not split.get("test_ids"):
            raise ValueError(f"{ckpt.name} was trained on this data with no held-out test "
                             f"split, so every patient here was seen in training; evaluate "
                             f"it on another cohort (or train with a test fraction in --split)")
        test = set(split["test_ids"])
        return sorted(i for i in usable if i in test), "held-out test split of the training data"
    return sorted(usable), "all patients (data not seen in training)"


def _lr_baseline(ckpt: Checkpoint, ds: Dataset, obs: pd.DataFrame, ids: list[str],
                 window: float, cfg: EvalConfig) -> tuple[np.ndarray, str]:
    """Last-value LR probabilities for `ids`, and where it was fitted."""
    x_eval = last_value_matrix(obs, ds.patients, ids, window)
    y_eval = pd.to_numeric(_table(ds.patients)["died"]).reindex(ids).to_numpy(np.float64)
    split_test = set((ckpt.extra.get("split") or {}).get("test_ids", []))
    candidates = [cfg.train_data] if cfg.train_data else []
    candidates.append(str(ckpt.extra.get("data_dir", "")))
    for cand in candidates:
        if not cand or not Path(cand).is_dir():
            continue
        train_ds = ds if Path(cand).resolve() == Path(cfg.data).resolve() else \
            load_dataset(cand)
        if cfg.train_data is None and train_ds.fingerprint != ckpt.fingerprint:
            continue
        pats = _table(train_ds.patients)
        died = pd.to_numeric(pats["died"], errors="coerce")
        train_ids = [i for i in pats.index[died.notna()] if i not in split_test
                     and i not in set(ids)]
        if len(train_ids) < 20:
            continue
        x_tr = last_value_matrix(train_ds.observations, train_ds.patients, train_ids, window)
        model = LastValueModel().fit(x_tr, died.reindex(train_ids).to_numpy(np.float64))
        return model.predict(x_eval), "training cohort (test split excluded)"
    return LastValueModel.cross_fitted(x_eval, y_eval, cfg.seed), \
        "5-fold cross-fitted on the evaluated cohort"


def _attention_faithfulness(preds: list[Prediction], onset: np.ndarray,
                            step_hours: float) -> dict[str, Any]:
    """Mean attention mass on bins ending after the true onset, vs the uniform share.

    Only stays whose observed span straddles the onset count: where every bin lies after
    it, any weighting puts all its mass there and the comparison says nothing.
    """
    mass, uniform = [], []
    for p, h in zip(preds, onset, strict=True):
        if not np.isfinite(h):
            continue
        t = np.arange(len(p.step_mask))
        after = (p.offset + t + 1) * step_hours > h
        share = float((p.step_mask & after).sum() / max(p.step_mask.sum(), 1))
        if 0.0 < share < 1.0:
            mass.append(float(p.attention[after].sum()))
            uniform.append(share)
    if not mass:
        return {"n": 0}
    m, u = float(np.mean(mass)), float(np.mean(uniform))
    return {"n": len(mass), "mass_after_onset": m, "uniform_share_after_onset": u,
            "ratio": m / u if u > 0 else None,
            "share_of_stays_above_uniform": float(np.mean(np.array(mass) > np.array(uniform)))}


def _top_variable(ckpt: Checkpoint, obs: pd.DataFrame, patients: pd.DataFrame,
                  ids: list[str], truth: pd.DataFrame, cfg: EvalConfig) -> dict[str, Any]:
    """How often the top integrated-gradients variable is one the deterioration drives."""
    t = truth.set_index(truth["patient_id"].astype(str)).reindex(ids)
    with_onset = [i for i, h in zip(ids, t["onset_hour"].to_numpy(np.float64), strict=True)
                  if np.isfinite(h)]
    if not with_onset or cfg.explain_sample <= 0:
        return {"top_variable_n": 0}
    rng = np.random.default_rng([cfg.seed, 3])
    pick = sorted(rng.choice(with_onset, min(cfg.explain_sample, len(with_onset)),
                             replace=False).tolist())
    preds = score(ckpt, obs, patients, pick, explain=True)
    features = set(ckpt.normalizer.features)
    hits, chance = [], []
    for pid, pred in zip(pick, preds, strict=True):
        driven = {d.strip() for d in str(t.at[pid, "driven"]).split(",") if d.strip()}
        contrib = pred.contributions or {}
        if not contrib or not driven:
            continue
        top = max(contrib, key=lambda k: abs(contrib[k]))
        hits.append(top in driven)
        chance.append(len(driven & features) / len(features))
    if not hits:
        return {"top_variable_n": 0}
    return {"top_variable_n": len(hits), "top_variable_driven_rate": float(np.mean(hits)),
            "chance_rate": float(np.mean(chance))}


def _examples(preds: list[Prediction], ids: list[str], probs: np.ndarray, y: np.ndarray,
              obs: pd.DataFrame, onset: np.ndarray | None, step: float,
              cfg: EvalConfig) -> list[AttentionExample]:
    """A few stays to draw: the highest-risk deaths with an onset, then a survivor."""
    order = np.argsort(-probs)
    dead = [i for i in order if y[i] == 1 and (onset is None or np.isfinite(onset[i]))]
    alive = [i for i in order[::-1] if y[i] == 0]
    chosen = dead[: max(cfg.n_examples - 1, 1)] + alive[:1]
    rows = obs[obs["patient_id"].astype(str).isin({ids[i] for i in chosen})]
    out = []
    for k, i in enumerate(chosen):
        p = preds[i]
        mine = rows[rows["patient_id"].astype(str) == ids[i]]
        series = {}
        for v in EXAMPLE_VITALS:
            r = mine[mine["variable"] == v].sort_values("time_hours")
            series[v] = (r["time_hours"].to_numpy(np.float64), r["value"].to_numpy(np.float64))
        hours = (p.offset + np.arange(len(p.attention))) * step
        out.append(AttentionExample(
            title=f"example {k + 1}: {'died' if y[i] else 'survived'}, "
                  f"predicted risk {probs[i]:.2f}",
            hours=hours, attention=p.attention, series=series,
            onset_hour=None if onset is None else float(onset[i])))
    return out


def _risk_report(ckpt: Checkpoint, ds: Dataset, obs: pd.DataFrame, ids: list[str],
                 window: float, cfg: EvalConfig, out: Path) -> dict[str, Any]:
    pats = _table(ds.patients)
    y = pd.to_numeric(pats["died"]).reindex(ids).to_numpy(np.float64)
    los_true = pd.to_numeric(pats["los_days"], errors="coerce").reindex(ids).to_numpy(
        np.float64)
    los_true = np.where(los_true < 0, np.nan, los_true)  # negative = unknown
    preds = score(ckpt, obs, ds.patients, ids)
    p = np.array([q.probability for q in preds])
    los_pred = np.array([q.los_days for q in preds])
    boot = bootstrap_indices(len(ids), cfg.n_boot, cfg.seed)

    metrics: dict[str, Any] = {"n": len(ids), "prevalence": float(y.mean())}
    metrics.update({k: v for k, v in binary_report(y, p, boot).items() if k != "n"})
    los = mean_abs_error(los_pred, los_true, boot)
    metrics["los_mae"], metrics["los_mae_ci"] = los["mae"], los["mae_ci"]

    baselines: dict[str, dict[str, Any]] = {}
    scores: dict[str, np.ndarray] = {"model": p}
    news = news2_scores(obs, ids, window)
    baselines["news2"] = binary_report(y, news, boot, probability=False)
    scores["NEWS2"] = news
    lr, fitted_on = _lr_baseline(ckpt, ds, obs, ids, window, cfg)
    baselines["last_value_lr"] = dict(binary_report(y, lr, boot), fitted_on=fitted_on)
    scores["last-value LR"] = lr
    saps = patient_column(ds.patients, "saps_i", ids)
    if np.isfinite(saps).any():
        baselines["saps_i"] = binary_report(y, saps, boot, probability=False)
        scores["SAPS-I"] = saps
    onset = None
    if ds.truth is not None:
        truth = ds.truth.set_index(ds.truth["patient_id"].astype(str)).reindex(ids)
        oracle = truth["true_risk"].to_numpy(np.float64)
        baselines["oracle"] = binary_report(y, oracle, boot)
        scores["oracle (true risk)"] = oracle
        onset = truth["onset_hour"].to_numpy(np.float64)
    metrics["baselines"] = baselines
    for key, rep in baselines.items():
        metrics[f"{key}_auroc"] = rep.get("auroc")
        metrics[f"{key}_auroc_ci"] = rep.get("auroc_ci")
    metrics["lr_auroc"] = metrics.get("last_value_lr_auroc")
    metrics["comparisons"] = {f"auroc_minus_{key}": compare_auroc(y, p, scores[label], boot)
                              for key, label in (("news2", "NEWS2"), ("last_value_lr",
                                                                      "last-value LR"),
                                                 ("saps_i", "SAPS-I"),
                                                 ("oracle", "oracle (true risk)"))
                              if label in scores}
    if "oracle_auroc" in metrics and metrics["oracle_auroc"]:
        metrics["auroc_over_oracle"] = metrics["auroc"] / metrics["oracle_auroc"]

    if ds.truth is not None and onset is not None:
        att = _attention_faithfulness(preds, onset, ckpt.grid.step_hours)
        att.update(_top_variable(ckpt, obs, ds.patients, ids, ds.truth, cfg))
        metrics["attention"] = att

    plots = [plot_roc(y, scores, out / "roc.png"),
             plot_reliability(y, {k: v for k, v in scores.items()
                                  if k in ("model", "oracle (true risk)")}, out /
                              "reliability.png"),
             plot_los(los_pred, los_true, out / "los.png"),
             plot_attention_examples(_examples(preds, ids, p, y, obs, onset,
                                               ckpt.grid.step_hours, cfg),
                                     ckpt.grid.step_hours, out / "attention.png")]
    metrics["plots"] = [pl.name for pl in plots]
    return metrics


def _forecast_report(ckpt: Checkpoint, ds: Dataset, obs: pd.DataFrame, ids: list[str],
                     cfg: EvalConfig, out: Path) -> dict[str, Any]:
    """MAE per target in canonical units, forecast vs carry-forward, at seeded prefixes."""
    targets = [str(t) for t in ckpt.extra["targets"]]
    horizon = int(ckpt.extra["horizon"])
    feats = list(ckpt.normalizer.features)
    tidx = [feats.index(t) for t in targets]
    grid = ckpt.grid
    full: Tensors = tensorise(obs, ckpt.normalizer, grid, patients=ds.patients,
                              patient_ids=ids)
    any_obs = full.mask.any(axis=2)  # (N, T)
    first = np.where(any_obs.any(axis=1), any_obs.argmax(axis=1), grid.n_steps)
    lo = np.maximum(int(np.ceil(6.0 / grid.step_hours)), first + 1)
    rng = np.random.default_rng([cfg.seed, 5])
    n_bins = rng.integers(np.minimum(lo, grid.n_steps - 1), grid.n_steps)  # [lo, T-1]
    prefix = tensorise(obs, ckpt.normalizer, grid, patients=ds.patients, patient_ids=ids,
                       until_hours=n_bins * grid.step_hours)
    preds = score_tensors(ckpt, prefix)
    fc = np.stack([q.forecast for q in preds if q.forecast is not None])  # (N, H, K)
    t = np.arange(grid.n_steps)
    last = np.where(prefix.step_mask, t, -1).max(axis=1)  # (N,)
    ahead = last[:, None] + 1 + np.arange(horizon)[None, :]  # (N, H)
    inside = (ahead < grid.n_steps) & (last[:, None] >= 0)
    rows = np.clip(ahead, 0, grid.n_steps - 1)
    n_idx = np.arange(len(ids))[:, None]
    truth_z = full.values[n_idx, rows][:, :, tidx]  # (N, H, K)
    seen = full.mask[n_idx, rows][:, :, tidx] * inside[:, :, None]
    carry_z = prefix.values[np.arange(len(ids)), np.clip(last, 0, None)][:, tidx]  # (N, K)
    truth_x = ckpt.normalizer.denormalise(truth_z, tidx)
    fc_x = ckpt.normalizer.denormalise(fc, tidx)
    cf_x = ckpt.normalizer.denormalise(np.repeat(carry_z[:, None, :], horizon, axis=1), tidx)
    per_target: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(targets):
        m = seen[:, :, k] > 0
        if not m.any():
            continue
        per_target[name] = {
            "mae": float(np.abs(fc_x[:, :, k] - truth_x[:, :, k])[m].mean()),
            "carry_forward_mae": float(np.abs(cf_x[:, :, k] - truth_x[:, :, k])[m].mean()),
            "n": int(m.sum()), "unit": CATALOGUE[name].shown_unit}
    ratios = [v["mae"] / v["carry_forward_mae"] for v in per_target.values()
              if v["carry_forward_mae"] > 0]
    plot = plot_forecast_errors(per_target, out / "forecast_mae.png")
    return {"n": len(ids), "horizon_steps": horizon, "targets": per_target,
            "mae_ratio_mean": float(np.mean(ratios)) if ratios else None,
            "targets_better_than_carry_forward": int(sum(r < 1 for r in ratios)),
            "plots": [plot.name]}


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Score, compare, plot; returns the metrics written to `<out>/metrics.json`."""
    ckpt = _load(cfg)
    ds = load_dataset(cfg.data)
    ids, scope = _cohort(ckpt, ds)
    if len(ids) < 2:
        raise ValueError(f"{cfg.data}: fewer than 2 patients with an outcome to evaluate")
    window = ckpt.grid.n_steps * ckpt.grid.step_hours
    obs = ds.observations[ds.observations["time_hours"] < window]
    obs = obs[obs["patient_id"].astype(str).isin(set(ids))]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if ckpt.task == "forecast":
        body = _forecast_report(ckpt, ds, obs, ids, cfg, out)
    else:
        body = _risk_report(ckpt, ds, obs, ids, window, cfg, out)
        if ckpt.task == "effect" and ds.counterfactuals is not None:  # what-if vs the truth
            effect = effect_report(ckpt, ds, ids, out)
            body["plots"] += effect.pop("plots")
            body.update(effect)
    metrics: dict[str, Any] = {
        "model": {"name": ckpt.name, "version": ckpt.version, "task": ckpt.task,
                  "architecture": ckpt.config.arch, "bidirectional": ckpt.config.bidirectional,
                  "temperature": ckpt.temperature},
        "data": {"fingerprint": ds.fingerprint, "scope": scope, "window_hours": window},
        "bootstrap": cfg.n_boot,
    }
    metrics.update(body)
    (out / "metrics.json").write_text(json.dumps(_clean(metrics), indent=2, allow_nan=False))
    return metrics


def _clean(obj: Any) -> Any:
    """NaN/inf -> null and numpy scalars -> Python, so metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _summary(m: dict[str, Any]) -> str:
    def fmt(key: str) -> str:
        v, ci = m.get(key), m.get(f"{key}_ci")
        if v is None:
            return ""
        return f"{key} {v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    if m["model"]["task"] == "forecast":
        lines = [f"{k}: MAE {v['mae']:.3g} vs carry-forward {v['carry_forward_mae']:.3g} "
                 f"{v['unit']}" for k, v in m["targets"].items()]
        return "\n".join(lines)
    keys = ("auroc", "auprc", "brier", "ece", "los_mae", "news2_auroc", "last_value_lr_auroc",
            "saps_i_auroc", "oracle_auroc")
    lines = [s for s in (fmt(k) for k in keys) if s]
    att = m.get("attention") or {}
    if att.get("n"):
        lines.append(f"attention after onset {att['mass_after_onset']:.3f} vs uniform "
                     f"{att['uniform_share_after_onset']:.3f} (n={att['n']})")
    if "top_variable_driven_rate" in att:
        lines.append(f"top variable driven {att['top_variable_driven_rate']:.3f} vs chance "
                     f"{att['chance_rate']:.3f} (n={att['top_variable_n']})")
    return "\n".join(lines + effect_summary(m))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate",
                                 description="Evaluate a checkpoint and write a report.")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True, help="report directory")
    ap.add_argument("--version", help="evaluate this version instead of the newest")
    ap.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--explain-sample", type=int, default=200,
                    help="stays explained with integrated gradients (0 = skip)")
    ap.add_argument("--train-data", help="fit the last-value LR on this data directory")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.bootstrap < 10:
        print("error: --bootstrap must be >= 10", file=sys.stderr)
        return 2
    cfg = EvalConfig(args.model_dir, args.name, args.data, args.out, args.version,
                     args.bootstrap, args.seed, args.explain_sample, 4, args.train_data)
    try:
        metrics = evaluate(cfg)
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out) / 'metrics.json'} ({metrics['data']['scope']}, "
          f"n={metrics['n']})")
    print(_summary(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
