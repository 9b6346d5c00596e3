"""Fitting the treatment-effect model of `python -m training.train --task effect`.

The question (DESIGN.md, "Tasks: treatment effect"): given a stay up to its decision hour
and a plan from then on, the risk of death and the MAP over the next hours under that
plan. In the data, treatment follows the observed state (sicker-looking patients are
treated more and sooner), so the outcome under each plan is confounded, and every earlier
treatment changed the state the next decision read: the confounding is time-varying.

Adjustment: inverse-probability weighting of a marginal structural model, as R-MSN (Lim
et al., NeurIPS 2018). A propensity network (models/effect.py) learns P(plan | history);
the outcome network is fitted with each stay weighted by its stabilised weight
P(plan) / P(plan | history), so that in the weighted cohort the plan no longer depends on
the history and the network cannot learn "treated patients die more". Chosen over CRN's
adversarial balancing and over g-computation (G-Net) because:
- the propensity network is needed anyway: the service reports how well the data support
  each plan, and the checkpoint carries it;
- the adjusted estimator and the naive baseline are then the same network, the same seed
  and the same loss, differing only in the weights, so the comparison isolates the
  adjustment;
- CRN's gradient-reversal schedule trades factual accuracy against balance and is fragile
  over the few epochs a 2-core budget allows; g-computation needs a generative model of
  every covariate under the plan, far more than the risk and MAP asked for.
In these cohorts the record follows the chosen plan exactly from the decision hour, so
R-MSN's product of per-step treatment probabilities over the plan reduces to the
probability of the plan chosen at the decision; the treatments before it, and the states
they changed, are in the history both networks condition on. Weights are truncated at the
1st and 99th percentiles of the training split and normalised to mean 1 (Cole & Hernán,
2008): the usual guard against a few near-zero propensities owning the loss.

Each estimator is a small ensemble (`effect_members`, different seeds) whose mean is the
point estimate. Intervals: split conformal calibration on the validation split's
counterfactual truth (counterfactuals.parquet), per plan, with scores scaled locally by
max(risk under the plan, risk without it) + 0.01, since a risk difference can reach no
further: narrow where both risks are small, wide where much is at stake.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from models.effect import (
    EffectConfig,
    EffectModel,
    EffectNet,
    PropensityNet,
    history_inputs,
    interval_scale,
    match_plans,
    plan_inputs,
)
from models.features import Grid, Normalizer, Tensors, tensorise
from training.config import TrainConfig
from training.data import Dataset
from training.interventions import PLANS, canonical_plan, plan_rows
from training.loop import Distributed, fit
from training.simulator import Plan
from training.splits import Split

__all__ = [
    "NOMINAL_COVERAGE",
    "EffectStays",
    "EffectTask",
    "FittedEffect",
    "PropensityTask",
    "calibrate_intervals",
    "canonical_templates",
    "check_effect_data",
    "conformal_quantiles",
    "effect_stays",
    "fit_effect",
    "stabilised_weights",
]

log = logging.getLogger(__name__)

NOMINAL_COVERAGE = 0.9  # the intervals' target coverage of the per-patient true effect
MAP_WEIGHT = 0.5  # weight of the MAP forecast loss beside the risk loss
TRUNCATE = (1.0, 99.0)  # percentiles at which the stabilised weights are truncated
_EVAL_BATCH = 1024


def canonical_templates(normalizer: Normalizer, grid: Grid) -> np.ndarray:
    """(P, T, I) each canonical plan on the grid for a decision at bin 0, raw units, from the
    generator's own definition (training.interventions.canonical_plan)."""
    rows = [plan_rows(canonical_plan(Plan.none(1), np.array([0]), name), np.array([name]))
            for name in PLANS]
    t = tensorise(pd.concat(rows, ignore_index=True), normalizer, grid,
                  patient_ids=list(PLANS))
    return t.interventions.astype(np.float64)


