"""Stays held in memory as torch tensors, and the random prefixes training cuts from them.

Tensorising is the slow part of data preparation, so every stay is tensorised once over the
full window and prefixes are cut with masks: bins at or after the cut are zeroed (values,
observed-mask and hours-since), and the step mask is recomputed from the bins that remain,
exactly as `tensorise(..., until_hours=cut)` would give for a stay that starts at admission.
Zeroing matters: a bidirectional network reads the sequence backwards too, and must not see
a single bin after the prefix it is being asked about.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.features import Tensors

__all__ = ["StayTensors", "cut_prefix", "forecast_targets", "sample_prefix_bins"]


@dataclass
class StayTensors:
    """N stays on the grid, ready for the network. T steps, C = 3F inputs, S statics."""

    patient_ids: list[str]
    x: Tensor  # (N, T, C) float32: values, observed-mask, scaled hours-since
    static: Tensor  # (N, S) float32
    observed: Tensor  # (N, T) bool, the bin holds at least one measurement
    step_mask: Tensor  # (N, T) bool, first to last observed bin of the full window
    died: Tensor  # (N,) float32 0/1
    los: Tensor  # (N,) float32 days
    n_features: int  # F, measured variables per step

    @classmethod
    def from_tensors(cls, t: Tensors, died: np.ndarray, los: np.ndarray) -> StayTensors:
        return cls(
            patient_ids=list(t.patient_ids),
            x=torch.from_numpy(t.inputs()),
            static=torch.from_numpy(t.static),
            observed=torch.from_numpy(t.mask.any(axis=2)),
            step_mask=torch.from_numpy(t.step_mask),
            died=torch.as_tensor(died, dtype=torch.float32),
            los=torch.as_tensor(los, dtype=torch.float32),
            n_features=t.values.shape[2],
        )

    def __len__(self) -> int:
        return len(self.patient_ids)

    def to(self, device: torch.device) -> StayTensors:
        return StayTensors(self.patient_ids, self.x.to(device), self.static.to(device),
                           self.observed.to(device), self.step_mask.to(device),
                           self.died.to(device), self.los.to(device), self.n_features)

    def first_bin(self) -> Tensor:
        """(N,) index of the first observed bin; T for a stay with none."""
        t = self.observed.shape[1]
        pos = torch.arange(t, device=self.observed.device).expand_as(self.observed)
        return torch.where(self.observed, pos, t).min(dim=1).values


def sample_prefix_bins(first_bin: Tensor, min_bins: int, max_bins: int,
                       rng: np.random.Generator, full_share: float = 0.0) -> Tensor:
    """(B,) prefix lengths in bins, uniform on [min_bins, max_bins], at least one observed bin.

    With `full_share` > 0 that share of the stays (drawn independently) gets the longest
    prefix instead: the full-window question is the one asked most (evaluation, retrospective
    review) and the hardest to answer from the few full-length draws a uniform length gives,
    while the remaining draws keep the model valid at every earlier hour.
    A prefix that would end before the stay's first observation is stretched to include it:
    an empty series is not a question anyone asks the model.
    """
    n = first_bin.shape[0]
    lengths = rng.integers(min_bins, max_bins + 1, size=n)
    if full_share > 0.0:
        lengths = np.where(rng.random(n) < full_share, max_bins, lengths)
    return torch.maximum(torch.from_numpy(lengths).to(first_bin), first_bin + 1)


def cut_prefix(x: Tensor, observed: Tensor, n_bins: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the first `n_bins` bins of each stay. x (B, T, C), observed (B, T), n_bins (B,).

    Returns the cut inputs (B, T, C), zero from the cut on, and the step mask (B, T) from
    the first to the last observed bin before the cut.
    """
    b, t = observed.shape
    pos = torch.arange(t, device=x.device).unsqueeze(0)  # (1, T)
    keep = pos < n_bins.unsqueeze(1)  # (B, T)
    obs = observed & keep
    first = torch.where(obs, pos, t).min(dim=1).values  # (B,)
    last = torch.where(obs, pos, -1).max(dim=1).values  # (B,)
    step_mask = (pos >= first.unsqueeze(1)) & (pos <= last.unsqueeze(1))
    return x * keep.unsqueeze(2).to(x.dtype), step_mask


def forecast_targets(x: Tensor, step_mask: Tensor, target_idx: Tensor, n_features: int,
                     horizon: int) -> tuple[Tensor, Tensor]:
    """What happened in the `horizon` bins after each prefix's last observed bin.

    x: the *full* inputs (B, T, C); step_mask: the prefix's (B, T); target_idx: (K,) feature
    positions. Returns normalised values (B, H, K) and the observed-mask (B, H, K) — bins
    past the window or without a measurement of the variable carry no loss.
    """
    b, t, _ = x.shape
    pos = torch.arange(t, device=x.device).unsqueeze(0)
    last = torch.where(step_mask, pos, -1).max(dim=1).values  # (B,)
    ahead = last.unsqueeze(1) + 1 + torch.arange(horizon, device=x.device).unsqueeze(0)
    inside = ahead < t  # (B, H)
    rows = ahead.clamp(max=t - 1)
    gathered = x[torch.arange(b, device=x.device).unsqueeze(1), rows]  # (B, H, C)
    values = gathered[:, :, target_idx]  # (B, H, K)
    mask = gathered[:, :, n_features + target_idx] * inside.unsqueeze(2).to(x.dtype)
    return values, mask
