"""Who gets treated, and when: the clinician-like policy of the synthetic cohort, the
canonical plans its counterfactuals compare, and plans as observation rows (issue 11).

The policy sees only what a clinician would have seen: at each hour h, the latest noisy
measurements taken before h (MAP, heart rate, respiration, SpO2, temperature, lactate,
WBC). From them it forms standardised sickness scores z and treats with probability

    p = sigmoid(b_h + G z)

G is the confounding strength (`--confounding`): G = 0 is a randomised trial with
b_h = logit(target rate). For G > 0, b_h is solved each hour so that the mean of p over
the patients it applies to equals the target rate: the unit treats as many patients at
any G, and G decides *which* (the scores are skewed, so no closed form keeps the rate).
Every treatment changes the course that the next decision reads, so the confounding is
time-varying.

Before its decision hour (one per patient, uniform over 12..36) the policy acts freely.
At the decision hour it picks one of the canonical `PLANS` (probabilities a softmax of
G times the scores; uniform at G = 0), and from then on the record follows that plan
exactly. So the factual outcome is always the outcome of one plan, and at G = 0 the
choice is a randomised trial between plans.

`run_policy` steps the simulator's own `LatentState` hour by hour and observes each
vitals round and blood draw as it happens, with the simulator's noise: the policy reads
the very values `simulate` then writes into the record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.catalogue import CATALOGUE, INTERVENTIONS
from training.simulator import (
    HOURS,
    LAB_ROUNDS,
    LABS,
    SICK_SAMPLING,
    VITAL_ROUNDS,
    VITALS,
    LatentState,
    Noise,
    Params,
    Plan,
    _at,
    _observe,
    true_labs,
    true_vitals,
)

__all__ = [
    "ABX_INTERVAL_HOURS",
    "DECISION_HOURS",
    "PLANS",
    "VASO_PLAN_HOURS",
    "VASO_PLAN_RATE",
    "PolicyNoise",
    "PolicyRun",
    "canonical_plan",
    "draw_policy_noise",
    "plan_events",
    "plan_rows",
    "run_policy",
]

PLANS = ("none", "antibiotics_now", "vasopressor_6h")  # canonical plans, in table order
DECISION_HOURS = (12, 36)  # the decision hour is a uniform integer in this closed range
ABX_INTERVAL_HOURS = 8  # the standard antibiotic schedule: a dose every 8 h once started
VASO_PLAN_RATE = 0.1  # ug/kg/min, the "vasopressor_6h" plan's rate
VASO_PLAN_HOURS = 6  # hours the "vasopressor_6h" plan runs
FLUID_VOLUMES = (250.0, 500.0, 1000.0)  # mL, the bolus sizes the policy gives

# Target rates per hour before the decision hour (the marginal rate at any G).
P_ABX = 0.012  # start antibiotics (about a quarter of stays by hour 24)
P_VASO = 0.008  # start a vasopressor
P_VASO_STOP = 0.2  # stop a running vasopressor (about 5 h on average)
P_FLUID = 0.02  # give a bolus
P_VENT = 0.004  # intubate
P_VENT_STOP = 0.05  # extubate (about 20 h on average)

# What the policy reads, and the value it assumes before a first reading.
_READ = {"map": 85.0, "heart_rate": 85.0, "resp_rate": 17.0, "spo2": 97.0,
         "temperature": 37.0, "lactate": 1.2, "wbc": 9.0}
# Standardisation of the raw scores (their mean and SD over patient-hours at G = 0,
# measured on 5,000 patients, hours 0..36).
SICK_MEAN, SICK_SD = 1.03, 4.25
SHOCK_MEAN, SHOCK_SD = 0.60, 1.56
RESP_MEAN, RESP_SD = 0.05, 1.59


@dataclass(frozen=True)
class PolicyNoise:
    """The policy's own random draws, apart from the simulator's `Noise`."""

    decision_hour: np.ndarray  # (N,) int, hour at which the canonical plans start
    u: np.ndarray  # (N, HOURS, 7) uniform: one column per decision kind (see run_policy)
    plan_u: np.ndarray  # (N,) uniform: which plan at the decision hour


@dataclass(frozen=True)
class PolicyRun:
    """What the policy did: the treatment history, the plan it chose and why."""

    history: Plan  # interventions before each patient's decision hour (zero from it on)
    decision_hour: np.ndarray  # (N,) int
    plan: np.ndarray  # (N,) int index into PLANS: the factual continuation
    propensity: np.ndarray  # (N, len(PLANS)) the policy's probabilities at the decision hour
    factual: Plan  # history + the chosen plan: what the record follows


def draw_policy_noise(rng: np.random.Generator, n: int) -> PolicyNoise:
    lo, hi = DECISION_HOURS
    return PolicyNoise(decision_hour=rng.integers(lo, hi + 1, n),
                       u=rng.random((n, HOURS, 7)), plan_u=rng.random(n))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _probability(target: float, g: float, z: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """sigmoid(b + g z) with b such that its mean over `eligible` is `target`, (N,)."""
    logit = float(np.log(target / (1.0 - target)))
    if g == 0.0 or not eligible.any():
        return np.full(z.shape, target)
    gz = g * z[eligible]
    lo, hi = logit - float(gz.max()) - 10.0, logit - float(gz.min()) + 10.0
    for _ in range(40):  # bisection: the mean is increasing in b
        mid = 0.5 * (lo + hi)
        if _sigmoid(mid + gz).mean() < target:
            lo = mid
        else:
            hi = mid
    return _sigmoid(0.5 * (lo + hi) + g * z)


def scores(latest: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardised (sickness, shock, respiratory failure) scores, each (N,), from the
    latest readings (NaN = not measured yet)."""
    v = {k: np.where(np.isnan(a), _READ[k], a) for k, a in latest.items()}
    c_map = (80.0 - v["map"]) / 10.0
    c_hr = (v["heart_rate"] - 90.0) / 15.0
    c_rr = (v["resp_rate"] - 20.0) / 5.0
    c_spo2 = (95.0 - v["spo2"]) / 3.0
    c_temp = (v["temperature"] - 37.3) / 0.7
    c_lac = (v["lactate"] - 1.5) / 1.0
    c_wbc = (v["wbc"] - 11.0) / 4.0
    sick = c_map + c_hr + c_rr + c_spo2 + c_temp + c_lac + c_wbc
    shock = c_map + 0.5 * c_lac + 0.5 * c_hr
    resp = c_spo2 + c_rr
    return ((sick - SICK_MEAN) / SICK_SD, (shock - SHOCK_MEAN) / SHOCK_SD,
            (resp - RESP_MEAN) / RESP_SD)