@dataclass
class EffectStays:
    """N stays at their decision bins, ready for the effect networks."""

    ids: list[str]
    hist: Tensors  # tensorised up to each decision bin
    x: Tensor  # (N, T, 3F + 3I) history input
    static: Tensor  # (N, S)
    step_mask: Tensor  # (N, T)
    decision: Tensor  # (N,) long: decision bin D
    plan: Tensor  # (N, T, I) the factual plan from D on (bin k = D + k), network scale
    plan_class: Tensor  # (N,) long: index into PLANS
    died: Tensor  # (N,) float 0/1
    map_target: Tensor  # (N, m) MAP measured in plan bins 0..m-1, normalised
    map_mask: Tensor  # (N, m) 1 where measured
    weight: Tensor  # (N,) stabilised IPW (1 until `stabilised_weights` fills it)

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device) -> EffectStays:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), Tensor)})

    def subset(self, keep: np.ndarray) -> EffectStays:
        idx = np.flatnonzero(keep)
        moved = {f.name: getattr(self, f.name)[torch.from_numpy(idx)] for f in fields(self)
                 if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, ids=[self.ids[i] for i in idx], hist=self.hist.select(idx),
                       **moved)


def check_effect_data(ds: Dataset) -> None:
    """What the effect task needs beyond a risk task's data, checked before any fitting."""
    if ds.truth is None or "decision_hour" not in ds.truth.columns:
        raise ValueError("the effect task needs each stay's decision hour (truth.parquet "
                         "column decision_hour): train on a cohort from "
                         "`python -m training.synthesize --confounding G`")
    if ds.counterfactuals is None:
        raise ValueError("the effect task calibrates its intervals on counterfactual truth "
                         "(counterfactuals.parquet from `python -m training.synthesize "
                         "--confounding G`); the data directory has none")


def decision_bins(ds: Dataset, ids: list[str], grid: Grid) -> np.ndarray:
    """Each stay's decision bin, from truth.parquet's decision_hour."""
    check_effect_data(ds)
    assert ds.truth is not None  # noqa: S101 - checked above, for mypy
    dh = ds.truth.set_index(ds.truth["patient_id"].astype(str))["decision_hour"]
    hours = pd.to_numeric(dh.reindex(ids)).to_numpy(np.float64)
    bins = hours / grid.step_hours
    if not np.isfinite(bins).all() or (np.abs(bins - np.round(bins)) > 1e-9).any():
        raise ValueError(f"decision hours must be whole multiples of the grid step "
                         f"({grid.step_hours:g} h) for every stay")
    d = np.round(bins).astype(np.int64)
    if (d < 1).any() or (d >= grid.n_steps).any():
        raise ValueError(f"decision hours must lie inside the {grid.n_steps} bin window")
    return d


