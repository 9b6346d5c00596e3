"""K-fold cross-validated AUROC of the default model on PhysioNet 2012 set A, beside SAPS-I.

    .venv/bin/python -m benchmarks.physionet_cv [--data DIR] [--folds 5] [--seed 7]
                                                [--config configs/physionet.toml] [--out FILE]
                                                [-- extra training.train flags]

Without --data, imports set A from ../shared/data/physionet2012/ into a temporary directory
first (`python -m training.import_physionet`). Then, for each fold k, runs
`python -m training.train --config C --folds K --fold k` as a user would (the test split is
fold k; train and validation are cut from the rest at the config's ratio), and scores the
held-out fold through `models.predict.score`, the service's own path. The K held-out folds
partition the patients, so the pooled out-of-fold probabilities give one AUROC over every
stay, with a bootstrap 95 % interval; SAPS-I (from the challenge's descriptors) is scored on
the same stays, and the paired difference model - SAPS-I gets its own interval. Per-fold
AUROCs are printed too. The published GRU-D figure on this data is 0.842 (Che et al., 2018).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from models.checkpoint import latest_version_dir, load_checkpoint
from models.predict import score
from training.baselines import patient_column
from training.data import load_dataset
from training.metrics import binary_report, bootstrap_indices, compare_auroc

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "physionet2012"
TARGET = 0.84


def _import(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "training.import_physionet",
                    "--src", str(SHARED / "set-a.tar.gz"),
                    "--outcomes", str(SHARED / "Outcomes-a.txt"), "--out", str(out)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return out


def _fold(data: Path, model_dir: Path, k: int, args: argparse.Namespace) -> pd.DataFrame:
    """Train fold k; its held-out patients with outcome and calibrated probability."""
    name = f"fold{k}"
    cmd = [sys.executable, "-m", "training.train", "--config", str(args.config),
           "--data", str(data), "--name", name, "--model-dir", str(model_dir),
           "--folds", str(args.folds), "--fold", str(k), "--seed", str(args.seed),
           *args.train_args]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    version = latest_version_dir(model_dir, name)
    assert version is not None, f"fold {k} published nothing"
    ckpt = load_checkpoint(version)
    ds = load_dataset(data)
    ids = [str(i) for i in ckpt.extra["split"]["test_ids"]]
    window = ckpt.grid.n_steps * ckpt.grid.step_hours
    obs = ds.observations[ds.observations["time_hours"] < window]
    preds = score(ckpt, obs[obs["patient_id"].astype(str).isin(set(ids))], ds.patients, ids)
    died = patient_column(ds.patients, "died", ids)
    out = pd.DataFrame({"patient_id": ids, "fold": k, "died": died,
                        "probability": [p.probability for p in preds],
                        "saps_i": patient_column(ds.patients, "saps_i", ids)})
    print(f"fold {k}: n={len(ids)}, AUROC {roc_auc_score(died, out['probability']):.3f}, "
          f"{ckpt.metrics['epochs_run']} epochs, trained in {wall:.0f} s", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="imported set A (default: import it)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "physionet.toml")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument("train_args", nargs="*", help="extra training.train flags, after --")
    args = ap.parse_args()

    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="vitalcast-cv-") as tmp:
        data = args.data or _import(Path(tmp) / "physionet-a")
        rows = pd.concat([_fold(data, Path(tmp) / "models", k, args)
                          for k in range(args.folds)], ignore_index=True)
    y, p, saps = (rows[c].to_numpy(np.float64) for c in ("died", "probability", "saps_i"))
    boot = bootstrap_indices(len(y), args.bootstrap, args.seed)
    model = binary_report(y, p, boot)
    saps_rep = binary_report(y, saps, boot, probability=False)
    diff = compare_auroc(y, p, saps, boot)
    per_fold = [float(roc_auc_score(g["died"], g["probability"]))
                for _, g in rows.groupby("fold")]

    def ci(rep, key):
        lo, hi = rep[f"{key}_ci"] or (float("nan"), float("nan"))
        return f"{rep[key]:.3f} [{lo:.3f}, {hi:.3f}]"

    verdict = "meets" if model["auroc"] >= TARGET else "BELOW"
    print(f"pooled out-of-fold, {args.folds} folds, n={len(y)}, deaths {int(y.sum())}:")
    print(f"  model AUROC {ci(model, 'auroc')} ({verdict} the {TARGET} target), "
          f"AUPRC {ci(model, 'auprc')}, ECE {ci(model, 'ece')}")
    print(f"  SAPS-I AUROC {ci(saps_rep, 'auroc')} (n={saps_rep['n']})")
    print(f"  model - SAPS-I {ci(diff, 'difference')} (paired, n={diff['n']})")
    print(f"  per fold: {', '.join(f'{a:.3f}' for a in per_fold)} "
          f"(mean {np.mean(per_fold):.3f}, sd {np.std(per_fold, ddof=1):.3f})")
    print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")
    if args.out is not None:
        args.out.write_text(json.dumps({"model": model, "saps_i": saps_rep,
                                        "model_minus_saps_i": diff, "per_fold": per_fold,
                                        "folds": args.folds, "seed": args.seed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
