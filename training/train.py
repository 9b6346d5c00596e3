"""Fit, calibrate and publish a model.

    python -m training.train --data DIR --arch {elman,jordan,lstm,gru} [--bidirectional]
                             [--task risk|forecast|effect] --name NAME --model-dir DIR
                             [--epochs N] [--hidden H] [--lr LR] ... [--config FILE] [--resume]
    torchrun --nproc_per_node=2 -m training.train ...      (data parallel, one checkpoint)

Steps: load the data directory, split patients (seeded, patient-level), fit the normaliser
on the training split, tensorise every stay once, train on random prefixes with early
stopping on validation, fit the temperature on validation, score the held-out test split
and publish a checkpoint (atomic) whose `extra` records the split, so `training.evaluate`
can later score exactly those held-out stays. Each epoch's state goes to
`<model-dir>/.runs/<name>/`; `--resume` continues from it after an interruption.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import brier_score_loss, roc_auc_score

from models.catalogue import MEASUREMENTS
from models.checkpoint import save_checkpoint
from models.effect import effect_meta, effect_tensors
from models.features import Grid, Normalizer, tensorise
from models.networks import ModelConfig, build_model
from training.calibration import expected_calibration_error, fit_temperature, sigmoid
from training.config import TASKS, ConfigError, TrainConfig, load_config_file
from training.data import load_dataset
from training.effect import check_effect_data, fit_effect
from training.loop import Distributed, fit, setup_distributed, teardown
from training.prefixes import StayTensors
from training.runstate import RunStore
from training.splits import Split, split_patients
from training.tasks import ForecastTask, RiskTask, infer

__all__ = ["Prepared", "TrainResult", "build_parser", "config_from_args", "main", "prepare",
           "train"]

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Everything derived from the data directory before any weight is touched."""

    split: Split
    normalizer: Normalizer
    grid: Grid
    stays: dict[str, StayTensors]  # "train", "val" and "test" (absent when its fraction is 0)
    fingerprint: str
    prevalence: float  # death rate in the training split


@dataclass
class TrainResult:
    version_dir: Path | None  # the published checkpoint (None on ranks other than 0)
    metrics: dict[str, Any]
    history: list[dict[str, float]]


def _outcomes(patients: pd.DataFrame) -> pd.DataFrame:
    """patients indexed by id with numeric died / los_days, or a clear error."""
    table = patients.set_index(patients["patient_id"].astype(str)) \
        if "patient_id" in patients.columns else patients.set_axis(
            patients.index.astype(str), axis=0)
    missing = [c for c in ("died", "los_days") if c not in table.columns]
    if missing:
        raise ValueError(f"patients table lacks outcome column(s) {missing}; training needs "
                         f"died (0/1) and los_days")
    died = pd.to_numeric(table["died"], errors="coerce")
    bad = died.notna() & ~died.isin([0, 1])
    if bad.any():
        raise ValueError(f"died must be 0 or 1; {int(bad.sum())} patient(s) have other values")
    out = pd.DataFrame({"died": died, "los_days": pd.to_numeric(table["los_days"],
                                                                errors="coerce")})
    out.loc[out["los_days"] < 0, "los_days"] = np.nan  # unknown, not negative
    return out


