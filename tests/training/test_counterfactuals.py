import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from training import interventions as iv
from training import simulator as sim
from training.data import load_dataset
from training.synthesize import _chunk, _ids, _observation_table, main, write_cohort

N = 400


@pytest.fixture(scope="module")
def treated(tmp_path_factory):
    out = tmp_path_factory.mktemp("treated")
    write_cohort(N, 4, out, confounding=3.0)
    return out, {t: pd.read_parquet(out / f"{t}.parquet")
                 for t in ("observations", "patients", "truth", "counterfactuals")}


def _redraw(seed, n, confounding):
    """The draws `_chunk` makes for chunk 0, in the same order."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    params, noise = sim.draw_params(rng, n), sim.draw_noise(rng, n)
    run = iv.run_policy(params, noise, iv.draw_policy_noise(rng, n), confounding)
    return params, noise, run


def test_counterfactuals_have_the_contracted_columns(treated):
    _, t = treated
    cf = t["counterfactuals"]
    assert list(cf.columns) == ["patient_id", "decision_hour", "plan", "true_risk",
                                "map_1", "map_2", "map_3", "map_4", "map_5", "map_6"]
    assert pd.api.types.is_string_dtype(cf["patient_id"])
    assert pd.api.types.is_string_dtype(cf["plan"])
    assert len(cf) == N * len(iv.PLANS)
    assert not cf.duplicated(["patient_id", "plan"]).any()
    assert set(cf["plan"]) == set(iv.PLANS)
    assert cf["true_risk"].between(0, 1).all()
    assert cf["decision_hour"].between(12, 36).all()
    assert (cf["decision_hour"] == cf["decision_hour"].round()).all()
    assert cf.filter(like="map_").notna().all().all()
    truth = t["truth"].set_index("patient_id")
    assert list(t["truth"].columns)[-1] == "decision_hour"
    per_patient = cf.groupby("patient_id")["decision_hour"].first()
    np.testing.assert_array_equal(per_patient.reindex(truth.index), truth["decision_hour"])


def test_factual_true_risk_is_the_chosen_plans_true_risk(treated):
    _, t = treated
    cf = t["counterfactuals"].pivot(index="patient_id", columns="plan", values="true_risk")
    truth = t["truth"].set_index("patient_id")["true_risk"]
    params, noise, run = _redraw(4, N, 3.0)
    chosen = np.array(iv.PLANS)[run.plan]
    factual = cf.to_numpy()[np.arange(N), [list(cf.columns).index(c) for c in chosen]]
    np.testing.assert_array_equal(factual, truth.reindex(cf.index).to_numpy())


def test_resimulating_the_factual_plan_reproduces_the_record_exactly(treated):
    out, t = treated
    params, noise, run = _redraw(4, N, 3.0)
    plan = iv.canonical_plan(run.history, run.decision_hour, iv.PLANS[0])
    for i, name in enumerate(iv.PLANS):  # rebuild the factual plan from the chosen names
        alt = iv.canonical_plan(run.history, run.decision_hour, name)
        for a, b in zip(plan.arrays(), alt.arrays(), strict=True):
            a[run.plan == i] = b[run.plan == i]
    again = sim.simulate(params, noise, plan)
    table = _observation_table(_ids(0, N, 6), again, plan).to_pandas()
    pd.testing.assert_frame_equal(table, t["observations"])
    pat = t["patients"]
    np.testing.assert_array_equal(again.died.astype(np.int64), pat["died"].to_numpy())
    np.testing.assert_array_equal(again.los_days, pat["los_days"].to_numpy())
    np.testing.assert_array_equal(again.true_risk, t["truth"]["true_risk"].to_numpy())


def test_the_record_follows_the_plan_after_the_decision_hour(treated):
    _, t = treated
    obs, truth = t["observations"], t["truth"].set_index("patient_id")
    rows = obs[obs["variable"].isin(["antibiotics", "vasopressor", "fluid_bolus", "mech_vent"])]
    rows = rows.assign(dh=truth["decision_hour"].reindex(rows["patient_id"]).to_numpy())
    after = rows[rows["time_hours"] >= rows["dh"]]
    # Nothing but the plan's own rows (and value-0 rows switching off what ran before).
    assert (after.loc[after["variable"].isin(["fluid_bolus"]), "value"] == 0).all()
    assert (after.loc[after["variable"] == "mech_vent", "value"] == 0).all()
    vaso_on = after[(after["variable"] == "vasopressor") & (after["value"] > 0)]
    assert (vaso_on["value"] == iv.VASO_PLAN_RATE).all()
    assert (vaso_on["time_hours"] == vaso_on["dh"]).all()
    abx = after[after["variable"] == "antibiotics"]
    assert (((abx["time_hours"] - abx["dh"]) % iv.ABX_INTERVAL_HOURS) == 0).all()
    both = set(abx["patient_id"]) & set(vaso_on["patient_id"])
    assert not both  # one plan per patient


def test_plans_differ_only_in_what_they_act_on():
    params, noise, run = _redraw(9, 300, 1.0)
    dh = run.decision_hour
    out = {name: sim.simulate(params, noise, iv.canonical_plan(run.history, dh, name))
           for name in iv.PLANS}
    # A vasopressor does not touch the latent course, so neither risk nor outcome moves.
    np.testing.assert_array_equal(out["vasopressor_6h"].latent, out["none"].latent)
    np.testing.assert_array_equal(out["vasopressor_6h"].true_risk, out["none"].true_risk)
    # Every plan shares the course up to the decision hour.
    for name in iv.PLANS:
        for i in range(0, 300, 37):
            np.testing.assert_array_equal(out[name].latent[i, : dh[i] + 1],
                                          out["none"].latent[i, : dh[i] + 1])
    # Antibiotics never make the course worse, and help some deteriorating patients.
    assert (out["antibiotics_now"].latent <= out["none"].latent + 1e-12).all()
    assert (out["antibiotics_now"].true_risk <= out["none"].true_risk + 1e-12).all()
    assert (out["antibiotics_now"].true_risk < out["none"].true_risk - 0.01).sum() > 10


def test_vasopressor_plan_raises_the_noise_free_map_and_others_do_not(treated):
    _, t = treated
    cf = t["counterfactuals"].set_index(["patient_id", "plan"])
    maps = [f"map_{k}" for k in range(1, 7)]
    none = cf.xs("none", level="plan")[maps]
    vaso = cf.xs("vasopressor_6h", level="plan")[maps]
    lift = (vaso - none).mean()
    assert 5.0 < lift["map_3"] < 15.0  # 0.1 ug/kg/min, about +10 mmHg at steady state
    assert (lift.diff().dropna().iloc[:2] > 0).all()  # rises within the first hours
    assert (vaso.to_numpy() >= none.to_numpy() - 1e-9).all()


def test_load_dataset_reads_the_counterfactuals(treated):
    out, _ = treated
    ds = load_dataset(out)
    assert ds.counterfactuals is not None
    assert len(ds.counterfactuals) == N * len(iv.PLANS)
    assert ds.truth is not None and "decision_hour" in ds.truth.columns


def test_same_seed_and_confounding_give_identical_files(tmp_path):
    write_cohort(120, 2, tmp_path / "a", confounding=1.0)
    write_cohort(120, 2, tmp_path / "b", confounding=1.0)
    for name in ("observations", "patients", "truth", "counterfactuals"):
        f = f"{name}.parquet"
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_cli_refuses_negative_confounding(tmp_path, capsys):
    assert main(["--patients", "10", "--seed", "1", "--out", str(tmp_path),
                 "--confounding", "-1"]) == 2
    assert "--confounding" in capsys.readouterr().err


def test_chunk_tables_are_arrow(tmp_path):
    chunk = _chunk(1, 0, 0, 30, 6, 0.0)[0]
    assert isinstance(chunk.counterfactuals, pa.Table)
    assert chunk.truth.column_names[-1] == "decision_hour"
