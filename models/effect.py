"""Treatment-effect (what-if) networks: the risk and MAP under a plan, and how well the data
support the plan (DESIGN.md, "Tasks: treatment effect").

A question is asked at a *decision bin* D: the history is every row before it, the plan is
what is given from bin D to the end of the window. Both come from the checkpoint's own
tensorisation, so training and the service see identical inputs:

- history (B, T, 3F + 3I): the GRU-D triple of each measured variable, then per
  intervention a triple (value / scale, given-indicator, scaled hours since last given).
  These networks are the models meant to see treatments; the risk model is not.
- plan (B, K, I): the intervention channels of bins D, D+1, ... (value / scale), zero past
  the window; bin k of the plan is absolute bin D + k.

`EffectNet` = a zoo encoder over the history, its state at bin D - 1 seeding a GRU decoder
that reads the plan bin by bin (plus the absolute hour); the risk logit is read at the last
bin of the window (in-hospital death is judged on the whole stay), the MAP at plan bins
0..5 (hours 1..6 after the decision) as the carried-forward MAP plus a learnt change (the
change layer starts at zero, so an untrained head is the last-value forecast).
`PropensityNet` = a zoo encoder and a softmax over the plan classes the training data
hold (the canonical plans). A requested plan is *supported* by a class only if its bins
equal that class's template exactly; any other plan never occurs after a decision in the
data, so its propensity is 0.

`EffectModel` bundles what a checkpoint of task "effect" carries beside its risk model: an
adjusted ensemble, the naive ensemble (same networks fitted without adjustment), the
propensity network, the plan templates and the conformal interval quantiles. How they are
fitted, and why inverse-probability weights, is in training/effect.py.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from models.catalogue import INTERVENTIONS
from models.checkpoint import Checkpoint, CheckpointError
from models.features import DELTA_SCALE, Tensors
from models.networks import ModelConfig, build_encoder

__all__ = [
    "PLAN_SCALE",
    "EffectConfig",
    "EffectModel",
    "EffectNet",
    "Outcomes",
    "PropensityNet",
    "effect_meta",
    "effect_tensors",
    "has_effect",
    "history_inputs",
    "load_effect",
    "match_plans",
    "plan_inputs",
    "plan_summary",
]

# Network scale of each intervention channel: a typical amount becomes O(1).
PLAN_SCALE: dict[str, float] = {"antibiotics": 1.0, "vasopressor": 0.1, "fluid_bolus": 500.0,
                                "mech_vent": 1.0}
_PREFIX = "effect."  # named-tensor prefix in the checkpoint
_CACHE_SIZE = 8  # effect models kept built, per process (one per served checkpoint is enough)


@dataclass(frozen=True)
class EffectConfig:
    arch: str  # history encoder family: elman | jordan | lstm | gru (causal)
    n_features: int  # F measured variables (the normaliser's)
    n_interventions: int  # I intervention channels
    n_static: int  # static channels (Normalizer.n_static_inputs)
    n_plans: int  # plan classes the propensity network chooses between
    n_steps: int  # grid bins in the window (the decoder runs to its end)
    hidden: int = 32  # encoder and decoder state size
    dropout: float = 0.1  # before the heads (training only)
    map_index: int = -1  # position of "map" among the features; -1 = no MAP head
    map_steps: int = 6  # MAP forecast: hours 1..map_steps after the decision

    @property
    def n_inputs(self) -> int:
        """History channels: a triple per measured variable and per intervention."""
        return 3 * (self.n_features + self.n_interventions)

    def encoder_config(self) -> ModelConfig:
        return ModelConfig(arch=self.arch, n_inputs=self.n_inputs, n_static=self.n_static,
                           hidden=self.hidden, dropout=self.dropout)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EffectConfig:
        return cls(**d)


def _last_history(states: Tensor, x: Tensor, decision: Tensor) -> tuple[Tensor, Tensor]:
    """Encoder state and inputs at bin D - 1 (the last bin of the history), (B, H), (B, C)."""
    rows = torch.arange(x.shape[0], device=x.device)
    last = (decision - 1).clamp(min=0)
    return states[rows, last], x[rows, last]


class _Summary(nn.Module):
    """Zoo encoder over the history -> one vector per stay: its state and inputs at the last
    history bin, the statics and the decision hour."""

    def __init__(self, cfg: EffectConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = build_encoder(cfg.encoder_config())
        self.out_dim = self.encoder.out_dim + cfg.n_inputs + cfg.n_static + 1

    def forward(self, x: Tensor, static: Tensor, step_mask: Tensor, decision: Tensor) -> Tensor:
        states = self.encoder(x, static, step_mask)  # (B, T, H)
        h, x_last = _last_history(states, x, decision)
        when = decision.to(x.dtype)[:, None] / self.cfg.n_steps
        return torch.cat([h, x_last, static, when], dim=-1)  # (B, out_dim)


class PropensityNet(nn.Module):
    """P(plan class | history): logits (B, n_plans)."""

    def __init__(self, cfg: EffectConfig) -> None:
        super().__init__()
        self.summary = _Summary(cfg)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout),
                                  nn.Linear(self.summary.out_dim, cfg.hidden), nn.GELU(),
                                  nn.Linear(cfg.hidden, cfg.n_plans))

    def forward(self, x: Tensor, static: Tensor, step_mask: Tensor, decision: Tensor) -> Tensor:
        logits: Tensor = self.head(self.summary(x, static, step_mask, decision))
        return logits


class EffectNet(nn.Module):
    """History + plan -> risk logit (B,) and MAP (B, map_steps) on the normalised scale."""

    def __init__(self, cfg: EffectConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.summary = _Summary(cfg)
        h = cfg.hidden
        self.init = nn.Linear(self.summary.out_dim, h)
        self.decoder = nn.GRU(cfg.n_interventions + 1, h, batch_first=True)
        n_plan = 4 * cfg.n_interventions  # plan_summary channels
        self.risk = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(2 * h + n_plan, h),
                                  nn.GELU(), nn.Linear(h, 1))
        self.map_step = nn.Linear(2 * h, 1)
        nn.init.zeros_(self.map_step.weight)
        nn.init.zeros_(self.map_step.bias)

    def forward(self, x: Tensor, static: Tensor, step_mask: Tensor, decision: Tensor,
                plan: Tensor) -> tuple[Tensor, Tensor | None]:
        B, K, _ = plan.shape
        s = torch.tanh(self.init(self.summary(x, static, step_mask, decision)))  # (B, H)
        hour = (decision[:, None] + torch.arange(K, device=x.device)[None, :]).to(x.dtype)
        inp = torch.cat([plan, (hour / self.cfg.n_steps)[:, :, None]], dim=-1)  # (B, K, I+1)
        out, _ = self.decoder(inp, s[None].contiguous())  # (B, K, H); causal in k
        rows = torch.arange(B, device=x.device)
        end = (self.cfg.n_steps - 1 - decision).clamp(0, K - 1)  # plan bin of the window end
        summary = plan_summary(plan, self.cfg.n_steps - decision, self.cfg.map_steps)
        logit = self.risk(torch.cat([out[rows, end], s, summary], dim=-1)).squeeze(-1)  # (B,)
        if self.cfg.map_index < 0:
            return logit, None
        m = self.cfg.map_steps
        carry = x[rows, (decision - 1).clamp(min=0), self.cfg.map_index]  # (B,) last MAP
        both = torch.cat([out[:, :m], s[:, None].expand(-1, m, -1)], dim=-1)  # (B, m, 2H)
        return logit, carry[:, None] + self.map_step(both).squeeze(-1)


def plan_summary(plan: Tensor, remaining: Tensor, early: int) -> Tensor:
    """(B, 4I) what a plan gives, straight to the risk head beside the decoder's reading of
    it: per channel, its value in the first bin, its largest value and its mean over the
    first `early` bins and over the bins left in the window. A direct path of O(1) features
    makes the plan's main effect easy to learn; the decoder adds its timing."""
    B, K, _ = plan.shape
    k = torch.arange(K, device=plan.device)[None, :, None]
    left = remaining.clamp(min=1)[:, None, None]
    inside = plan * (k < left)
    return torch.cat([plan[:, 0], plan[:, :early].amax(1), inside.amax(1),
                      inside.sum(1) / left[:, 0]], dim=-1)