def prepare(cfg: TrainConfig) -> Prepared:
    """Load, split, fit the normaliser on train, tensorise once."""
    ds = load_dataset(cfg.data)
    outcomes = _outcomes(ds.patients)
    observed_ids = set(ds.observations["patient_id"].astype(str).unique())
    usable = outcomes[outcomes["died"].notna() & outcomes.index.isin(observed_ids)]
    dropped = len(outcomes) - len(usable)
    if dropped:
        log.warning("%d patient(s) without an outcome or without observations left out",
                    dropped)
    ids = sorted(usable.index)
    if cfg.max_patients and len(ids) > cfg.max_patients:
        pick = np.random.default_rng([cfg.seed, 1]).choice(len(ids), cfg.max_patients,
                                                            replace=False)
        ids = sorted(ids[i] for i in pick)
    split = split_patients(ids, cfg.seed, cfg.split,
                           (cfg.fold, cfg.folds) if cfg.folds else None)

    # The first `window` hours of each stay, as training.evaluate scores them: a row at or
    # past the window's end would slide the grid (features.tensorise) and train the model
    # on hours 1..48 of some stays while it is evaluated on hours 0..47 of the same stays.
    window = cfg.step_hours * cfg.n_steps
    obs = ds.observations
    obs = obs[obs["patient_id"].astype(str).isin(set(ids)) & (obs["time_hours"] < window)]
    train_rows = obs[obs["patient_id"].astype(str).isin(set(split.train))]
    present = set(train_rows["variable"].astype(str).unique())
    features = [v for v in MEASUREMENTS if v in present]
    if not features:
        raise ValueError(f"no catalogue measurement in the training rows of {cfg.data}")
    patients = ds.patients
    pid = patients["patient_id"].astype(str) if "patient_id" in patients.columns \
        else patients.index.astype(str)
    normalizer = Normalizer.fit(train_rows, patients[pid.isin(set(split.train))], features)
    grid = Grid(step_hours=cfg.step_hours, n_steps=cfg.n_steps)

    stays: dict[str, StayTensors] = {}
    for part, part_ids in (("train", split.train), ("val", split.val), ("test", split.test)):
        if not part_ids:
            continue
        t = tensorise(obs, normalizer, grid, patients=patients, patient_ids=list(part_ids))
        o = usable.loc[list(part_ids)]
        stays[part] = StayTensors.from_tensors(t, o["died"].to_numpy(np.float32),
                                               o["los_days"].to_numpy(np.float32))
    prevalence = float(stays["train"].died.mean())
    return Prepared(split, normalizer, grid, stays, ds.fingerprint, prevalence)


def _model_config(cfg: TrainConfig, prep: Prepared) -> ModelConfig:
    n_f = len(prep.normalizer.features)
    common: dict[str, Any] = dict(n_inputs=3 * n_f, n_static=prep.normalizer.n_static_inputs,
                                  hidden=cfg.hidden, layers=cfg.layers, dropout=cfg.dropout,
                                  attn_dim=cfg.attn_dim)
    if cfg.task == "forecast":
        return ModelConfig(arch="seq2seq", horizon=cfg.horizon, n_targets=len(_targets(cfg,
                           prep)), target_index=tuple(_targets(cfg, prep).values()), **common)
    return ModelConfig(arch=cfg.arch, bidirectional=cfg.bidirectional, **common)


def _targets(cfg: TrainConfig, prep: Prepared) -> dict[str, int]:
    """Forecast targets present in the data -> their feature position."""
    feats = list(prep.normalizer.features)
    unknown = [t for t in cfg.targets if t not in MEASUREMENTS]
    if unknown:
        raise ConfigError(f"forecast targets {unknown} are not catalogue measurements")
    found = {t: feats.index(t) for t in cfg.targets if t in feats}
    if not found:
        raise ConfigError(f"none of the forecast targets {list(cfg.targets)} occur in the data")
    return found


