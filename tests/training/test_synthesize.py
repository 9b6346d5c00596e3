import hashlib

import numpy as np
import pandas as pd
import pytest

from models.catalogue import CATALOGUE, CORE_MEASUREMENTS
from training import simulator as sim
from training.synthesize import main, summarise, write_cohort


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(600, 3, out)
    return out, {t: pd.read_parquet(out / f"{t}.parquet")
                 for t in ("observations", "patients", "truth")}


def test_tables_have_the_contracted_columns_and_types(cohort):
    _, t = cohort
    obs, pat, truth = t["observations"], t["patients"], t["truth"]
    assert list(obs.columns) == ["patient_id", "time_hours", "variable", "value"]
    assert list(pat.columns) == ["patient_id", "age", "sex", "weight", "height", "died",
                                 "los_days"]
    assert list(truth.columns) == ["patient_id", "true_risk", "onset_hour", "driven"]
    assert pd.api.types.is_string_dtype(obs["patient_id"])
    assert len(pat) == 600 and pat["patient_id"].is_unique
    assert set(pat["sex"]) == {"female", "male"}
    assert set(pat["died"]) <= {0, 1}
    assert (pat["los_days"] >= 2.0).all()  # the 48 h window is part of every stay
    assert set(truth["patient_id"]) == set(pat["patient_id"])


def test_observations_are_canonical_within_possible_range_and_window(cohort):
    _, t = cohort
    obs = t["observations"]
    assert set(obs["variable"]) == set(CORE_MEASUREMENTS)
    assert obs["time_hours"].between(0.0, 48.0).all()
    for var, values in obs.groupby("variable")["value"]:
        lo, hi = CATALOGUE[var].possible
        assert values.between(lo, hi).all(), var
    # Sorted by patient then time: a reader can rely on it.
    order = np.lexsort((obs["time_hours"].to_numpy(), obs["patient_id"].to_numpy()))
    assert (order == np.arange(len(obs))).all()


def test_sampling_is_irregular_with_vitals_every_1_to_4_hours_and_labs_6_to_24(cohort):
    _, t = cohort
    obs = t["observations"]

    def gaps(var):
        times = obs[obs["variable"] == var].groupby("patient_id")["time_hours"]
        return times.diff().dropna()

    hr = gaps("heart_rate")  # heart rate is measured at every vitals round
    assert hr.min() >= 0.99 and hr.max() <= 4.01 and hr.std() > 0.3
    cr = gaps("creatinine")  # gaps can span skipped draws; never closer than 6 h
    assert cr.min() >= 5.99


def test_some_stays_never_measure_some_variables(cohort):
    _, t = cohort
    per_var = t["observations"].groupby("variable")["patient_id"].nunique()
    assert per_var["lactate"] < 0.8 * 600
    assert per_var["heart_rate"] == 600


def test_truth_marks_onset_and_driven_variables(cohort):
    _, t = cohort
    truth = t["truth"]
    has_onset = truth["onset_hour"].notna()
    assert 0.15 < has_onset.mean() < 0.6
    assert (truth.loc[has_onset, "driven"] != "").all()
    assert (truth.loc[~has_onset, "driven"] == "").all()
    driven = set(",".join(truth.loc[has_onset, "driven"]).split(","))
    assert {"heart_rate", "resp_rate", "temperature", "sbp", "map", "spo2", "lactate", "wbc",
            "creatinine"} <= driven
    assert truth["true_risk"].between(0, 1).all()


def test_deterioration_moves_vitals_and_labs_gradually():
    rng = np.random.default_rng(0)
    n = 400
    params = sim.draw_params(rng, n)
    noise = sim.draw_noise(rng, n)
    traj = sim.simulate(params, noise, sim.Plan.none(n))
    d = traj.latent
    assert (d[~params.deteriorates] == 0).all()
    steps = np.diff(d, axis=1)
    # Trends, not jumps: no hour moves more than a small part of the visible range.
    assert steps.min() >= 0 and steps.max() <= 0.15 * sim.SATURATION
    # Septic deteriorators end with a faster heart and higher lactate than they started.
    septic = params.deteriorates & (params.phenotype == 0) & (d[:, -1] > 0.8)
    hr = traj.vital_values[:, :, [s.name for s in sim.VITALS].index("heart_rate")]
    first = np.array([row[~np.isnan(row)][0] for row in hr])
    last = np.array([row[~np.isnan(row)][-1] for row in hr])
    assert np.mean(last[septic] - first[septic]) > 10


