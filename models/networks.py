"""The model zoo behind one output contract.

    model(x (B, T, 3F), static (B, 2S), step_mask (B, T) bool) -> ModelOutput

Families: Elman (nn.RNN, tanh), Jordan (own cell loop, output fed back), LSTM, GRU, the
bidirectional variants of Elman/LSTM/GRU (`ModelConfig.bidirectional`), and the seq2seq
forecaster. Each recurrent family is an encoder (models/recurrent.py) followed by the same
additive-attention pooling and risk/LOS heads (models/layers.py). `_CONSTRUCTORS` is the
only place that maps an architecture name to code; nothing outside models/ branches on it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from models.layers import ARCHITECTURES, BIDIRECTIONAL, ModelConfig, ModelOutput, PooledHeads
from models.recurrent import JordanEncoder, TorchRNNEncoder
from models.seq2seq import Seq2Seq

__all__ = [
    "ARCHITECTURES",
    "BIDIRECTIONAL",
    "ModelConfig",
    "ModelOutput",
    "RecurrentModel",
    "build_model",
    "variants",
]


class RecurrentModel(nn.Module):
    """Encoder -> attention pooling -> risk logit and LOS."""

    def __init__(self, encoder: TorchRNNEncoder | JordanEncoder, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.heads = PooledHeads(encoder.out_dim, cfg)

    def encode(self, x: Tensor, static: Tensor, step_mask: Tensor) -> Tensor:
        """Encoder states (B, T, D); causal unless the config is bidirectional."""
        states: Tensor = self.encoder(x, static, step_mask)
        return states

    def forward(self, x: Tensor, static: Tensor, step_mask: Tensor) -> ModelOutput:
        states = self.encode(x, static, step_mask)  # (B, T, D)
        risk, los, weights = self.heads(states, static, step_mask)
        return ModelOutput(risk_logit=risk, los=los, attention=weights)


_CONSTRUCTORS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "elman": lambda c: RecurrentModel(TorchRNNEncoder(nn.RNN, c), c),
    "jordan": lambda c: RecurrentModel(JordanEncoder(c), c),
    "lstm": lambda c: RecurrentModel(TorchRNNEncoder(nn.LSTM, c), c),
    "gru": lambda c: RecurrentModel(TorchRNNEncoder(nn.GRU, c), c),
    "seq2seq": Seq2Seq,
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """A fresh, randomly initialised model for `cfg` (seed torch first for reproducibility)."""
    return _CONSTRUCTORS[cfg.arch](cfg)


def variants() -> list[tuple[str, bool]]:
    """Every (architecture, bidirectional) pair the zoo builds, for tests and benchmarks."""
    return [(a, False) for a in ARCHITECTURES] + [(a, True) for a in ARCHITECTURES
                                                   if a in BIDIRECTIONAL]
