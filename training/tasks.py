"""Losses and validation for the tasks `training.train` fits: risk (+ LOS) and forecast.

Risk and prognosis are trained together on random prefixes: each stay is cut at a fresh
random length every epoch, so the model learns to answer at any hour, not only at 48 h.

Class imbalance (in-hospital death is the minority class): positives are up-weighted by
`pos_weight` (default neg/pos), and the logit is shifted by log(pos_weight) *inside* the loss
(logit adjustment, Menon et al., ICLR 2021). The weighted loss is then minimised by the true
posterior itself, so the gradient attends to the rare deaths while the network's own logit
stays a calibrated log-odds that temperature scaling only has to fine-tune.

Prognosis: Huber loss on log(1 + LOS days) — stays are right-skewed, and a few months-long
stays must not dominate the gradient. Stays without a usable LOS carry no LOS loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from models.networks import ModelOutput
from training.prefixes import StayTensors, cut_prefix, forecast_targets, sample_prefix_bins

__all__ = ["ForecastTask", "RiskTask", "infer", "risk_los_loss"]

_EVAL_BATCH = 1024  # stays per forward pass in validation (no gradients, memory is cheap)


def risk_los_loss(out: ModelOutput, died: Tensor, los: Tensor, pos_weight: float,
                  los_weight: float) -> Tensor:
    """Logit-adjusted weighted BCE on death plus `los_weight` x Huber on log1p(LOS)."""
    w = torch.tensor(pos_weight, device=died.device)
    risk = F.binary_cross_entropy_with_logits(out.risk_logit + math.log(pos_weight), died,
                                              pos_weight=w)
    ok = torch.isfinite(los)
    if not bool(ok.any()):
        return risk
    los_loss = F.smooth_l1_loss(torch.log1p(out.los[ok]), torch.log1p(los[ok]), beta=0.5)
    return risk + los_weight * los_loss


def infer(model: nn.Module, stays: StayTensors, n_bins: Tensor | None = None,
          batch_size: int = _EVAL_BATCH) -> dict[str, Tensor]:
    """Forward pass over all stays (full window, or prefixes of `n_bins`), CPU outputs."""
    logits, los, forecasts = [], [], []
    for i in range(0, len(stays), batch_size):
        sl = slice(i, i + batch_size)
        x, step_mask = stays.x[sl], stays.step_mask[sl]
        if n_bins is not None:
            x, step_mask = cut_prefix(x, stays.observed[sl], n_bins[sl])
        out = model(x, stays.static[sl], step_mask)
        logits.append(out.risk_logit.float().cpu())
        los.append(out.los.float().cpu())
        if out.forecast is not None:
            forecasts.append(out.forecast.float().cpu())
    res = {"logit": torch.cat(logits), "los": torch.cat(los)}
    if forecasts:
        res["forecast"] = torch.cat(forecasts)
    return res


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


@dataclass
class RiskTask:
    """Risk + LOS on random prefixes; validation at the full window and at fixed prefixes."""

    train: StayTensors
    val: StayTensors
    min_bins: int  # shortest prefix, bins
    max_bins: int  # longest prefix, bins
    pos_weight: float  # > 0
    los_weight: float
    val_seed: int = 0  # fixes the validation prefixes once, so epochs compare like for like
    full_share: float = 0.0  # share of training prefixes at max_bins (see sample_prefix_bins)

    def __post_init__(self) -> None:
        self.n_train = len(self.train)
        self._first = self.train.first_bin()
        rng = np.random.default_rng([self.val_seed, 7919])
        self._val_bins = sample_prefix_bins(self.val.first_bin(), self.min_bins,
                                            self.max_bins, rng)

    def batch_loss(self, model: nn.Module, idx: Tensor, rng: np.random.Generator) -> Tensor:
        s = self.train
        n_bins = sample_prefix_bins(self._first[idx], self.min_bins, self.max_bins, rng,
                                    self.full_share)
        x, step_mask = cut_prefix(s.x[idx], s.observed[idx], n_bins)  # (B,T,C), (B,T)
        out = model(x, s.static[idx], step_mask)
        return risk_los_loss(out, s.died[idx], s.los[idx], self.pos_weight, self.los_weight)

    def _nll_los(self, res: dict[str, Tensor]) -> tuple[float, float]:
        y = self.val.died.cpu()
        nll = float(F.binary_cross_entropy_with_logits(res["logit"], y))
        los = self.val.los.cpu()
        ok = torch.isfinite(los)
        hub = float(F.smooth_l1_loss(torch.log1p(res["los"][ok]), torch.log1p(los[ok]),
                                     beta=0.5)) if bool(ok.any()) else 0.0
        return nll, hub

    def validate(self, model: nn.Module) -> dict[str, float]:
        full = infer(model, self.val)
        part = infer(model, self.val, self._val_bins)
        nll_f, los_f = self._nll_los(full)
        nll_p, los_p = self._nll_los(part)
        nll, los = (nll_f + nll_p) / 2, (los_f + los_p) / 2
        y = self.val.died.cpu().numpy()
        return {"loss": nll + self.los_weight * los, "nll": nll, "los_huber": los,
                "auroc": _auroc(y, full["logit"].numpy()),
                "auroc_prefix": _auroc(y, part["logit"].numpy())}


@dataclass
class ForecastTask:
    """Seq2seq forecast of the next `horizon` bins, trained beside the risk and LOS heads.

    The forecast loss is the masked mean squared error on the normalised scale (only bins
    where the variable was measured count); the risk/LOS loss is added so every parameter
    gets a gradient (DDP requires it) and the forecaster's risk head is usable too.
    Early stopping follows the forecast error alone.
    """

    train: StayTensors
    val: StayTensors
    min_bins: int
    max_bins: int  # at most T - 1: a prefix needs a future to forecast
    target_idx: Tensor  # (K,) feature positions of the targets
    horizon: int
    pos_weight: float
    los_weight: float
    val_seed: int = 0

    def __post_init__(self) -> None:
        self.n_train = len(self.train)
        self._first = self.train.first_bin()
        rng = np.random.default_rng([self.val_seed, 7919])
        self._val_bins = sample_prefix_bins(self.val.first_bin(), self.min_bins,
                                            self.max_bins, rng)

    def _mse(self, forecast: Tensor, x_full: Tensor, step_mask: Tensor) -> Tensor:
        target, mask = forecast_targets(x_full, step_mask, self.target_idx.to(x_full.device),
                                        self.train.n_features, self.horizon)  # (B,H,K) x2
        sq = (forecast - target) ** 2 * mask
        return sq.sum() / mask.sum().clamp(min=1.0)

    def batch_loss(self, model: nn.Module, idx: Tensor, rng: np.random.Generator) -> Tensor:
        s = self.train
        n_bins = sample_prefix_bins(self._first[idx], self.min_bins, self.max_bins, rng)
        x_full = s.x[idx]
        x, step_mask = cut_prefix(x_full, s.observed[idx], n_bins)
        out = model(x, s.static[idx], step_mask)
        assert out.forecast is not None, "forecast task needs a seq2seq model"
        aux = risk_los_loss(out, s.died[idx], s.los[idx], self.pos_weight, self.los_weight)
        return self._mse(out.forecast, x_full, step_mask) + aux

    def validate(self, model: nn.Module) -> dict[str, float]:
        v = self.val
        res = infer(model, v, self._val_bins)
        _, step_mask = cut_prefix(v.x, v.observed, self._val_bins)
        mse = float(self._mse(res["forecast"], v.x.cpu(), step_mask.cpu()))
        y = v.died.cpu().numpy()
        return {"loss": mse, "forecast_mse": mse, "auroc": _auroc(y, res["logit"].numpy())}