class _Observer:
    """Takes the vitals rounds and blood draws as their times pass, with exactly the
    schedule recursion and measurement noise of `simulate`, and keeps the latest value
    of each variable the policy reads."""

    def __init__(self, params: Params, noise: Noise) -> None:
        self.params, self.noise = params, noise
        n = params.age.shape[0]
        self.t = {"v": 0.5 * noise.vital_gap[:, 0], "l": 3.0 * noise.lab_gap[:, 0]}
        self.k = {"v": np.zeros(n, np.int64), "l": np.zeros(n, np.int64)}
        self.latest = {name: np.full(n, np.nan) for name in _READ}
        self.sick0 = np.maximum(0.5 * params.frailty, 0.0)

    def advance(self, state: LatentState, plan: Plan, h: int) -> None:
        """Take every round and draw that happened before hour h."""
        for kind in ("v", "l"):
            rounds = VITAL_ROUNDS if kind == "v" else LAB_ROUNDS
            while True:
                t, k = self.t[kind], self.k[kind]
                due = (np.round(t, 2) < h) & (k < rounds) & (t < HOURS)
                if not due.any():
                    break
                self._take(kind, state, plan, due, np.round(t, 2), np.minimum(k, rounds - 1))
                # The next round, as `simulator._schedule` spaces them.
                lo, hi, gaps = ((1.0, 4.0, self.noise.vital_gap) if kind == "v"
                                else (6.0, 24.0, self.noise.lab_gap))
                kk = np.minimum(k, rounds - 1)
                gap = np.take_along_axis(gaps, kk[:, None], axis=1)[:, 0]
                now = _at(state.latent, t[:, None])[:, 0]
                sickness = np.maximum(0.5 * self.params.frailty + now, 0.0)
                nxt = t + lo + (hi - lo) * gap * np.exp(-SICK_SAMPLING * sickness)
                self.t[kind] = np.where(due, nxt, t)
                self.k[kind] = np.where(due, k + 1, k)

    def _take(self, kind: str, state: LatentState, plan: Plan, due: np.ndarray,
              times: np.ndarray, k: np.ndarray) -> None:
        nz, p = self.noise, self.params
        tt = np.where(due, times, np.nan)[:, None]  # (N, 1); NaN = no round now
        idx = k[:, None, None]
        if kind == "v":
            specs, true = VITALS, true_vitals(p, state, plan, tt)
            eps, drop, never = nz.vital_eps, nz.vital_drop, nz.vital_never
        else:
            specs, true = LABS, true_labs(p, state, tt)
            eps, drop, never = nz.lab_eps, nz.lab_drop, nz.lab_never
        values = _observe(specs, true, np.take_along_axis(eps, idx, axis=1),
                          np.take_along_axis(drop, idx, axis=1), never, tt, self.sick0)[:, 0]
        for j, s in enumerate(specs):
            if s.name in self.latest:
                v = values[:, j]
                self.latest[s.name] = np.where(np.isnan(v), self.latest[s.name], v)


