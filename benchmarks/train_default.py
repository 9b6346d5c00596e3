"""Wall time of training the default model (bidirectional LSTM with attention) end to end.

    python benchmarks/train_default.py [--patients 10000] [--seed 7] [--data DIR]
                                       [--config configs/default.toml] [--eval-data DIR]

Generates the synthetic cohort first (not timed) unless --data points at one, then times
`python -m training.train` as a user runs it — a fresh process, loading, splitting,
tensorising, training with early stopping, calibrating and publishing — and prints the
wall time beside the 120 s budget, with the run's own breakdown. With --eval-data it then
evaluates the checkpoint on that (separately seeded) cohort, untimed, and prints AUROC
against the oracle, NEWS2 and the last-value logistic regression.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 120.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--data", type=Path, help="existing cohort (default: generate one)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "default.toml")
    ap.add_argument("--eval-data", type=Path, help="cohort to evaluate on afterwards")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="vitalcast-bench-") as tmp:
        data = args.data
        if data is None:
            from training.synthesize import write_cohort

            data = Path(tmp) / "data"
            t0 = time.perf_counter()
            write_cohort(args.patients, args.seed, data)
            print(f"generated {args.patients} patients (seed {args.seed}) in "
                  f"{time.perf_counter() - t0:.1f} s (not timed)")
        model_dir = Path(tmp) / "models"
        cmd = [sys.executable, "-m", "training.train", "--config", str(args.config),
               "--data", str(data), "--name", "default", "--model-dir", str(model_dir),
               "--seed", str(args.seed), "--threads", str(args.threads)]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True)
        wall = time.perf_counter() - t0
        version = sorted((model_dir / "default").iterdir())[-1]
        meta = json.loads((version / "model.json").read_text())
        m = meta["metrics"]
        verdict = "within" if wall <= BUDGET_S else "OVER"
        print(f"train_default: {args.patients} patients, wall {wall:.1f} s "
              f"({verdict} the {BUDGET_S:.0f} s budget); prepare {m['seconds_prepare']:.1f} s, "
              f"fit {m['seconds_fit']:.1f} s, {m['epochs_run']} epochs "
              f"(best {m['best_epoch'] + 1}), threads {args.threads}")
        print(f"  held-out split: AUROC {m.get('test_auroc', float('nan')):.3f}, "
              f"ECE {m.get('test_ece', float('nan')):.3f}, temperature {m['temperature']:.3f}")
        if args.eval_data is not None:
            report = Path(tmp) / "report"
            subprocess.run([sys.executable, "-m", "training.evaluate", "--model-dir",
                            str(model_dir), "--name", "default", "--data", str(args.eval_data),
                            "--out", str(report)], cwd=ROOT, check=True)
            r = json.loads((report / "metrics.json").read_text())
            print(f"  on {args.eval_data}: AUROC {r['auroc']:.3f} vs oracle "
                  f"{r.get('oracle_auroc') or float('nan'):.3f} "
                  f"(ratio {r.get('auroc_over_oracle') or float('nan'):.3f}), "
                  f"NEWS2 {r['news2_auroc']:.3f}, last-value LR {r['last_value_lr_auroc']:.3f}, "
                  f"ECE {r['ece']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
