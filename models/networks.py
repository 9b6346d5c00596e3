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
    "build_encoder",
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


_ENCODERS: dict[str, Callable[[ModelConfig], TorchRNNEncoder | JordanEncoder]] = {
    "elman": lambda c: TorchRNNEncoder(nn.RNN, c),
    "jordan": JordanEncoder,
    "lstm": lambda c: TorchRNNEncoder(nn.LSTM, c),
    "gru": lambda c: TorchRNNEncoder(nn.GRU, c),
}
_CONSTRUCTORS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    **{arch: lambda c: RecurrentModel(build_encoder(c), c) for arch in _ENCODERS},
    "seq2seq": Seq2Seq,
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """A fresh, randomly initialised model for `cfg` (seed torch first for reproducibility)."""
    return _CONSTRUCTORS[cfg.arch](cfg)


def build_encoder(cfg: ModelConfig) -> TorchRNNEncoder | JordanEncoder:
    """The recurrent history encoder of `cfg.arch` alone, without pooling or heads (the
    treatment-effect networks of models/effect.py put their own heads on it)."""
    if cfg.arch not in _ENCODERS:
        raise ValueError(f"{cfg.arch} has no standalone encoder; known: {sorted(_ENCODERS)}")
    return _ENCODERS[cfg.arch](cfg)


def variants() -> list[tuple[str, bool]]:
    """Every (architecture, bidirectional) pair the zoo builds, for tests and benchmarks."""
    return [(a, False) for a in ARCHITECTURES] + [(a, True) for a in ARCHITECTURES
                                                   if a in BIDIRECTIONAL]
