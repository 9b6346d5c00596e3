"""Building blocks every network shares: the config, the output contract, attention, heads.

Nothing here knows which family it serves; `models/networks.py` holds the one table from
architecture name to constructor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ARCHITECTURES",
    "BIDIRECTIONAL",
    "AdditiveAttention",
    "Heads",
    "ModelConfig",
    "ModelOutput",
    "PooledHeads",
    "masked_softmax",
]

ARCHITECTURES: tuple[str, ...] = ("elman", "jordan", "lstm", "gru", "seq2seq")
# Families with a bidirectional (BiRNN) variant; the Jordan feedback and the seq2seq
# forecast are causal by construction.
BIDIRECTIONAL: frozenset[str] = frozenset({"elman", "lstm", "gru"})


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # one of ARCHITECTURES
    n_inputs: int  # per-step input channels = 3 * F (Tensors.inputs())
    n_static: int  # static channels = Normalizer.n_static_inputs
    hidden: int = 64  # recurrent state size (per direction)
    layers: int = 1  # stacked recurrent layers
    dropout: float = 0.1  # between stacked layers and before the heads (training only)
    bidirectional: bool = False  # elman/lstm/gru only; not causal, for retrospective use
    attn_dim: int = 32  # width of the additive-attention energy layer
    horizon: int = 0  # seq2seq: forecast steps (bins after the last observed bin)
    n_targets: int = 0  # seq2seq: forecast variables
    # seq2seq: channel of each forecast variable in the values block of x (the first F
    # channels); empty means the first n_targets features.
    target_index: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; known: {ARCHITECTURES}")
        if self.bidirectional and self.arch not in BIDIRECTIONAL:
            raise ValueError(f"{self.arch} has no bidirectional variant")
        if self.n_inputs <= 0 or self.n_inputs % 3:
            raise ValueError(f"n_inputs must be a positive multiple of 3, got {self.n_inputs}")
        if self.n_static < 0 or self.hidden <= 0 or self.layers <= 0 or self.attn_dim <= 0:
            raise ValueError("n_static must be >= 0; hidden, layers and attn_dim > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.arch == "seq2seq":
            if self.horizon <= 0 or self.n_targets <= 0:
                raise ValueError("seq2seq needs horizon > 0 and n_targets > 0")
            if self.target_index and len(self.target_index) != self.n_targets:
                raise ValueError("target_index must have n_targets entries")
            if any(not 0 <= i < self.n_features for i in self.targets):
                raise ValueError(f"target_index out of range for {self.n_features} features")

    @property
    def n_features(self) -> int:
        """Measured variables F (x holds values, mask and hours-since for each)."""
        return self.n_inputs // 3

    @property
    def targets(self) -> tuple[int, ...]:
        """Forecast channels in the values block (seq2seq)."""
        return self.target_index or tuple(range(self.n_targets))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_index"] = list(self.target_index)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        kw = dict(d)
        if "target_index" in kw:
            kw["target_index"] = tuple(int(i) for i in kw["target_index"])
        return cls(**kw)


@dataclass
class ModelOutput:
    risk_logit: Tensor  # (B,)
    los: Tensor  # (B,) days, >= 0
    attention: Tensor  # (B, T) sums to 1 over step_mask, exactly 0 elsewhere
    forecast: Tensor | None = None  # (B, T_out, K) seq2seq only, normalised scale
    decoder_attention: Tensor | None = None  # (B, T_out, T_in) seq2seq only


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last axis restricted to `mask`; exactly 0 where mask is False.

    A row with no True entry (an empty stay) gets all zeros instead of NaN.
    """
    any_valid = mask.any(dim=-1, keepdim=True)
    # -inf gives exp() == 0 exactly; rows with nothing valid are un-masked to stay finite.
    scores = scores.masked_fill(~mask & any_valid, float("-inf"))
    return torch.softmax(scores, dim=-1) * mask


class AdditiveAttention(nn.Module):
    """Bahdanau attention: e_t = v . tanh(W k_t + U q), weights = masked softmax(e)."""

    def __init__(self, key_dim: int, query_dim: int, attn_dim: int) -> None:
        super().__init__()
        self.key = nn.Linear(key_dim, attn_dim)
        self.query = nn.Linear(query_dim, attn_dim, bias=False)
        self.energy = nn.Linear(attn_dim, 1, bias=False)

    def scores(self, keys: Tensor, query: Tensor, projected: Tensor | None = None) -> Tensor:
        """Energies (B, [Q,] T) before the softmax; e_t depends on k_t and q only.

        keys (B, T, D); query (B, Qd) or (B, Q, Qd); `projected` = self.key(keys) when the
        caller reuses it across decoder steps.
        """
        pk = self.key(keys) if projected is None else projected  # (B, T, A)
        pq = self.query(query)  # (B, A) or (B, Q, A)
        if pq.dim() == 2:
            e: Tensor = self.energy(torch.tanh(pk + pq[:, None, :]))  # (B, T, 1)
        else:
            e = self.energy(torch.tanh(pk[:, None] + pq[:, :, None]))  # (B, Q, T, 1)
        return e.squeeze(-1)

    def forward(
        self, keys: Tensor, query: Tensor, mask: Tensor, projected: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """-> context (B, [Q,] D), weights (B, [Q,] T). mask (B, T) bool."""
        e = self.scores(keys, query, projected)
        m = mask if e.dim() == 2 else mask[:, None, :]
        w = masked_softmax(e, m)
        return w @ keys if w.dim() == 3 else (w[:, None, :] @ keys).squeeze(1), w


# Typical ICU stay in days: the LOS head starts there so early training is not spent
# walking the output up from softplus(0) = 0.7 days.
_LOS_PRIOR_DAYS = 7.0


class Heads(nn.Module):
    """Risk logit and length of stay (days, >= 0 via softplus) from a pooled summary."""

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.GELU())
        self.risk = nn.Linear(hidden, 1)
        self.los = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.los.bias.fill_(math.log(math.expm1(_LOS_PRIOR_DAYS)))

    def forward(self, summary: Tensor) -> tuple[Tensor, Tensor]:
        z = self.body(summary)  # (B, hidden)
        return self.risk(z).squeeze(-1), F.softplus(self.los(z)).squeeze(-1)


class PooledHeads(nn.Module):
    """Additive attention pooling over encoder states, queried by the statics, then heads.

    The energy of step t depends on the state at t and the statics only, so it inherits the
    encoder's causality; the pooled summary is concatenated with the statics.
    """

    def __init__(self, state_dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.pool = AdditiveAttention(state_dim, cfg.n_static, cfg.attn_dim)
        self.heads = Heads(state_dim + cfg.n_static, cfg.hidden, cfg.dropout)

    def scores(self, states: Tensor, static: Tensor) -> Tensor:
        """Attention energies (B, T) before the masked softmax."""
        return self.pool.scores(states, static)

    def forward(self, states: Tensor, static: Tensor, step_mask: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        """-> risk logit (B,), los days (B,), attention (B, T)."""
        context, weights = self.pool(states, static, step_mask)  # (B, D), (B, T)
        risk, los = self.heads(torch.cat([context, static], dim=-1))
        return risk, los, weights
