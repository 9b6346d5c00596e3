import numpy as np
import pytest

from models.catalogue import CATALOGUE, INTERVENTIONS
from training import interventions as iv
from training import simulator as sim
from training.synthesize import effect_figures, plan_arms, write_cohort


def _cohort(seed, n):
    rng = np.random.default_rng(seed)
    return sim.draw_params(rng, n), sim.draw_noise(rng, n), iv.draw_policy_noise(rng, n)


def _starts(plan, dh):
    """(antibiotic starts, eligible patient-hours) before the decision hours."""
    first = np.where(plan.antibiotics.any(axis=1), plan.antibiotics.argmax(axis=1), 10**6)
    eligible = np.minimum(first + 1, dh).sum()
    return int((first < dh).sum()), int(eligible)


def test_plan_arrays_follow_the_catalogue_order_and_modes():
    assert INTERVENTIONS[:4] == ("antibiotics", "vasopressor", "fluid_bolus", "mech_vent")
    assert [CATALOGUE[n].mode for n in INTERVENTIONS[:4]] == ["event", "rate", "event", "state"]


def test_at_g0_assignment_ignores_the_patient():
    params, noise, pn = _cohort(0, 1500)
    run = iv.run_policy(params, noise, pn, 0.0)
    np.testing.assert_allclose(run.propensity, 1.0 / 3.0)
    # Who gets antibiotics before the decision hour does not depend on deterioration.
    sick = params.deteriorates & (params.onset < pn.decision_hour - 6)
    treated = (run.history.antibiotics.sum(axis=1) > 0)
    assert abs(treated[sick].mean() - treated[~sick].mean()) < 0.06


def test_confounding_treats_sicker_looking_patients_at_the_same_overall_rate():
    params, noise, pn = _cohort(1, 1500)
    runs = {g: iv.run_policy(params, noise, pn, g) for g in (0.0, 5.0)}
    rates = {}
    for g, run in runs.items():
        starts, hours = _starts(run.history, run.decision_hour)
        rates[g] = starts / hours
    # The marginal start rate stays near its target whatever G.
    assert rates[0.0] == pytest.approx(iv.P_ABX, rel=0.25)
    assert rates[5.0] == pytest.approx(iv.P_ABX, rel=0.25)
    sick = params.deteriorates & (params.onset < pn.decision_hour - 6)
    share = {g: (r.history.antibiotics.sum(axis=1) > 0)[sick].mean() for g, r in runs.items()}
    assert share[5.0] > share[0.0] + 0.2
    # At the decision hour, sicker-looking deteriorating patients are more often treated.
    p = runs[5.0].propensity
    assert p[sick, 1].mean() > p[~sick, 1].mean() + 0.1
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_confounding_must_be_finite_and_non_negative():
    params, noise, pn = _cohort(2, 5)
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="--confounding"):
            iv.run_policy(params, noise, pn, bad)


def test_the_policy_reads_exactly_what_the_record_shows():
    params, noise, pn = _cohort(3, 300)
    run = iv.run_policy(params, noise, pn, 3.0)
    traj = sim.simulate(params, noise, run.factual)
    seen = iv._Observer(params, noise)
    state = sim.LatentState.start(300)
    names = [s.name for s in sim.VITALS]
    for h in range(iv.DECISION_HOURS[1] + 1):
        seen.advance(state, run.factual, h)
        if h in (5, 17, 30):
            for var in ("map", "heart_rate", "spo2"):
                vals = traj.vital_values[:, :, names.index(var)]
                ok = ~np.isnan(vals) & (traj.vital_times < h)
                idx = np.where(ok.any(axis=1), ok.shape[1] - 1 - ok[:, ::-1].argmax(axis=1), 0)
                want = np.where(ok.any(axis=1), vals[np.arange(300), idx], np.nan)
                np.testing.assert_array_equal(seen.latest[var], want)
        state.step(params, noise, run.factual, h)


def test_canonical_plans_keep_the_history_and_add_only_their_own_rows():
    params, noise, pn = _cohort(4, 200)
    run = iv.run_policy(params, noise, pn, 1.0)
    dh = run.decision_hour
    hours = np.arange(sim.HOURS + 1)[None, :]
    before = hours < dh[:, None]
    for name in iv.PLANS:
        plan = iv.canonical_plan(run.history, dh, name)
        for a, b in zip(plan.arrays(), run.history.arrays(), strict=True):
            np.testing.assert_array_equal(a[before], b[before])
        assert not plan.fluid_bolus[~before].any() and not plan.mech_vent[~before].any()
    abx = iv.canonical_plan(run.history, dh, "antibiotics_now").antibiotics
    assert (abx[np.arange(200), dh] == 1).all()
    assert (abx[~before].sum() == sum(len(range(d, sim.HOURS, 8)) for d in dh))
    vaso = iv.canonical_plan(run.history, dh, "vasopressor_6h").vasopressor
    assert ((vaso[~before] == 0.1).sum(axis=None) == 6 * 200)
    with pytest.raises(ValueError, match="unknown plan"):
        iv.canonical_plan(run.history, dh, "surgery")