def canonical_plan(history: Plan, decision_hour: np.ndarray, name: str) -> Plan:
    """`history` up to each decision hour, then exactly the plan `name`: nothing else new
    (running rates and states are switched off at the decision hour)."""
    if name not in PLANS:
        raise ValueError(f"unknown plan {name!r}; known: {', '.join(PLANS)}")
    hours = np.arange(HOURS + 1)[None, :]
    dh = np.asarray(decision_hour)[:, None]
    after = hours >= dh
    plan = Plan(*(np.where(after, 0.0, a) for a in history.arrays()))
    if name == "antibiotics_now":
        dose = after & ((hours - dh) % ABX_INTERVAL_HOURS == 0) & (hours < HOURS)
        plan.antibiotics[dose] = 1.0
    elif name == "vasopressor_6h":
        plan.vasopressor[after & (hours < dh + VASO_PLAN_HOURS)] = VASO_PLAN_RATE
    return plan


def run_policy(params: Params, noise: Noise, pnoise: PolicyNoise, confounding: float) -> PolicyRun:
    """Treat the cohort hour by hour from what is observed, up to each decision hour, then
    choose a canonical plan (module docstring)."""
    if not (np.isfinite(confounding) and confounding >= 0.0):
        raise ValueError(f"--confounding must be a finite number >= 0, got {confounding}")
    g = float(confounding)
    n = params.age.shape[0]
    dh = pnoise.decision_hour
    plan = Plan.none(n)
    state = LatentState.start(n)
    seen = _Observer(params, noise)
    started = np.full(n, -1, np.int64)  # hour of the first antibiotic dose, -1 = none
    propensity = np.zeros((n, len(PLANS)))
    for h in range(int(dh.max()) + 1):
        seen.advance(state, plan, h)
        sick, shock, resp = scores(seen.latest)
        u = pnoise.u[:, h, :]
        free = h < dh
        # Antibiotics: start on suspicion of infection, then the standard schedule.
        can = free & (started < 0)
        start = can & (u[:, 0] < _probability(P_ABX, g, sick, can))
        started = np.where(start, h, started)
        dose = free & (started >= 0) & ((h - started) % ABX_INTERVAL_HOURS == 0)
        plan.antibiotics[:, h] = dose
        # Vasopressor: started on low pressure at a rate drawn from 0.05-0.30, held, stopped.
        prev = plan.vasopressor[:, h - 1] if h else np.zeros(n)
        keep = (prev > 0) & (u[:, 2] >= P_VASO_STOP)
        new = (prev == 0) & (u[:, 1] < _probability(P_VASO, g, shock, free & (prev == 0)))
        rate = np.round(0.05 + 0.25 * u[:, 3], 2)
        plan.vasopressor[:, h] = np.where(free, np.where(keep, prev, np.where(new, rate, 0.0)),
                                          0.0)
        # Fluids: a bolus on low pressure or a fast heart.
        bolus = free & (u[:, 4] < _probability(P_FLUID, g, shock, free))
        size = np.asarray(FLUID_VOLUMES)[np.minimum((u[:, 3] * 3).astype(np.int64), 2)]
        plan.fluid_bolus[:, h] = np.where(bolus, size, 0.0)
        # Ventilation: intubated on failing oxygenation, extubated at random.
        on = plan.mech_vent[:, h - 1] if h else np.zeros(n)
        p_vent = _probability(P_VENT, g, resp, free & (on == 0))
        vent = np.where(on > 0, u[:, 6] >= P_VENT_STOP, u[:, 5] < p_vent)
        plan.mech_vent[:, h] = (free & vent).astype(np.float64)
        # The decision hour: one canonical plan (logits 0, G z_sick, G z_shock).
        at = h == dh
        logits = np.stack([np.zeros(n), g * sick, g * shock], axis=1)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        propensity[at] = probs[at]
        state.step(params, noise, plan, h)
    chosen = (pnoise.plan_u[:, None] > np.cumsum(propensity, axis=1)).sum(axis=1)
    chosen = np.minimum(chosen, len(PLANS) - 1)
    history = canonical_plan(plan, dh, "none")
    factual = Plan.none(n)
    for i, name in enumerate(PLANS):
        cand = canonical_plan(history, dh, name)
        for a, b in zip(factual.arrays(), cand.arrays(), strict=True):
            a[chosen == i] = b[chosen == i]
    return PolicyRun(history, dh, chosen, propensity, factual)


