"""Test helpers: API keys, a tiny randomly initialised but real checkpoint, settings, a request."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from app.settings import Settings
from models.catalogue import CATALOGUE, CORE_MEASUREMENTS
from models.checkpoint import save_checkpoint
from models.features import Grid, Normalizer
from models.networks import ModelConfig, build_model

USER_KEY = "user-key-0123456789"
ADMIN_KEY = "admin-key-9876543210"
USER = {"Authorization": f"Bearer {USER_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def normalizer() -> Normalizer:
    """Centre and scale from the catalogue's typical ranges (on the log scale where used)."""
    mean, std = [], []
    for name in CORE_MEASUREMENTS:
        var = CATALOGUE[name]
        lo, hi = var.typical
        if var.log_scale:
            lo, hi = np.log1p(lo), np.log1p(hi)
        mean.append((lo + hi) / 2)
        std.append(max((hi - lo) / 4, 1e-3))
    return Normalizer(CORE_MEASUREMENTS, np.array(mean), np.array(std),
                      static_mean=np.array([60.0, 0.5, 80.0, 170.0]),
                      static_std=np.array([15.0, 0.5, 20.0, 10.0]))


def make_checkpoint(model_dir: Path, name: str = "default", *, arch: str = "gru",
                    bidirectional: bool = False, seed: int = 0, grid: Grid | None = None,
                    task: str = "risk", fill: float | None = None) -> Path:
    """Publish a tiny randomly initialised model as a new version of `name`; with `fill`,
    every weight that value (NaN: what a training run that diverged would publish)."""
    norm = normalizer()
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, n_inputs=3 * len(norm.features),
                      n_static=norm.n_static_inputs, hidden=8, attn_dim=8,
                      bidirectional=bidirectional, dropout=0.0)
    model = build_model(cfg)
    if fill is not None:
        with torch.no_grad():
            for weights in model.parameters():
                weights.fill_(fill)
    return save_checkpoint(model_dir, name, model, cfg, norm, grid or Grid(1.0, 48),
                           temperature=1.5, task=task, metrics={"auroc": 0.5},
                           fingerprint="test")


def settings_for(model_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"model_dir": model_dir, "api_keys": [USER_KEY],
                                 "admin_keys": [ADMIN_KEY]}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def request_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "patient_id": "opaque-123",
        "static": {"age": 71, "sex": "female"},
        "observations": [
            {"time": 0.5, "variable": "heart_rate", "value": 118},
            {"time": 0.5, "variable": "resp_rate", "value": 24},
            {"time": 2.0, "variable": "lactate", "value": 3.9},
            {"time": 5.2, "variable": "sbp", "value": 95},
            {"time": 5.9, "variable": "spo2", "value": 93},
            {"time": 5.9, "variable": "temperature", "value": 38.4},
        ],
    }
    body.update(overrides)
    return body


def without_clock_fields(log: str) -> str:
    """The log with each JSON line's timestamp and latency left out: numbers the server
    measures itself, in which a value such as 7.77 turns up by chance ("...:57.771Z")."""
    lines = []
    for line in log.splitlines():
        try:
            record = json.loads(line) if line.startswith("{") else None
        except ValueError:
            record = None  # not one of the structured lines: searched as it is
        if isinstance(record, dict):
            record.pop("ts", None)
            record.pop("latency_ms", None)
            line = json.dumps(record, ensure_ascii=False)
        lines.append(line)
    return "\n".join(lines)
