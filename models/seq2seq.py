"""Seq2seq forecaster: GRU encoder, GRU-cell decoder with additive attention (Bahdanau et
al., 2015) over the encoder states.

It forecasts the next `horizon` bins after the last observed bin for `n_targets` variables
on the normalised scale. Each decoder step predicts a change to its previous prediction,
starting from the carried-forward values at the last observed bin, and the change layer
starts at zero: an untrained model is exactly the carry-forward forecast, so training
starts from the baseline it has to beat. The same encoder states feed the shared risk/LOS
heads, so the output contract matches every other family.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.layers import AdditiveAttention, ModelConfig, ModelOutput, PooledHeads
from models.recurrent import TorchRNNEncoder, span_mask

__all__ = ["Seq2Seq"]


class Seq2Seq(nn.Module):
    targets: Tensor  # (K,) long: forecast channels in the values block of x

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("targets", torch.tensor(cfg.targets, dtype=torch.long),
                             persistent=False)
        self.encoder = TorchRNNEncoder(nn.GRU, cfg)
        H, K = self.encoder.out_dim, cfg.n_targets
        self.heads = PooledHeads(H, cfg)
        self.init_decoder = nn.Linear(H + cfg.n_static, cfg.hidden)
        self.attention = AdditiveAttention(H, cfg.hidden, cfg.attn_dim)
        self.cell = nn.GRUCell(K + H, cfg.hidden)
        self.step = nn.Linear(cfg.hidden + H, K)
        nn.init.zeros_(self.step.weight)
        nn.init.zeros_(self.step.bias)

    def encode(self, x: Tensor, static: Tensor, step_mask: Tensor) -> Tensor:
        """Encoder states (B, T, H), causal."""
        states: Tensor = self.encoder(x, static, step_mask)
        return states

    def forward(self, x: Tensor, static: Tensor, step_mask: Tensor) -> ModelOutput:
        B = x.shape[0]
        states = self.encode(x, static, step_mask)  # (B, T_in, H)
        risk, los, weights = self.heads(states, static, step_mask)

        first, length = span_mask(step_mask)
        last = (first + length - 1).clamp(min=0)  # (B,) forecast origin
        rows = torch.arange(B, device=x.device)
        y = x[rows, last][:, self.targets]  # (B, K) carried-forward values at the origin
        s = torch.tanh(self.init_decoder(torch.cat([states[rows, last], static], dim=-1)))
        keys = self.attention.key(states)  # (B, T_in, A), reused by every decoder step
        forecasts, attentions = [], []
        for _ in range(self.cfg.horizon):
            context, w = self.attention(states, s, step_mask, projected=keys)  # (B,H),(B,T_in)
            s = self.cell(torch.cat([y, context], dim=-1), s)  # (B, hidden)
            y = y + self.step(torch.cat([s, context], dim=-1))  # (B, K)
            forecasts.append(y)
            attentions.append(w)
        return ModelOutput(
            risk_logit=risk, los=los, attention=weights,
            forecast=torch.stack(forecasts, dim=1),  # (B, T_out, K)
            decoder_attention=torch.stack(attentions, dim=1),  # (B, T_out, T_in)
        )