def _binary_metrics(prefix: str, y: np.ndarray, logit: np.ndarray,
                    temperature: float) -> dict[str, float]:
    p = sigmoid(logit / temperature)
    out = {f"{prefix}n": float(len(y))}
    if len(np.unique(y)) == 2:
        out[f"{prefix}auroc"] = float(roc_auc_score(y, p))
        out[f"{prefix}brier"] = float(brier_score_loss(y, p))
        out[f"{prefix}ece"] = expected_calibration_error(p, y)
    return out


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run one training job (this process's part of it under torchrun)."""
    t0 = time.perf_counter()
    d = setup_distributed(cfg.device)
    try:
        return _train(cfg, resume, d, t0)
    finally:
        teardown(d)


def _train(cfg: TrainConfig, resume: bool, d: Distributed, t0: float) -> TrainResult:
    torch.set_num_threads(max(1, cfg.threads // d.world) if d.device.type == "cpu"
                          else cfg.threads)
    prep = prepare(cfg)
    effect_data = load_dataset(cfg.data) if cfg.task == "effect" else None
    if effect_data is not None:
        check_effect_data(effect_data)  # before any fitting, not after the risk model
    stays = {k: v.to(d.device) for k, v in prep.stays.items()}
    t_prep = time.perf_counter() - t0
    mcfg = _model_config(cfg, prep)
    torch.manual_seed(cfg.seed)
    model = build_model(mcfg).to(d.device)

    n_pos = float(prep.stays["train"].died.sum())
    n_neg = len(prep.stays["train"]) - n_pos
    pos_weight = cfg.pos_weight or (n_neg / n_pos if n_pos > 0 and n_neg > 0 else 1.0)
    min_bins = max(1, math.ceil(cfg.min_prefix_hours / cfg.step_hours))
    max_bins = min(cfg.n_steps, int(cfg.max_prefix_hours / cfg.step_hours))
    extra: dict[str, Any] = {}
    task: RiskTask | ForecastTask
    if cfg.task == "forecast":
        targets = _targets(cfg, prep)
        max_bins = min(max_bins, cfg.n_steps - 1)
        task = ForecastTask(stays["train"], stays["val"], min(min_bins, max_bins), max_bins,
                            torch.tensor(list(targets.values()), device=d.device),
                            cfg.horizon, pos_weight, cfg.los_weight, val_seed=cfg.seed)
        extra.update(targets=list(targets), horizon=cfg.horizon)
    else:
        task = RiskTask(stays["train"], stays["val"], min_bins, max_bins, pos_weight,
                        cfg.los_weight, val_seed=cfg.seed, full_share=cfg.full_prefix_share)

    store = RunStore(Path(cfg.model_dir) / ".runs" / cfg.name)
    run_meta = {"fingerprint": prep.fingerprint, "config": cfg.to_dict(), "world": d.world}
    result = fit(model, task, cfg, d, store, run_meta, resume=resume)
    model.load_state_dict(result.best_state)
    model.eval()
    t_fit = time.perf_counter() - t0 - t_prep

    with torch.no_grad():
        val_out = infer(model, stays["val"])
        test_out = infer(model, stays["test"]) if "test" in stays else None
    y_val = prep.stays["val"].died.numpy()
    temperature = fit_temperature(val_out["logit"].numpy(), y_val)
    metrics: dict[str, Any] = {
        "temperature": temperature, "pos_weight": pos_weight, "prevalence": prep.prevalence,
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "seconds_prepare": round(t_prep, 2), "seconds_fit": round(t_fit, 2),
        "processes": d.world,
    }
    metrics.update(_binary_metrics("val_", y_val, val_out["logit"].numpy(), temperature))
    if test_out is not None:
        metrics.update(_binary_metrics("test_", prep.stays["test"].died.numpy(),
                                       test_out["logit"].numpy(), temperature))
    best = next((r for r in result.history if int(r["epoch"]) == result.best_epoch), {})
    if "val_forecast_mse" in best:
        metrics["val_forecast_mse"] = best["val_forecast_mse"]

    extra.update(
        split=prep.split.to_dict(), data_dir=str(Path(cfg.data).resolve()),
        train_config=cfg.to_dict(), history=result.history,
        prefix_hours=[cfg.min_prefix_hours, cfg.max_prefix_hours],
    )
    tensors = None
    if effect_data is not None:  # the what-if networks, saved beside the risk model
        fitted = fit_effect(cfg, effect_data, prep.split, prep.normalizer, prep.grid, d)
        extra["effect"], tensors = effect_meta(fitted.model), effect_tensors(fitted.model)
        metrics.update(fitted.metrics)
    version_dir = None
    if d.is_main:
        version_dir = save_checkpoint(
            cfg.model_dir, cfg.name, model.cpu(), mcfg, prep.normalizer, prep.grid,
            temperature=temperature, task=cfg.task, metrics=metrics,
            fingerprint=prep.fingerprint, extra=extra, tensors=tensors)
        store.clear()
    metrics["seconds_total"] = round(time.perf_counter() - t0, 2)
    return TrainResult(version_dir, metrics, result.history)


def resume_message(cfg: TrainConfig) -> str:
    """What --resume will do, said before the data is loaded: a resume that finds no saved
    run starts afresh (so a job can always be restarted with --resume), which the user
    must hear rather than discover from the epoch count."""
    store = RunStore(Path(cfg.model_dir) / ".runs" / cfg.name)
    if not store.exists():
        return (f"--resume: no saved run of {cfg.name!r} in {store.dir} (none was "
                f"interrupted, or it finished and was published): nothing to resume, "
                f"training from scratch")
    try:
        epoch = int(json.loads(store.state_path.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"--resume: continuing the saved run in {store.dir}"
    return f"--resume: continuing the saved run in {store.dir} after epoch {epoch + 1}"


TASK_HELP = {
    "risk": "risk of in-hospital death + length of stay (the default)",
    "forecast": "a seq2seq forecaster of the next --horizon bins of --targets, with risk + LOS",
    "effect": "risk + LOS with the what-if networks (treatment effects) beside them, "
              "trained on a treated cohort (python -m training.synthesize --confounding G)",
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train a model and publish it: a risk + length-of-stay model, a seq2seq "
                    "forecaster, or a risk model with what-if networks (--task effect).")
    ap.add_argument("--config", type=Path, help="TOML file of these settings; flags win")
    ap.add_argument("--resume", action="store_true",
                    help="continue the interrupted run of --name from its last saved epoch "
                         "(with none saved: says so and trains from scratch)")
    ap.add_argument("--data", help="data directory (observations, patients[, truth])")
    ap.add_argument("--name", help="checkpoint name (default: default)")
    ap.add_argument("--model-dir", dest="model_dir", help="where versions are published")
    ap.add_argument("--task", choices=TASKS, help="; ".join(
        f"{k}: {TASK_HELP[k]}" for k in TASKS))
    ap.add_argument("--arch", choices=("elman", "jordan", "lstm", "gru"),
                    help="recurrent encoder: elman or jordan (simple recurrent networks), "
                         "lstm or gru")
    ap.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None,
                    help="bidirectional encoder (elman/lstm/gru); --no-bidirectional to "
                         "override a config file")
    flags: list[tuple[str, type, str]] = [
        ("hidden", int, "recurrent state size"), ("layers", int, "stacked layers"),
        ("dropout", float, "dropout rate"), ("attn-dim", int, "attention width"),
        ("lr", float, "learning rate"), ("weight-decay", float, "AdamW weight decay"),
        ("lr-schedule", str, "constant, or cosine (decay to 0 over --epochs)"),
        ("batch-size", int, "stays per batch (per process)"),
        ("epochs", int, "maximum epochs"), ("patience", int, "early-stopping patience"),
        ("seed", int, "seed for split, prefixes and weights"),
        ("split", str, "train,val,test fractions, e.g. 0.7,0.15,0.15"),
        ("folds", int, "K-fold cross-validation: K >= 2 parts (0 = use --split)"),
        ("fold", int, "with --folds: the part held out as the test split (0-based)"),
        ("min-prefix-hours", float, "shortest training prefix"),
        ("max-prefix-hours", float, "longest training prefix"),
        ("full-prefix-share", float, "share of training prefixes at the longest length"),
        ("step-hours", float, "grid bin width"), ("n-steps", int, "grid bins"),
        ("pos-weight", float, "positive-class weight (0 = neg/pos)"),
        ("los-weight", float, "weight of the LOS loss"),
        ("clip-norm", float, "gradient clipping norm"),
        ("threads", int, "torch threads (split across processes)"),
        ("max-patients", int, "use a seeded subsample of this many stays (0 = all)"),
        ("horizon", int, "forecast bins ahead"),
        ("effect-members", int, "effect: ensemble members per estimator"),
        ("targets", str, "forecast variables, comma-separated"),
        ("device", str, "auto, cpu or cuda"),
    ]
    for flag, kind, text in flags:
        ap.add_argument(f"--{flag}", dest=flag.replace("-", "_"), type=kind, help=text)
    ap.add_argument("-v", "--verbose", action="store_true", help="log each epoch")
    return ap


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < --config file < flags given on the command line."""
    base = TrainConfig()
    if args.config is not None:
        base = TrainConfig.from_mapping(load_config_file(args.config), base, str(args.config))
    skip = {"config", "resume", "verbose"}
    given = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    cfg = TrainConfig.from_mapping(given, base, "command line")
    if not cfg.data:
        raise ConfigError("--data is required (or `data` in the config file)")
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        if args.resume and os.environ.get("RANK", "0") == "0":  # once under torchrun
            print(resume_message(cfg), file=sys.stderr)
        res = train(cfg, resume=args.resume)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if res.version_dir is not None:
        m = res.metrics
        shown = {k: m[k] for k in ("val_auroc", "test_auroc", "test_ece", "val_forecast_mse",
                                   "temperature", "epochs_run", "seconds_total") if k in m}
        print(f"published {res.version_dir}")
        print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in shown.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
