"""Treatment-effect estimation across confounding strengths: adjusted (IPW) vs naive.

    python -m benchmarks.effects [--patients 10000] [--strengths 0,1,3,5] [--seed 11]
                                 [--epochs 20] [--patience 3] [--hidden 32] [--members 2]
                                 [--out reports/effects]

For each confounding strength G: a treated synthetic cohort (`training.synthesize
--confounding G`), then, as a user runs them, `python -m training.train --task effect`
and `python -m training.evaluate` on the held-out test split. Prints one table: per plan,
the true average effect, ATE error and PEHE of the adjusted and the naive networks,
interval coverage (nominal 90 %), MAP RMSE under the plan (adjusted, naive, last value),
and, per G, the what-if networks' factual AUROC beside the risk model's and the oracle's.

PEHE has a floor no estimator can go under: the true per-patient effect depends on what
happens after the decision (a deterioration that starts later, its speed), which no
history shows. The `floor` column estimates it: the cross-validated error of a gradient-
boosted regression fitted to the true effects from the generator's own patient parameters
as known at the decision hour (age, frailty, phenotype, chronic offset, and onset and speed
of a deterioration already under way), on the same test patients. It is a reference from
the simulator's hidden truth, not a model anyone could deploy.

Writes `effect_by_confounding.png` (PEHE and ATE error against G) and `effects.json` into
--out, and keeps each G's evaluation report (metrics.json and plots) under it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import cross_val_predict

from training import interventions as iv
from training import simulator as sim
from training.effect_plots import plot_effect_by_confounding
from training.synthesize import CHUNK, write_cohort

ROOT = Path(__file__).resolve().parent.parent
PLANS = iv.PLANS[1:]  # the plans compared with "none"


def pehe_floor(n_patients: int, seed: int, confounding: float, test_ids: list[str]
               ) -> dict[str, float]:
    """Per plan, the PEHE of a regression on the patient parameters known at the decision
    hour, cross-validated on the test patients (see the module docstring)."""
    feats, effects = [], []
    for index, start in enumerate(range(0, n_patients, CHUNK)):
        n = min(CHUNK, n_patients - start)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
        p, noise = sim.draw_params(rng, n), sim.draw_noise(rng, n)
        run = iv.run_policy(p, noise, iv.draw_policy_noise(rng, n), confounding)
        dh = run.decision_hour
        risk = {name: sim.simulate(p, noise, iv.canonical_plan(run.history, dh, name)).true_risk
                for name in iv.PLANS}
        known = p.deteriorates & (p.onset < dh)
        feats.append(np.c_[p.age, p.frailty, p.phenotype, p.chronic,
                           np.where(known, p.onset, np.nan), np.where(known, p.rate, np.nan), dh])
        effects.append(np.c_[[risk[name] - risk["none"] for name in PLANS]].T)
    rows = np.array([int(i[1:]) for i in test_ids])
    x, y = np.concatenate(feats)[rows], np.concatenate(effects)[rows]
    out = {}
    for j, name in enumerate(PLANS):
        pred = cross_val_predict(HistGradientBoostingRegressor(max_iter=200, random_state=0),
                                 x, y[:, j], cv=5)
        out[name] = float(np.sqrt(np.mean((pred - y[:, j]) ** 2)))
    return out


def run_strength(g: float, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data, models, report = work / f"g{g:g}", work / "models", args.out / f"g{g:g}"
    write_cohort(args.patients, args.seed, data, confounding=g)
    name = f"effect-g{g:g}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "training.train", "--task", "effect", "--data",
                    str(data), "--arch", "gru", "--hidden", str(args.hidden), "--epochs",
                    str(args.epochs), "--patience", str(args.patience), "--effect-members",
                    str(args.members), "--seed", str(args.seed), "--name", name,
                    "--model-dir", str(models), "--threads", str(args.threads)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    train_s = time.perf_counter() - t0
    subprocess.run([sys.executable, "-m", "training.evaluate", "--model-dir", str(models),
                    "--name", name, "--data", str(data), "--out", str(report),
                    "--bootstrap", "50", "--explain-sample", "0"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((report / "metrics.json").read_text())
    version = sorted((models / name).iterdir())[-1]
    test_ids = json.loads((version / "model.json").read_text())["extra"]["split"]["test_ids"]
    return {"G": g, "train_s": round(train_s, 1), "metrics": metrics,
            "floor": pehe_floor(args.patients, args.seed, g, test_ids)}


def _f(x: float | None, fmt: str = "+.4f") -> str:
    return "   n/a" if x is None else format(x, fmt)


def table(results: list[dict[str, Any]]) -> list[str]:
    head = (f"{'G':>3} {'plan':<16}{'true ATE':>9} {'ATE err adj':>11} {'naive':>7} "
            f"{'PEHE adj':>9} {'naive':>7} {'ratio':>6} {'floor':>6} {'cover':>6} "
            f"{'MAP RMSE adj':>12} {'naive':>6} {'last':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        m = r["metrics"]
        for plan in PLANS:
            p = m["effect"]["plans"][plan]
            lines.append(
                f"{r['G']:>3g} {plan:<16}{_f(p['true_ate']):>9} {_f(p['ate_error'], '.4f'):>11} "
                f"{_f(p['naive_ate_error'], '.4f'):>7} {_f(p['pehe'], '.4f'):>9} "
                f"{_f(p['naive_pehe'], '.4f'):>7} {p['pehe'] / p['naive_pehe']:>6.2f} "
                f"{r['floor'][plan]:>6.3f} {_f(p.get('coverage'), '.3f'):>6} "
                f"{_f(p['map_rmse'], '.2f'):>12} {_f(p['naive_map_rmse'], '.2f'):>6} "
                f"{_f(p['last_value_map_rmse'], '.2f'):>6}")
        lines.append(f"    factual AUROC: what-if networks {m['factual_auroc']:.3f} "
                     f"(naive {m['naive_factual_auroc']:.3f}), risk model {m['auroc']:.3f}, "
                     f"oracle {m['oracle_auroc']:.3f} (risk model / oracle "
                     f"{m['auroc'] / m['oracle_auroc']:.3f}); n={m['effect']['n']}, "
                     f"train {r['train_s']:.0f} s")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--strengths", default="0,1,3,5", help="confounding strengths G")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--members", type=int, default=2, help="ensemble members per estimator")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "effects")
    args = ap.parse_args()
    strengths = [float(g) for g in args.strengths.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vitalcast-effects-") as tmp:
        results = []
        for g in strengths:
            results.append(run_strength(g, args, Path(tmp)))
            print(f"G={g:g} done ({results[-1]['train_s']:.0f} s training)", flush=True)
            shutil.rmtree(Path(tmp) / f"g{g:g}", ignore_errors=True)
    print(f"\n{args.patients} patients per G, test split scored; ATE error and PEHE against "
          "counterfactual truth, ratio = adjusted / naive PEHE; coverage of the nominal 90 % "
          "intervals; MAP RMSE (mmHg) at hours 1-6 after the decision")
    print("\n".join(table(results)))
    series = {plan: {k: [r["metrics"]["effect"]["plans"][plan][k] for r in results]
                     for k in ("pehe", "naive_pehe", "ate_error", "naive_ate_error")}
              for plan in PLANS}
    plot = plot_effect_by_confounding(strengths, series, args.out / "effect_by_confounding.png")
    (args.out / "effects.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {plot} and {args.out / 'effects.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