def plan_events(plan: Plan) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A plan's observation rows as arrays (patient index, hour, index into
    `models.catalogue.INTERVENTIONS`, value): one row per antibiotic dose and fluid bolus,
    one per change of the vasopressor rate or the ventilation state (a 0 row when it
    stops). Hours past the window are left out."""
    parts = []
    for j, (name, a) in enumerate(zip(INTERVENTIONS, plan.arrays(), strict=True)):
        a = a[:, :HOURS]
        if CATALOGUE[name].mode == "event":
            i, h = np.nonzero(a > 0)
        else:
            i, h = np.nonzero(np.diff(a, axis=1, prepend=0.0) != 0)
        parts.append((i, h.astype(np.float64), np.full(len(i), j), a[i, h]))
    i, h, j, v = (np.concatenate(col) for col in zip(*parts, strict=True))
    return i, h, j, v


def plan_rows(plan: Plan, patient_ids: np.ndarray) -> pd.DataFrame:
    """A plan as long-format rows (patient_id, time_hours, variable, value), sorted by
    patient and time (see `plan_events`)."""
    i, h, j, v = plan_events(plan)
    out = pd.DataFrame({"patient_id": np.asarray(patient_ids)[i], "time_hours": h,
                        "variable": np.asarray(INTERVENTIONS)[j], "value": v})
    return out.sort_values(["patient_id", "time_hours", "variable"], kind="stable",
                           ignore_index=True)