def test_simulate_is_pure_and_reproduces_the_record_from_the_same_draws():
    rng = np.random.default_rng(1)
    params, noise = sim.draw_params(rng, 50), sim.draw_noise(rng, 50)
    a = sim.simulate(params, noise, sim.Plan.none(50))
    b = sim.simulate(params, noise, sim.Plan.none(50))
    np.testing.assert_array_equal(a.vital_values, b.vital_values)
    np.testing.assert_array_equal(a.lab_values, b.lab_values)
    np.testing.assert_array_equal(a.died, b.died)


def test_simulate_refuses_a_plan_of_the_wrong_shape():
    rng = np.random.default_rng(2)
    params, noise = sim.draw_params(rng, 5), sim.draw_noise(rng, 5)
    with pytest.raises(ValueError, match="shape"):
        sim.simulate(params, noise, sim.Plan.none(4))


# sha256 of write_cohort(300, 11) before interventions existed (commit df117d0): the
# untreated path must stay byte-identical. `true_risk` is unrounded float64 out of numpy's
# exp/log, whose last bit differs between CPUs (SIMD paths), so the truth table is compared
# by its content with the risk rounded to 1e-9; observations and patients carry the same
# draws and are compared byte for byte.
_BEFORE = {
    "observations": "c91bf88d56e90eb958782805e57777cd843aa97d75a4529ceb455aff1f7fef71",
    "patients": "b8d2ba6d9511a6edac2491e53aa355c93a9dbf7495cd699855ff47ab32796651",
}
_TRUTH_CONTENT = "10ef06ed3c8e9c140e4c3de6360e942e746a5fb9b4953a2190d58248307dd8e8"


def _truth_content_sha(path):
    truth = pd.read_parquet(path)
    truth["true_risk"] = truth["true_risk"].round(9)
    return hashlib.sha256(truth.to_csv(index=False).encode()).hexdigest()


def test_untreated_cohort_is_byte_identical_to_before_interventions(tmp_path):
    write_cohort(300, 11, tmp_path)
    for name, digest in _BEFORE.items():
        assert _sha(tmp_path / f"{name}.parquet") == digest, name
    assert _truth_content_sha(tmp_path / "truth.parquet") == _TRUTH_CONTENT
    assert not (tmp_path / "counterfactuals.parquet").exists()


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    write_cohort(300, 11, tmp_path / "a")
    write_cohort(300, 11, tmp_path / "b")
    write_cohort(300, 12, tmp_path / "c")
    for name in ("observations", "patients", "truth"):
        f = f"{name}.parquet"
        assert _sha(tmp_path / "a" / f) == _sha(tmp_path / "b" / f)
        assert _sha(tmp_path / "a" / f) != _sha(tmp_path / "c" / f)


def test_cli_writes_files(tmp_path, capsys):
    assert main(["--patients", "40", "--seed", "5", "--out", str(tmp_path), "--no-summary"]) == 0
    assert "patients/s" in capsys.readouterr().out
    for name in ("observations", "patients", "truth"):
        assert (tmp_path / f"{name}.parquet").is_file()
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["--patients", "0", "--seed", "5", "--out", str(tmp_path)]) == 2
    assert "--patients" in capsys.readouterr().err


@pytest.mark.slow
def test_calibration_targets_hold_and_the_cli_prints_them(tmp_path, capsys):
    # The figures are measured on 10,000 patients (seed 7); 3,000 keeps this < 20 s
    # with slightly wider bounds for sampling noise.
    assert main(["--patients", "3000", "--seed", "7", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    figures = {}
    for line in printed.splitlines():
        for key in ("prevalence", "oracle AUROC", "NEWS2 AUROC", "last-value LR AUROC"):
            if line.startswith(key):
                figures[key] = float(line[len(key):].split()[0])
    assert len(figures) == 4, printed
    assert 0.10 <= figures["prevalence"] <= 0.20
    assert 0.84 <= figures["oracle AUROC"] <= 0.95
    assert 0.63 <= figures["NEWS2 AUROC"] <= 0.85
    assert figures["last-value LR AUROC"] < figures["oracle AUROC"] - 0.03


def test_summarise_figures_on_a_small_cohort(cohort):
    _, t = cohort
    s = summarise(t["observations"], t["patients"], t["truth"], seed=0)
    assert s.n_patients == 600
    assert 0.0 < s.prevalence < 0.4
    assert 0.5 < s.news2_auroc < s.oracle_auroc