# --- inputs ----------------------------------------------------------------------------------


def _scale(interventions: tuple[str, ...]) -> np.ndarray:
    return np.array([PLAN_SCALE[name] for name in interventions], dtype=np.float64)


def history_inputs(hist: Tensors, decision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, T, 3F + 3I) network input and (N, T) step mask of a history tensorised up to
    each decision bin. The span runs from the first observed bin to D - 1, so treatments
    after the last measurement are inside it and the hours-since channels keep growing."""
    n, t, n_i = hist.interventions.shape
    iv = hist.interventions.astype(np.float64)
    given = iv != 0
    pos = np.arange(t)[None, :, None]
    last = np.maximum.accumulate(np.where(given, pos, -1), axis=1)
    hours = np.where(last >= 0, (pos - last) * hist.grid.step_hours,
                     t * hist.grid.step_hours)
    treat = np.concatenate([iv / _scale(tuple(INTERVENTIONS[:n_i])), given,
                            np.log1p(hours) / DELTA_SCALE], axis=2)
    x = np.concatenate([hist.inputs(), treat.astype(np.float32)], axis=2)
    observed = hist.mask.any(axis=2) | given.any(axis=2)
    first = np.where(observed.any(axis=1), observed.argmax(axis=1), t)
    steps = np.arange(t)[None, :]
    step_mask = (steps >= first[:, None]) & (steps < np.asarray(decision)[:, None])
    return x, step_mask


def plan_inputs(plans: np.ndarray) -> np.ndarray:
    """Raw-unit plan grids (..., K, I) -> decoder input (value / scale), float32."""
    scale = _scale(tuple(INTERVENTIONS[:plans.shape[-1]]))
    return (plans / scale).astype(np.float32)


def match_plans(plans: np.ndarray, decision: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """Class of each plan, -1 when it equals no template: plans (N, Q, T, I) raw units,
    bin k = absolute bin D + k; templates (P, T, I) for a decision at bin 0. Only the bins
    inside the window (k < T - D) are compared."""
    n, q, t, _ = plans.shape
    inside = (np.arange(t)[None, :] < (t - np.asarray(decision))[:, None])  # (N, T)
    diff = np.abs(plans[:, :, None] - templates[None, None])  # (N, Q, P, T, I)
    same = ((diff <= 1e-6) | ~inside[:, None, None, :, None]).all(axis=(3, 4))  # (N, Q, P)
    return np.where(same.any(axis=2), same.argmax(axis=2), -1)


# --- the bundle ------------------------------------------------------------------------------


@dataclass
class Outcomes:
    """Predictions for N stays under Q plans each."""

    risk: np.ndarray  # (N, Q) adjusted ensemble mean probability
    naive_risk: np.ndarray  # (N, Q) naive ensemble mean probability
    map: np.ndarray | None  # (N, Q, map_steps) adjusted MAP, mmHg
    naive_map: np.ndarray | None  # (N, Q, map_steps)
    last_map: np.ndarray | None  # (N,) last MAP before the decision (carried forward), mmHg
    propensity: np.ndarray  # (N, P) P(plan class | history)
    plan_class: np.ndarray  # (N, Q) index into the classes, -1 = a plan the data never show

    def propensity_of_plans(self) -> np.ndarray:
        """(N, Q): the propensity of each plan's class, 0 for a plan of no class."""
        idx = np.clip(self.plan_class, 0, None)
        p = np.take_along_axis(self.propensity, idx, axis=1)
        return np.where(self.plan_class >= 0, p, 0.0)


