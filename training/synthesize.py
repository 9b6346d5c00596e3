"""Synthetic ICU cohorts with known ground truth.

    python -m training.synthesize --patients N --seed S --out DIR [--confounding G]
                                  [--no-summary]

Writes `observations.parquet` (long format, canonical names and units),
`patients.parquet` (statics and outcomes) and `truth.parquet` (true risk, onset hour,
driven variables) into DIR, then prints a summary: prevalence, the oracle AUROC (true
risk vs drawn outcome), NEWS2's AUROC at 48 h and a last-value logistic regression's
AUROC. The physiology lives in `training.simulator`; `docs/synthetic.md` explains it.

With `--confounding G` (issue 11) a clinician-like policy (`training.interventions`)
treats the cohort from what it observes, with confounding strength G, the intervention
rows join `observations.parquet`, `truth.parquet` gains `decision_hour`, and
`counterfactuals.parquet` holds, per patient and canonical plan, the true risk and the
noise-free MAP over the 6 h after the decision hour, from shared-noise re-simulation.
The summary then adds treatment rates, the true average effect of each plan and the
naive difference in death rates between the arms.

The cohort is generated in fixed-size chunks, each from its own seed derived from
(seed, chunk index), so memory stays bounded and the files are byte-identical for a seed
whatever the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.catalogue import INTERVENTIONS
from training.interventions import (
    PLANS,
    canonical_plan,
    draw_policy_noise,
    plan_events,
    run_policy,
)
from training.simulator import (
    LABS,
    PHENOTYPES,
    VITALS,
    Noise,
    Params,
    Plan,
    Trajectories,
    draw_noise,
    draw_params,
    simulate,
    true_vitals,
)

__all__ = [
    "CHUNK",
    "PlanFigures",
    "Summary",
    "effect_figures",
    "effect_lines",
    "generate",
    "main",
    "plan_arms",
    "summarise",
    "write_cohort",
]

CHUNK = 5000  # patients per generation chunk; part of the seed derivation, so fixed

OBS_SCHEMA = pa.schema([("patient_id", pa.string()), ("time_hours", pa.float64()),
                        ("variable", pa.string()), ("value", pa.float64())])
PATIENT_SCHEMA = pa.schema([("patient_id", pa.string()), ("age", pa.float64()),
                            ("sex", pa.string()), ("weight", pa.float64()),
                            ("height", pa.float64()), ("died", pa.int64()),
                            ("los_days", pa.float64())])
TRUTH_SCHEMA = pa.schema([("patient_id", pa.string()), ("true_risk", pa.float64()),
                          ("onset_hour", pa.float64()), ("driven", pa.string())])
TREATED_TRUTH_SCHEMA = TRUTH_SCHEMA.append(pa.field("decision_hour", pa.float64()))
MAP_HOURS = 6  # counterfactual MAP is given at decision_hour + 1 .. + MAP_HOURS
COUNTERFACTUAL_SCHEMA = pa.schema(
    [("patient_id", pa.string()), ("decision_hour", pa.float64()), ("plan", pa.string()),
     ("true_risk", pa.float64())]
    + [(f"map_{k}", pa.float64()) for k in range(1, MAP_HOURS + 1)])
_NAMES = pa.array([s.name for s in VITALS + LABS] + list(INTERVENTIONS), pa.string())
_MAP = [s.name for s in VITALS].index("map")


@dataclass(frozen=True)
class Chunk:
    observations: pa.Table
    patients: pa.Table
    truth: pa.Table
    counterfactuals: pa.Table | None  # only with --confounding


def _driven_names() -> list[str]:
    """Per phenotype, the comma-separated variables its deterioration moves."""
    out = []
    for p in range(len(PHENOTYPES)):
        names = [s.name for s in VITALS + LABS if s.loads[p] != 0.0]
        # MAP follows SBP and DBP, so it is driven whenever they are.
        if "sbp" in names and "map" not in names:
            names.insert(names.index("dbp") + 1, "map")
        out.append(",".join(names))
    return out


def _ids(start: int, n: int, width: int) -> pa.Array:
    return pa.array([f"p{i:0{width}d}" for i in range(start, start + n)], pa.string())


def _observation_table(ids: pa.Array, traj: Trajectories, plan: Plan | None = None) -> pa.Table:
    nv = len(VITALS)
    vi, vk, vj = np.nonzero(~np.isnan(traj.vital_values))  # C order: patient, round, var
    li, lk, lj = np.nonzero(~np.isnan(traj.lab_values))
    pid = np.concatenate([vi, li])
    t = np.concatenate([traj.vital_times[vi, vk], traj.lab_times[li, lk]])
    var = np.concatenate([vj, lj + nv])
    val = np.concatenate([traj.vital_values[vi, vk, vj], traj.lab_values[li, lk, lj]])
    if plan is not None:
        ii, it, ivar, ival = plan_events(plan)
        ivar = ivar + len(VITALS) + len(LABS)  # interventions follow the measurements
        pid, t = np.concatenate([pid, ii]), np.concatenate([t, it])
        var, val = np.concatenate([var, ivar]), np.concatenate([val, ival])
    # Sort by patient, then time, then catalogue order, through one integer key (times are
    # in hundredths of an hour): a single argsort is several times faster than a lexsort.
    key = (pid * 4801 + np.rint(t * 100).astype(np.int64)) * 64 + var
    order = np.argsort(key, kind="stable")
    return pa.table({
        "patient_id": pc.take(ids, pa.array(pid[order])),
        "time_hours": pa.array(t[order]),
        "variable": pc.take(_NAMES, pa.array(var[order])),
        "value": pa.array(val[order]),
    }, schema=OBS_SCHEMA)


def _chunk(seed: int, index: int, start: int, n: int, width: int,
           confounding: float | None = None) -> tuple[Chunk, Params, Trajectories]:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    params = draw_params(rng, n)
    noise = draw_noise(rng, n)
    ids = _ids(start, n, width)
    counterfactuals = None
    if confounding is None:
        traj = simulate(params, noise, Plan.none(n))
        observations = _observation_table(ids, traj)
    else:
        # The policy's draws come after the simulator's, so params and noise stay the same.
        run = run_policy(params, noise, draw_policy_noise(rng, n), confounding)
        traj = simulate(params, noise, run.factual)
        observations = _observation_table(ids, traj, run.factual)
        counterfactuals = _counterfactuals(ids, params, noise, run.history, run.decision_hour)
    patients = pa.table({
        "patient_id": ids,
        "age": pa.array(np.round(params.age, 0)),
        "sex": pa.array(np.where(params.male, "male", "female"), pa.string()),
        "weight": pa.array(np.round(params.weight, 1)),
        "height": pa.array(np.round(params.height, 0)),
        "died": pa.array(traj.died.astype(np.int64)),
        "los_days": pa.array(traj.los_days),
    }, schema=PATIENT_SCHEMA)
    driven = np.array(_driven_names(), dtype=object)[params.phenotype]
    truth = pa.table({
        "patient_id": ids,
        "true_risk": pa.array(traj.true_risk),
        "onset_hour": pa.array(np.round(params.onset, 2)),  # NaN when none
        "driven": pa.array(np.where(params.deteriorates, driven, ""), pa.string()),
    }, schema=TRUTH_SCHEMA)
    if counterfactuals is not None:
        truth = truth.append_column("decision_hour", pa.array(run.decision_hour.astype(float)))
    return Chunk(observations, patients, truth, counterfactuals), params, traj


def _counterfactuals(ids: pa.Array, params: Params, noise: Noise, history: Plan,
                     decision_hour: np.ndarray) -> pa.Table:
    """Per patient and canonical plan: the true risk and the noise-free MAP at decision
    hour + 1 .. + MAP_HOURS, re-simulated with the patient's own draws."""
    n = len(ids)
    times = decision_hour[:, None] + np.arange(1, MAP_HOURS + 1)[None, :]  # (N, MAP_HOURS)
    cols: dict[str, list[np.ndarray]] = {"risk": [], "map": []}
    for name in PLANS:
        plan = canonical_plan(history, decision_hour, name)
        traj = simulate(params, noise, plan)
        cols["risk"].append(traj.true_risk)
        cols["map"].append(true_vitals(params, traj.state, plan, times)[:, :, _MAP])
    k = len(PLANS)
    order = np.arange(n * k).reshape(k, n).T.reshape(-1)  # patient-major, plans in order
    risk = np.concatenate(cols["risk"])[order]
    maps = np.concatenate(cols["map"])[order]
    table = {
        "patient_id": pc.take(ids, pa.array(np.repeat(np.arange(n), k))),
        "decision_hour": pa.array(np.repeat(decision_hour.astype(np.float64), k)),
        "plan": pa.array(np.tile(np.array(PLANS, dtype=object), n), pa.string()),
        "true_risk": pa.array(risk),
    }
    for j in range(MAP_HOURS):
        table[f"map_{j + 1}"] = pa.array(maps[:, j])
    return pa.table(table, schema=COUNTERFACTUAL_SCHEMA)