def test_plan_rows_are_valid_catalogue_rows_with_stop_rows():
    plan = sim.Plan.none(2)
    plan.vasopressor[0, 3:7] = 0.2
    plan.mech_vent[1, 10:] = 1.0
    plan.antibiotics[1, [4, 12]] = 1.0
    plan.fluid_bolus[0, 5] = 500.0
    rows = iv.plan_rows(plan, np.array(["a", "b"]))
    got = list(rows.itertuples(index=False, name=None))
    assert got == [("a", 3.0, "vasopressor", 0.2), ("a", 5.0, "fluid_bolus", 500.0),
                   ("a", 7.0, "vasopressor", 0.0), ("b", 4.0, "antibiotics", 1.0),
                   ("b", 10.0, "mech_vent", 1.0), ("b", 12.0, "antibiotics", 1.0)]
    for var, value in zip(rows["variable"], rows["value"], strict=True):
        lo, hi = CATALOGUE[var].possible
        assert lo <= value <= hi


def test_antibiotics_help_only_after_onset_and_more_when_early():
    params, noise, _ = _cohort(5, 600)
    septic = params.deteriorates & (params.phenotype == 0) & (params.onset > 4) \
        & (params.onset < 20)
    stable = ~params.deteriorates
    none = sim.simulate(params, noise, sim.Plan.none(600))

    def given_from(hours):
        plan = sim.Plan.none(600)
        for i, h0 in enumerate(hours.astype(int)):
            plan.antibiotics[i, h0:sim.HOURS:8] = 1.0
        return sim.simulate(params, noise, plan)

    onset = np.nan_to_num(params.onset, nan=0.0)
    early = given_from(np.ceil(onset) + 1)
    late = given_from(np.ceil(onset) + 14)
    # No deterioration, nothing to treat: the course is exactly the untreated one.
    np.testing.assert_array_equal(early.latent[stable], none.latent[stable])
    gain_early = (none.true_risk - early.true_risk)[septic]
    gain_late = (none.true_risk - late.true_risk)[septic]
    assert (gain_early >= -1e-12).all() and gain_early.mean() > 0.05
    assert gain_early.mean() > 1.5 * gain_late.mean()
    # Treated patients still look the same before the first dose.
    i = np.flatnonzero(septic)[0]
    h0 = int(np.ceil(onset[i])) + 1
    np.testing.assert_array_equal(early.latent[i, : h0 + 1], none.latent[i, : h0 + 1])


def test_vasopressor_raises_blood_pressure_only_while_running():
    params, noise, _ = _cohort(6, 300)
    plan = sim.Plan.none(300)
    plan.vasopressor[:, 10:16] = 0.2
    on = sim.simulate(params, noise, plan)
    off = sim.simulate(params, noise, sim.Plan.none(300))
    np.testing.assert_array_equal(on.latent, off.latent)
    times = np.tile(np.array([9.5, 11.0, 13.0, 15.5, 22.0]), (300, 1))
    lift = (sim.true_vitals(params, on.state, plan, times)
            - sim.true_vitals(params, off.state, sim.Plan.none(300), times))
    names = [s.name for s in sim.VITALS]
    m = lift[:, :, names.index("map")].mean(axis=0)
    assert m[0] == 0.0 and 10.0 < m[1] < m[2] < m[3] and m[4] < 0.1
    assert (lift[:, :, names.index("heart_rate")] == 0).all()


@pytest.mark.slow
def test_g0_truth_agrees_with_a_trial_run_inside_the_simulator(tmp_path):
    # Issue 11's acceptance: at G = 0 the decision-hour plan is a coin flip, so the
    # difference in observed death rates between the arms estimates the true ATE.
    import pandas as pd

    write_cohort(20_000, 2026, tmp_path, confounding=0.0)
    t = {k: pd.read_parquet(tmp_path / f"{k}.parquet")
         for k in ("observations", "patients", "truth", "counterfactuals")}
    figures = effect_figures(t["observations"], t["patients"], t["truth"],
                             t["counterfactuals"])
    abx = figures["antibiotics_now"]
    assert -0.10 <= abx.true_ate <= -0.03  # a sizeable effect, not a rounding error
    assert abx.naive_ci[0] <= abx.true_ate <= abx.naive_ci[1], abx
    assert 0.3 < abx.share < 0.37  # a third of stays per arm
    arms = plan_arms(t["observations"], t["truth"]).value_counts()
    assert set(arms.index) == set(iv.PLANS)