@dataclass
class EffectModel:
    cfg: EffectConfig
    plans: tuple[str, ...]  # class names, index = class (plans[0] is "no further intervention")
    templates: np.ndarray  # (P, T, I) raw units, decision at bin 0
    adjusted: list[EffectNet]  # ensemble members fitted with stabilised IPW
    naive: list[EffectNet]  # the same networks fitted without adjustment
    propensity: PropensityNet
    interval: dict[str, tuple[float, float]]  # per class: scaled residual quantiles lo, hi
    nominal: float  # the intervals' nominal coverage
    map_mean: float  # MAP de-normalisation (the normaliser's mean and SD of "map")
    map_std: float
    decision_range: tuple[int, int]  # decision bins seen in training (outside: extrapolation)

    @torch.inference_mode()
    def outcomes(self, hist: Tensors, decision: np.ndarray, plans: np.ndarray,
                 batch_size: int = 512) -> Outcomes:
        """Risk and MAP of each stay under each of its plans, (N, Q, T, I) raw units (bin k
        = D + k), with the propensity of the plan classes. `hist` is tensorised up to each
        decision bin with the checkpoint's normaliser."""
        decision = np.asarray(decision, dtype=np.int64)
        x_all, mask_all = history_inputs(hist, decision)
        n, q = plans.shape[:2]
        k = max(int(self.cfg.n_steps - decision.min()), self.cfg.map_steps) if n else 1
        grid = np.zeros((n, q, k, plans.shape[3]), dtype=np.float64)
        grid[:, :, :min(k, plans.shape[2])] = plans[:, :, :k]
        dec_in = plan_inputs(grid)
        logits = np.zeros((2, len(self.adjusted), n, q))
        maps = np.zeros((2, n, q, self.cfg.map_steps))
        prop = np.zeros((n, len(self.plans)))
        for s in range(0, n, batch_size):
            sl = slice(s, s + batch_size)
            b = len(decision[sl])
            x = torch.from_numpy(x_all[sl]).repeat_interleave(q, dim=0)
            static = torch.from_numpy(hist.static[sl]).repeat_interleave(q, dim=0)
            mask = torch.from_numpy(mask_all[sl]).repeat_interleave(q, dim=0)
            dec = torch.from_numpy(decision[sl]).repeat_interleave(q)
            plan = torch.from_numpy(dec_in[sl]).reshape(b * q, k, -1)
            for j, members in enumerate((self.adjusted, self.naive)):
                forecasts = []
                for m, net in enumerate(members):
                    logit, fc = net(x, static, mask, dec, plan)
                    logits[j, m, sl] = logit.double().reshape(b, q).numpy()
                    if fc is not None:
                        forecasts.append(fc.double())
                if forecasts:
                    maps[j, sl] = torch.stack(forecasts).mean(0).reshape(b, q, -1).numpy()
            p = self.propensity(x[::q], static[::q], mask[::q], dec[::q])
            prop[sl] = torch.softmax(p.double(), dim=-1).numpy()
        has_map = self.cfg.map_index >= 0
        last = None
        if has_map:
            rows = np.arange(n)
            last = hist.values[rows, np.clip(decision - 1, 0, None), self.cfg.map_index]
            last = last * self.map_std + self.map_mean
        return Outcomes(
            risk=_sigmoid(logits[0]).mean(0), naive_risk=_sigmoid(logits[1]).mean(0),
            map=maps[0] * self.map_std + self.map_mean if has_map else None,
            naive_map=maps[1] * self.map_std + self.map_mean if has_map else None,
            last_map=last, propensity=prop,
            plan_class=match_plans(plans, decision, self.templates))

    def canonical_plans(self, decision: np.ndarray) -> np.ndarray:
        """(N, P, T, I) every class's plan for each stay's decision bin (bin k = D + k)."""
        t = self.templates.shape[1]
        inside = np.arange(t)[None, :] < (t - np.asarray(decision))[:, None]  # (N, T)
        return np.where(inside[:, None, :, None], self.templates[None], 0.0)

    def intervals(self, effect: np.ndarray, risk: np.ndarray, base: np.ndarray,
                  plan_class: np.ndarray) -> np.ndarray:
        """(…, 2) conformal interval of each effect: effect + [lo, hi] x scale, where
        scale = max(risk, base) + 0.01 bounds how far a risk difference can reach. A plan
        of no class gets the widest quantiles of any class. Where the calibration residuals
        all fell to one side (a biased estimate, corrected by the interval), the interval
        is widened to hold the estimate itself: coverage can only grow."""
        lo_hi = np.array([self.interval.get(p, (0.0, 0.0)) for p in self.plans])  # (P, 2)
        widest = np.array([lo_hi[:, 0].min(), lo_hi[:, 1].max()])
        q = np.where((plan_class >= 0)[..., None], lo_hi[np.clip(plan_class, 0, None)], widest)
        q = np.stack([np.minimum(q[..., 0], 0.0), np.maximum(q[..., 1], 0.0)], axis=-1)
        scale = interval_scale(risk, base)[..., None]
        return effect[..., None] + q * scale


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))