def generate(n_patients: int, seed: int, confounding: float | None = None) -> Iterator[Chunk]:
    """The cohort as a sequence of chunks of at most CHUNK patients; with `confounding`,
    treated by the policy (module docstring)."""
    if n_patients < 1:
        raise ValueError(f"--patients must be >= 1, got {n_patients}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    if confounding is not None and not (np.isfinite(confounding) and confounding >= 0):
        raise ValueError(f"--confounding must be a finite number >= 0, got {confounding}")
    width = max(6, len(str(n_patients - 1)))
    for index, start in enumerate(range(0, n_patients, CHUNK)):
        yield _chunk(seed, index, start, min(CHUNK, n_patients - start), width, confounding)[0]


def write_cohort(n_patients: int, seed: int, out: Path,
                 confounding: float | None = None) -> dict[str, Path]:
    """Generate and write the tables into `out`; returns their paths."""
    if confounding is not None and not (np.isfinite(confounding) and confounding >= 0):
        raise ValueError(f"--confounding must be a finite number >= 0, got {confounding}")
    out.mkdir(parents=True, exist_ok=True)
    schemas = {"observations": OBS_SCHEMA, "patients": PATIENT_SCHEMA, "truth": TRUTH_SCHEMA}
    if confounding is not None:
        schemas["truth"] = TREATED_TRUTH_SCHEMA
        schemas["counterfactuals"] = COUNTERFACTUAL_SCHEMA
    else:
        # An untreated cohort written over a treated one must not keep stale truth.
        (out / "counterfactuals.parquet").unlink(missing_ok=True)
    paths = {k: out / f"{k}.parquet" for k in schemas}
    # Written to temporary names and renamed, so a crash never leaves a half cohort behind.
    tmp = {k: p.with_suffix(".parquet.tmp") for k, p in paths.items()}
    writers = {k: pq.ParquetWriter(tmp[k], schemas[k], compression="zstd",
                                   write_statistics=True) for k in paths}
    try:
        for chunk in generate(n_patients, seed, confounding):
            writers["observations"].write_table(chunk.observations)
            writers["patients"].write_table(chunk.patients)
            writers["truth"].write_table(chunk.truth)
            if chunk.counterfactuals is not None:
                writers["counterfactuals"].write_table(chunk.counterfactuals)
    finally:
        for w in writers.values():
            w.close()
    for k in paths:
        tmp[k].replace(paths[k])
    return paths


@dataclass(frozen=True)
class Summary:
    n_patients: int  # patients in the cohort
    n_observations: int  # measurement rows
    prevalence: float  # fraction who died
    oracle_auroc: float  # true risk vs drawn outcome: the ceiling any model can reach
    news2_auroc: float  # NEWS2 from the latest vitals at 48 h
    last_value_auroc: float  # logistic regression on last values + missing indicators

    def lines(self) -> list[str]:
        return [
            f"patients            {self.n_patients}",
            f"observations        {self.n_observations}",
            f"prevalence          {self.prevalence:.3f}",
            f"oracle AUROC        {self.oracle_auroc:.3f}",
            f"NEWS2 AUROC         {self.news2_auroc:.3f}",
            f"last-value LR AUROC {self.last_value_auroc:.3f}  (held-out half)",
        ]


def last_value_features(observations: pd.DataFrame, patients: pd.DataFrame) -> pd.DataFrame:
    """Per patient: last observed value of each variable, a missing indicator each, age
    and sex (the 'no trend' baseline's features)."""
    obs = observations.sort_values(["patient_id", "time_hours"], kind="stable")
    last = obs.groupby(["patient_id", "variable"], sort=False)["value"].last().unstack()
    last = last.reindex(index=patients["patient_id"].to_numpy())
    feats = last.copy()
    for c in last.columns:
        feats[f"{c}_missing"] = last[c].isna().astype(np.float64)
    feats["age"] = patients["age"].to_numpy(np.float64)
    feats["male"] = (patients["sex"] == "male").to_numpy(np.float64)
    return feats


def summarise(observations: pd.DataFrame, patients: pd.DataFrame,
              truth: pd.DataFrame, seed: int = 0) -> Summary:
    """The calibration figures of a cohort (see module docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from models.news2 import news2_from_observations

    patients = patients.sort_values("patient_id").reset_index(drop=True)
    truth = truth.set_index("patient_id").reindex(patients["patient_id"])
    y = patients["died"].to_numpy(np.int64)
    oracle = float(roc_auc_score(y, truth["true_risk"].to_numpy()))
    news = news2_from_observations(observations, cutoff_hour=48.0)
    news_score = news["score"].reindex(patients["patient_id"]).fillna(0).to_numpy()
    news_auc = float(roc_auc_score(y, news_score))
    x = last_value_features(observations, patients)
    x = x.fillna(x.median()).fillna(0.0).to_numpy(np.float64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.5, random_state=seed,
                                              stratify=y)
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    lr.fit(x_tr, y_tr)
    lr_auc = float(roc_auc_score(y_te, lr.predict_proba(x_te)[:, 1]))
    return Summary(len(patients), len(observations), float(y.mean()), oracle, news_auc, lr_auc)


@dataclass(frozen=True)
class PlanFigures:
    share: float  # fraction of stays whose record follows this plan from the decision hour
    true_ate: float  # mean over all stays of true_risk[plan] - true_risk["none"]
    naive: float  # death rate in this plan's arm minus the "none" arm's
    naive_ci: tuple[float, float]  # normal-approximation 95 % CI of `naive`


def plan_arms(observations: pd.DataFrame, truth: pd.DataFrame) -> pd.Series:
    """Per patient (index), the canonical plan its record follows from the decision hour,
    read back from the intervention rows at that hour."""
    dh = truth.set_index("patient_id")["decision_hour"]
    rows = observations[observations["variable"].isin(("antibiotics", "vasopressor"))]
    at = rows[(rows["time_hours"].to_numpy() == dh.reindex(rows["patient_id"]).to_numpy())
              & (rows["value"] > 0)]
    arm = pd.Series("none", index=dh.index, name="plan")
    arm[at.loc[at["variable"] == "antibiotics", "patient_id"].unique()] = "antibiotics_now"
    arm[at.loc[at["variable"] == "vasopressor", "patient_id"].unique()] = "vasopressor_6h"
    return arm


def effect_figures(observations: pd.DataFrame, patients: pd.DataFrame, truth: pd.DataFrame,
                   counterfactuals: pd.DataFrame) -> dict[str, PlanFigures]:
    """Per canonical plan: its true average effect on the risk of death (vs "none") and
    the naive difference in observed death rates between the arms."""
    arm = plan_arms(observations, truth)
    died = patients.set_index("patient_id")["died"].reindex(arm.index).to_numpy(np.float64)
    risk = counterfactuals.pivot(index="patient_id", columns="plan", values="true_risk")
    risk = risk.reindex(arm.index)
    base = died[(arm == "none").to_numpy()]
    out = {}
    for plan in PLANS:
        d = died[(arm == plan).to_numpy()]
        naive = half = float("nan")  # an arm too small to compare
        if len(d) > 1 and len(base) > 1:
            naive = float(d.mean() - base.mean())
            half = 1.96 * float(np.sqrt(d.var(ddof=1) / len(d) + base.var(ddof=1) / len(base)))
        out[plan] = PlanFigures(len(d) / len(arm), float((risk[plan] - risk["none"]).mean()),
                                naive, (naive - half, naive + half))
    return out


def effect_lines(observations: pd.DataFrame, patients: pd.DataFrame, truth: pd.DataFrame,
                 counterfactuals: pd.DataFrame) -> list[str]:
    """Treatment rates before the decision hour, and `effect_figures` per plan."""
    dh = truth.set_index("patient_id")["decision_hour"]
    rows = observations[observations["variable"].isin(INTERVENTIONS)
                        & (observations["value"] > 0)]
    before = rows[rows["time_hours"].to_numpy() < dh.reindex(rows["patient_id"]).to_numpy()]
    lines = ["treated before the decision hour (fraction of stays):"]
    for name in INTERVENTIONS:
        share = before.loc[before["variable"] == name, "patient_id"].nunique() / len(dh)
        lines.append(f"  {name:<18}{share:.3f}")
    lines.append("plan              share  true ATE  naive diff in death rate (95% CI)")
    for plan, f in effect_figures(observations, patients, truth, counterfactuals).items():
        lines.append(f"  {plan:<16}{f.share:.3f}" if plan == "none" else
                     f"  {plan:<16}{f.share:.3f}  {f.true_ate:+.4f}   {f.naive:+.4f} "
                     f"({f.naive_ci[0]:+.4f}, {f.naive_ci[1]:+.4f})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.synthesize",
                                 description="Generate a synthetic ICU cohort with ground truth.")
    ap.add_argument("--patients", type=int, required=True, help="number of stays")
    ap.add_argument("--seed", type=int, required=True, help="random seed (>= 0)")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--confounding", type=float, default=None, metavar="G",
                    help="treat the cohort by a clinician-like policy of confounding strength "
                         "G >= 0 (0 = randomised) and write counterfactuals.parquet")
    ap.add_argument("--no-summary", action="store_true",
                    help="skip the AUROC summary (it re-reads the cohort)")
    args = ap.parse_args(argv)
    try:
        t0 = time.perf_counter()
        paths = write_cohort(args.patients, args.seed, args.out, args.confounding)
        elapsed = time.perf_counter() - t0
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.patients} patients to {args.out} in {elapsed:.1f} s "
          f"({args.patients / elapsed:,.0f} patients/s)")
    if not args.no_summary:
        tables = {k: pd.read_parquet(p) for k, p in paths.items()}
        s = summarise(tables["observations"], tables["patients"], tables["truth"],
                      seed=args.seed)
        print("\n".join(s.lines()))
        if "counterfactuals" in tables:
            print("\n".join(effect_lines(tables["observations"], tables["patients"],
                                         tables["truth"], tables["counterfactuals"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