def effect_stays(ds: Dataset, ids: list[str], normalizer: Normalizer, grid: Grid,
                 templates: np.ndarray, cfg: EffectConfig) -> EffectStays:
    """History up to each decision bin, the factual plan after it, outcome and MAP."""
    window = grid.n_steps * grid.step_hours
    obs = ds.observations[ds.observations["time_hours"] < window]
    obs = obs[obs["patient_id"].isin(set(ids))]
    d = decision_bins(ds, ids, grid)
    hist = tensorise(obs, normalizer, grid, patients=ds.patients, patient_ids=ids,
                     until_hours=d * grid.step_hours)
    full = tensorise(obs, normalizer, grid, patients=ds.patients, patient_ids=ids)
    n, t = len(ids), grid.n_steps
    rows = np.arange(n)[:, None]
    ahead = d[:, None] + np.arange(t)[None, :]  # (N, T) absolute bin of plan bin k
    inside = ahead < t
    at = np.clip(ahead, 0, t - 1)
    plan = np.where(inside[:, :, None], full.interventions[rows, at], 0.0).astype(np.float64)
    plan_class = match_plans(plan[:, None], d, templates)[:, 0]
    m = cfg.map_steps
    j = max(cfg.map_index, 0)
    map_in = inside[:, :m] & (cfg.map_index >= 0)
    map_target = np.where(map_in, full.values[rows, at[:, :m], j], 0.0)
    map_mask = np.where(map_in, full.mask[rows, at[:, :m], j], 0.0)
    x, step_mask = history_inputs(hist, d)
    died = pd.to_numeric(ds.patients.set_index(ds.patients["patient_id"].astype(str))["died"])
    return EffectStays(
        ids=list(ids), hist=hist, x=torch.from_numpy(x), static=torch.from_numpy(hist.static),
        step_mask=torch.from_numpy(step_mask), decision=torch.from_numpy(d),
        plan=torch.from_numpy(plan_inputs(plan)), plan_class=torch.from_numpy(plan_class),
        died=torch.as_tensor(died.reindex(ids).to_numpy(np.float32)),
        map_target=torch.as_tensor(map_target, dtype=torch.float32),
        map_mask=torch.as_tensor(map_mask, dtype=torch.float32),
        weight=torch.ones(n))


def _batches(n: int) -> list[slice]:
    return [slice(i, i + _EVAL_BATCH) for i in range(0, n, _EVAL_BATCH)]


