"""Training configuration: one frozen dataclass, read from a TOML file and overridden by flags.

Precedence is the usual one: built-in defaults < `--config FILE` < command-line flags. The
TOML file is flat (`arch = "lstm"`, `hidden = 64`, ...) or keeps the same keys under a
`[train]` table, so one file can also hold other sections later (e.g. `[effect]`).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_FORECAST_TARGETS",
    "TASKS",
    "ConfigError",
    "TrainConfig",
    "load_config_file",
]

TASKS = ("risk", "forecast", "effect")
RECURRENT_ARCHS = ("elman", "jordan", "lstm", "gru")
LR_SCHEDULES = ("constant", "cosine")
# Vitals and the one fast lab a bedside forecast is useful for; all are catalogue names.
DEFAULT_FORECAST_TARGETS = (
    "heart_rate", "sbp", "map", "resp_rate", "spo2", "temperature", "lactate",
)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names it."""


@dataclass(frozen=True)
class TrainConfig:
    data: str = ""  # data directory (observations, patients[, truth])
    name: str = "default"  # checkpoint name under model_dir
    model_dir: str = "checkpoints"  # where versions are published
    task: str = "risk"  # "risk" (risk + LOS heads), "forecast" (seq2seq, plus both heads) or
    # "effect" (a risk model plus the what-if networks of training/effect.py)
    arch: str = "lstm"  # elman | jordan | lstm | gru (forecast always uses seq2seq)
    bidirectional: bool = False  # elman/lstm/gru only; prefixes are cut so it never sees ahead
    hidden: int = 64  # recurrent state size per direction
    layers: int = 1  # stacked recurrent layers
    dropout: float = 0.1  # between layers and before the heads
    attn_dim: int = 32  # additive attention width
    lr: float = 3e-3  # Adam learning rate; 3e-3 converges in a handful of epochs at batch 256
    lr_schedule: str = "constant"  # or "cosine": decay to 0 over `epochs` (see training/loop.py)
    weight_decay: float = 1e-5  # AdamW decoupled decay, a light regulariser
    batch_size: int = 256  # per process; large enough to keep 2 CPU cores busy
    epochs: int = 20  # upper bound; early stopping usually ends sooner
    patience: int = 3  # epochs without a better validation loss before stopping
    seed: int = 0  # one seed for the split, prefixes, shuffling and initialisation
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, validation, test fractions
    folds: int = 0  # >= 2: K-fold cross-validation, test = fold `fold` (split's test unused)
    fold: int = 0  # which of the `folds` parts is the test split (0-based)
    min_prefix_hours: float = 6.0  # shortest random prefix seen in training
    max_prefix_hours: float = 48.0  # longest (the full window at the default grid)
    full_prefix_share: float = 0.0  # share of training prefixes cut at max_prefix_hours
    step_hours: float = 1.0  # grid bin width
    n_steps: int = 48  # grid bins in the window
    pos_weight: float = 0.0  # weight of positives in the risk loss; 0 = auto (neg / pos)
    los_weight: float = 0.5  # weight of the LOS Huber loss beside the risk loss
    clip_norm: float = 1.0  # max global gradient norm (see training/loop.py)
    threads: int = 2  # torch intra-op threads per process (this machine has 2 cores)
    max_patients: int = 0  # 0 = all; else a seeded subsample (quick runs)
    horizon: int = 6  # forecast: bins ahead
    targets: tuple[str, ...] = DEFAULT_FORECAST_TARGETS  # forecast: variables predicted
    device: str = "auto"  # "auto" (cuda when present), "cpu" or "cuda"
    effect_members: int = 2  # effect: ensemble members per estimator (adjusted and naive)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.arch not in RECURRENT_ARCHS:
            raise ConfigError(f"arch must be one of {RECURRENT_ARCHS}, got {self.arch!r}")
        if self.bidirectional and self.arch == "jordan":
            raise ConfigError("a Jordan network feeds its output forward; it has no "
                              "bidirectional variant")
        positive = ("hidden", "layers", "attn_dim", "batch_size", "epochs", "n_steps",
                    "threads", "horizon", "effect_members")
        for key in positive:
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.step_hours <= 0:
            raise ConfigError("lr and step_hours must be > 0")
        if self.patience < 0 or self.pos_weight < 0 or self.los_weight < 0:
            raise ConfigError("patience, pos_weight and los_weight must be >= 0")
        if len(self.split) != 3 or min(self.split) < 0 or self.split[0] <= 0 \
                or self.split[1] <= 0 or abs(sum(self.split) - 1.0) > 1e-6:
            raise ConfigError(f"split must be 3 fractions (train, val > 0) summing to 1, "
                              f"got {self.split}")
        window = self.step_hours * self.n_steps
        if not 0 < self.min_prefix_hours <= self.max_prefix_hours <= window + 1e-9:
            raise ConfigError(f"need 0 < min_prefix_hours <= max_prefix_hours <= window "
                              f"({window:g} h), got {self.min_prefix_hours}, "
                              f"{self.max_prefix_hours}")
        if self.folds == 1 or self.folds < 0 or not 0 <= self.fold < max(self.folds, 1):
            raise ConfigError(f"folds must be 0 (no cross-validation) or >= 2, and fold in "
                              f"0..folds-1; got folds={self.folds}, fold={self.fold}")
        if not 0.0 <= self.full_prefix_share <= 1.0:
            raise ConfigError(f"full_prefix_share must be in [0, 1], got "
                              f"{self.full_prefix_share}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got "
                              f"{self.lr_schedule!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["split"] = list(self.split)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: TrainConfig | None = None,
                     source: str = "configuration") -> TrainConfig:
        """`base` (or the defaults) with `values` applied; unknown keys are an error."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"unknown key(s) in {source}: {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(fields))}")
        current = (base or cls()).to_dict()
        for key, value in values.items():
            current[key] = _coerce(key, value, current[key], source)
        current["split"] = tuple(current["split"])
        current["targets"] = tuple(current["targets"])
        return cls(**current)


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Convert `value` to the type of the field's default, or say which key is wrong."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("not an integer")
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, list | tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            kind = float if key == "split" else str
            return [kind(str(i).strip()) if kind is str else kind(i) for i in items]
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: bad value for {key!r}: {value!r} ({exc})") from exc


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The training keys of a TOML file (top level, or its [train] table)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {p} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    table = doc.get("train", doc)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {p}: [train] must be a table")
    return {k: v for k, v in table.items() if not isinstance(v, dict)}