def interval_scale(risk: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Local scale of the conformal scores: |p_plan - p_none| <= max(p_plan, p_none)."""
    return np.maximum(risk, base) + 0.01


# --- checkpoint IO ---------------------------------------------------------------------------


def effect_tensors(model: EffectModel) -> dict[str, Tensor]:
    """Named tensors to save beside the checkpoint's risk model."""
    out = {f"{_PREFIX}templates": torch.from_numpy(model.templates.astype(np.float32))}
    for group, nets in (("adjusted", model.adjusted), ("naive", model.naive),
                        ("propensity", [model.propensity])):
        for m, net in enumerate(nets):
            for k, v in net.state_dict().items():
                out[f"{_PREFIX}{group}.{m}.{k}"] = v
    return out


def effect_meta(model: EffectModel) -> dict[str, Any]:
    """The JSON half (checkpoint `extra["effect"]`)."""
    return {"config": model.cfg.to_dict(), "plans": list(model.plans),
            "members": len(model.adjusted),
            "interval": {k: list(v) for k, v in model.interval.items()},
            "nominal_coverage": model.nominal,
            "map": [model.map_mean, model.map_std],
            "decision_bins": list(model.decision_range)}


def has_effect(ckpt: Checkpoint) -> bool:
    return ckpt.task == "effect" and "effect" in ckpt.extra


def _build(ckpt: Checkpoint) -> EffectModel:
    where = f"{ckpt.path}/model.json"
    meta = ckpt.extra["effect"]
    try:
        cfg = EffectConfig.from_dict(meta["config"])
        plans = tuple(str(p) for p in meta["plans"])
        members = int(meta["members"])
        interval = {str(k): (float(v[0]), float(v[1])) for k, v in meta["interval"].items()}
        map_mean, map_std = (float(v) for v in meta["map"])
        nominal = float(meta["nominal_coverage"])
        lo, hi = (int(v) for v in meta["decision_bins"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: invalid effect model description ({e})") from None
    if cfg.n_features != len(ckpt.normalizer.features) or len(plans) != cfg.n_plans:
        raise CheckpointError(f"{where}: effect model does not match the feature list")
    templates = ckpt.tensors.get(f"{_PREFIX}templates")
    if templates is None or tuple(templates.shape) != (cfg.n_plans, cfg.n_steps,
                                                       cfg.n_interventions):
        raise CheckpointError(f"{where}: effect plan templates are missing or misshapen")

    try:
        adjusted = [_load(EffectNet(cfg), ckpt, "adjusted", m) for m in range(members)]
        naive = [_load(EffectNet(cfg), ckpt, "naive", m) for m in range(members)]
        propensity = _load(PropensityNet(cfg), ckpt, "propensity", 0)
    except ValueError as e:  # an architecture the zoo does not know
        raise CheckpointError(f"{where}: invalid effect model ({e})") from None
    return EffectModel(cfg, plans, templates.double().numpy(), adjusted, naive, propensity,
                       interval, nominal, map_mean, map_std, (lo, hi))


_Net = TypeVar("_Net", EffectNet, PropensityNet)


def _load(net: _Net, ckpt: Checkpoint, group: str, m: int) -> _Net:
    prefix = f"{_PREFIX}{group}.{m}."
    state = {k[len(prefix):]: v for k, v in ckpt.tensors.items() if k.startswith(prefix)}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt.path}/model.safetensors: {group} effect network {m} "
                              f"does not match its description ({str(e).splitlines()[0]})"
                              ) from None
    return net.eval()


_cache: OrderedDict[tuple[str, str], EffectModel] = OrderedDict()
_cache_lock = threading.Lock()


def load_effect(ckpt: Checkpoint) -> EffectModel:
    """The effect model a checkpoint carries, built once per version and kept (a version
    directory never changes); CheckpointError when it has none or it does not load."""
    if not has_effect(ckpt):
        raise CheckpointError(f"{ckpt.name}/{ckpt.version} has no treatment-effect model")
    key = (str(ckpt.path), ckpt.version)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    model = _build(ckpt)
    with _cache_lock:
        _cache[key] = model
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return model