def _auroc(y: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")


@dataclass
class PropensityTask:
    """Cross-entropy of the plan chosen at the decision, given the history."""

    train: EffectStays
    val: EffectStays

    def __post_init__(self) -> None:
        self.n_train = len(self.train)

    def batch_loss(self, model: nn.Module, idx: Tensor, rng: np.random.Generator) -> Tensor:
        s = self.train
        logits = model(s.x[idx], s.static[idx], s.step_mask[idx], s.decision[idx])
        return F.cross_entropy(logits, s.plan_class[idx])

    def validate(self, model: nn.Module) -> dict[str, float]:
        probs = predict_propensity(model, self.val)
        y = self.val.plan_class.cpu().numpy()
        p = probs[np.arange(len(y)), y]
        return {"loss": float(-np.log(np.clip(p, 1e-12, None)).mean()),
                "accuracy": float((probs.argmax(axis=1) == y).mean())}


def predict_propensity(model: nn.Module, s: EffectStays) -> np.ndarray:
    """(N, P) P(plan class | history)."""
    out = []
    with torch.no_grad():
        for sl in _batches(len(s)):
            logits = model(s.x[sl], s.static[sl], s.step_mask[sl], s.decision[sl])
            out.append(torch.softmax(logits.double(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(PLANS)))


def stabilised_weights(probs: np.ndarray, plan_class: np.ndarray, marginal: np.ndarray,
                       bounds: tuple[float, float] | None = None
                       ) -> tuple[np.ndarray, tuple[float, float]]:
    """P(plan) / P(plan | history) for each stay's own plan, truncated at `bounds` (default:
    the TRUNCATE percentiles of these weights) and normalised to mean 1."""
    p = probs[np.arange(len(plan_class)), plan_class]
    w = marginal[plan_class] / np.clip(p, 1e-6, None)
    if bounds is None:
        lo, hi = np.percentile(w, TRUNCATE)
        bounds = (float(lo), float(hi))
    w = np.clip(w, *bounds)
    return w / w.mean(), bounds


@dataclass
class EffectTask:
    """Weighted (adjusted) or unweighted (naive) risk BCE + MAP MSE on the factual plan."""

    train: EffectStays
    val: EffectStays
    weighted: bool

    def __post_init__(self) -> None:
        self.n_train = len(self.train)

    def _loss(self, model: nn.Module, s: EffectStays, idx: Tensor | slice) -> Tensor:
        logit, fc = model(s.x[idx], s.static[idx], s.step_mask[idx], s.decision[idx],
                          s.plan[idx])
        per = F.binary_cross_entropy_with_logits(logit, s.died[idx], reduction="none")
        if fc is not None:
            mask = s.map_mask[idx]
            sq = ((fc - s.map_target[idx]) ** 2 * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            per = per + MAP_WEIGHT * sq
        if not self.weighted:
            return per.sum()
        return (per * s.weight[idx]).sum()

    def batch_loss(self, model: nn.Module, idx: Tensor, rng: np.random.Generator) -> Tensor:
        return self._loss(model, self.train, idx) / len(idx)

    def validate(self, model: nn.Module) -> dict[str, float]:
        v = self.val
        with torch.no_grad():
            total = sum(float(self._loss(model, v, sl)) for sl in _batches(len(v)))
            logits = torch.cat([model(v.x[sl], v.static[sl], v.step_mask[sl], v.decision[sl],
                                      v.plan[sl])[0].cpu() for sl in _batches(len(v))])
        return {"loss": total / max(len(v), 1),
                "auroc": _auroc(v.died.cpu().numpy(), logits.numpy())}


def conformal_quantiles(scores: np.ndarray, nominal: float) -> tuple[float, float]:
    """Split-conformal (lo, hi) quantiles of scaled residuals for a two-sided interval of
    coverage `nominal`, with the finite-sample correction (Lei et al., 2018)."""
    n = len(scores)
    if n == 0:
        return (0.0, 0.0)
    alpha = 1.0 - nominal
    k_hi = min(math.ceil((n + 1) * (1 - alpha / 2)), n)
    k_lo = max(math.floor((n + 1) * (alpha / 2)), 1)
    ordered = np.sort(scores)
    return float(ordered[k_lo - 1]), float(ordered[k_hi - 1])


def true_risks(ds: Dataset, ids: list[str], plans: tuple[str, ...]) -> np.ndarray:
    """(N, P) counterfactual true risk of each stay under each plan."""
    check_effect_data(ds)
    assert ds.counterfactuals is not None  # noqa: S101 - checked above, for mypy
    cf = ds.counterfactuals.pivot(index="patient_id", columns="plan", values="true_risk")
    missing = [p for p in plans if p not in cf.columns]
    if missing:
        raise ValueError(f"counterfactuals.parquet lacks plan(s) {missing}")
    return cf.reindex(ids)[list(plans)].to_numpy(np.float64)


def calibrate_intervals(model: EffectModel, val: EffectStays, truth: np.ndarray
                        ) -> dict[str, float]:
    """Fill `model.interval` by split conformal calibration on the validation stays and
    their counterfactual true risks (N, P); returns the validation PEHE of both estimators."""
    dec = val.decision.cpu().numpy()
    out = model.outcomes(val.hist, dec, model.canonical_plans(dec))
    metrics = {}
    for q, name in enumerate(PLANS[1:], start=1):
        tau_hat = out.risk[:, q] - out.risk[:, 0]
        tau = truth[:, q] - truth[:, 0]
        scores = (tau - tau_hat) / interval_scale(out.risk[:, q], out.risk[:, 0])
        model.interval[name] = conformal_quantiles(scores, NOMINAL_COVERAGE)
        naive = out.naive_risk[:, q] - out.naive_risk[:, 0]
        metrics[f"effect_val_{name}_pehe"] = float(np.sqrt(np.mean((tau_hat - tau) ** 2)))
        metrics[f"effect_val_{name}_naive_pehe"] = float(np.sqrt(np.mean((naive - tau) ** 2)))
    return metrics


@dataclass
class FittedEffect:
    model: EffectModel
    metrics: dict[str, Any]  # validation figures, prefixed effect_


_Net = TypeVar("_Net", EffectNet, PropensityNet)


def _seeded(builder: Callable[[EffectConfig], _Net], ecfg: EffectConfig, seed: int,
            device: torch.device) -> _Net:
    """A fresh network whose initial weights depend on `seed` alone."""
    torch.manual_seed(seed)
    return builder(ecfg).to(device)


def fit_effect(cfg: TrainConfig, ds: Dataset, split: Split, normalizer: Normalizer,
               grid: Grid, d: Distributed) -> FittedEffect:
    """Propensity network, stabilised weights, adjusted and naive ensembles, intervals."""
    check_effect_data(ds)
    templates = canonical_templates(normalizer, grid)
    features = list(normalizer.features)
    ecfg = EffectConfig(arch=cfg.arch, n_features=len(features),
                        n_interventions=templates.shape[2],
                        n_static=normalizer.n_static_inputs, n_plans=len(PLANS),
                        n_steps=grid.n_steps, hidden=cfg.hidden, dropout=cfg.dropout,
                        map_index=features.index("map") if "map" in features else -1)
    stays: dict[str, EffectStays] = {}
    for part, ids in (("train", split.train), ("val", split.val)):
        s = effect_stays(ds, list(ids), normalizer, grid, templates, ecfg)
        known = s.plan_class.numpy() >= 0
        if not known.all():
            log.warning("%d %s stay(s) follow no canonical plan after the decision; left "
                        "out of the effect fit", int((~known).sum()), part)
            s = s.subset(known)
        stays[part] = s
    if len(stays["train"]) < 2 or len(stays["val"]) < 2:
        raise ValueError("too few stays follow a canonical plan to fit the effect model")
    train, val = stays["train"].to(d.device), stays["val"].to(d.device)

    prop = _seeded(PropensityNet, ecfg, cfg.seed, d.device)
    prop_fit = fit(prop, PropensityTask(train, val), cfg, d)
    prop.load_state_dict(prop_fit.best_state)
    prop.eval()
    cls_train = train.plan_class.cpu().numpy()
    marginal = np.bincount(cls_train, minlength=len(PLANS)) / len(cls_train)
    w_train, bounds = stabilised_weights(predict_propensity(prop, train), cls_train, marginal)
    w_val, _ = stabilised_weights(predict_propensity(prop, val),
                                  val.plan_class.cpu().numpy(), marginal, bounds)
    train.weight = torch.as_tensor(w_train, dtype=torch.float32, device=d.device)
    val.weight = torch.as_tensor(w_val, dtype=torch.float32, device=d.device)

    members: dict[bool, list[EffectNet]] = {True: [], False: []}
    history: dict[str, list[float]] = {"adjusted_epochs": [], "naive_epochs": []}
    for m in range(cfg.effect_members):
        for weighted in (True, False):
            net = _seeded(EffectNet, ecfg, cfg.seed + 1 + m, d.device)
            res = fit(net, EffectTask(train, val, weighted), replace(cfg, seed=cfg.seed + 1 + m),
                      d)
            net.load_state_dict(res.best_state)
            members[weighted].append(net.cpu().eval())
            history["adjusted_epochs" if weighted else "naive_epochs"].append(res.best_epoch)
    map_j = max(ecfg.map_index, 0)
    model = EffectModel(ecfg, PLANS, templates, members[True], members[False],
                        prop.cpu().eval(), {}, NOMINAL_COVERAGE,
                        float(normalizer.mean[map_j]), float(normalizer.std[map_j]),
                        (int(train.decision.min()), int(train.decision.max())))

    metrics: dict[str, Any] = {
        "effect_val_n": len(stays["val"]), "effect_weight_bounds": list(bounds),
        "effect_weight_ess": float(w_train.sum() ** 2 / (w_train ** 2).sum() / len(w_train)),
        "effect_propensity_val_loss": prop_fit.history[prop_fit.best_epoch]["val_loss"],
        "effect_best_epochs": history,
    }
    metrics.update(calibrate_intervals(model, stays["val"], true_risks(ds, stays["val"].ids,
                                                                       PLANS)))
    return FittedEffect(model, metrics)
