"""The synthetic ICU physiology: a latent deterioration process seen through noisy,
irregular vital signs and labs. `docs/synthetic.md` explains every parameter.

The simulation is split in three so that a patient can be re-simulated under another
treatment plan with exactly the same random draws (shared-noise counterfactuals, issue 11):

    params = draw_params(rng, n)          # who the patients are (baselines, onset, rate)
    noise  = draw_noise(rng, n)           # every random number the course will ever use
    traj   = simulate(params, noise, plan)   # pure, deterministic: no RNG inside

`simulate` never draws: sampling times, measurement noise, dropout, the death draw and
the length-of-stay draw all come from `noise`, so changing the plan changes only what
the plan acts on. Everything is vectorised over patients; the only Python loops run over
the 48 hourly steps and the sampling rounds, never over patients or measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.catalogue import CATALOGUE

__all__ = [
    "HOURS",
    "LAB_ROUNDS",
    "LABS",
    "PHENOTYPES",
    "VITAL_ROUNDS",
    "VITALS",
    "LatentState",
    "Noise",
    "Params",
    "Plan",
    "Spec",
    "Trajectories",
    "draw_noise",
    "draw_params",
    "simulate",
    "true_labs",
    "true_vitals",
]

HOURS = 48  # observed window: hours [0, 48), i.e. 48 hourly bins (the latent lives on 49 knots)
VITAL_ROUNDS = HOURS + 1  # at most one vitals round per hour
LAB_ROUNDS = HOURS // 6 + 1  # at most one blood draw per 6 h
PHENOTYPES = ("sepsis", "respiratory", "renal_haemodynamic")
PHENOTYPE_P = (0.5, 0.25, 0.25)  # how deteriorations split between phenotypes


@dataclass(frozen=True)
class Spec:
    """How one variable is generated. Log-scale variables are generated as log(value)."""

    name: str  # catalogue name
    mean: float  # population mean at age 65, frailty 0 (log units when log_scale)
    sd: float  # between-patient SD of the baseline (same units as mean)
    age: float  # baseline shift per decade of age above 65
    frailty: float  # baseline shift per SD of latent frailty
    circadian: float  # amplitude of the 24 h rhythm (peak late afternoon)
    noise: float  # measurement noise SD
    loads: tuple[float, float, float]  # shift per unit of deterioration, per phenotype
    decimals: int  # recorded resolution
    p_never: float  # probability the stay never has this variable
    p_drop: float  # probability a round/draw skips this variable
    log_scale: bool = False


# fmt: off
VITALS: tuple[Spec, ...] = (
    # name, mean, sd, age, frailty, circadian, noise, loads (sepsis, resp, renal), dec, never, drop
    # (map, gcs and fio2 are derived in `simulate`; only their noise, loads and sampling count)
    Spec("heart_rate",   84.0, 11.0, -1.0,  3.0, 4.0,  4.0, (20.0, 12.0, 10.0),  0, 0.00, 0.00),
    Spec("resp_rate",    17.0,  2.5,  0.3,  0.8, 1.0,  1.5, (5.0, 7.0, 3.0),     0, 0.02, 0.10),
    Spec("spo2",         97.0,  1.2, -0.3, -0.5, 0.0,  0.8, (-2.0, -5.0, 0.0),   0, 0.02, 0.05),
    Spec("temperature",  36.9,  0.25, -0.05, 0.0, 0.3, 0.15, (1.0, 0.4, 0.0),    1, 0.02, 0.40),
    Spec("sbp",         124.0, 14.0,  3.0, -3.0, 5.0,  6.0, (-22.0, -6.0, -18.0), 0, 0.01, 0.05),
    Spec("dbp",          64.0,  8.0, -1.0, -1.5, 3.0,  4.0, (-10.0, -3.0, -9.0), 0, 0.01, 0.05),
    Spec("map",           0.0,  0.0,  0.0,  0.0, 0.0,  3.0, (0.0, 0.0, 0.0),     0, 0.01, 0.05),
    Spec("gcs",          15.0,  0.0,  0.0,  0.0, 0.0,  0.25, (-2.0, -1.5, -1.5),  0, 0.05, 0.50),
    Spec("fio2",         0.21,  0.0,  0.0,  0.0, 0.0,  0.0, (0.08, 0.25, 0.0),   2, 0.30, 0.20),
    Spec("urine_output", np.log(80.0), 0.3, -0.05, -0.1, 0.0, 0.25, (-0.3, 0.0, -0.9), 0, 0.08,
         0.25, True),
)
LABS: tuple[Spec, ...] = (
    Spec("lactate",     np.log(1.2), 0.30, 0.00, 0.10, 0.0, 0.08, (0.55, 0.25, 0.45), 1, 0.40,
         0.30, True),
    Spec("creatinine",  np.log(1.0), 0.35, 0.05, 0.15, 0.0, 0.05, (0.15, 0.0, 0.55), 2, 0.03,
         0.05, True),
    Spec("bun",         np.log(18.0), 0.40, 0.08, 0.15, 0.0, 0.05, (0.10, 0.0, 0.45), 0, 0.05,
         0.05, True),
    Spec("wbc",         np.log(9.0), 0.30, 0.00, 0.05, 0.0, 0.07, (0.40, 0.15, 0.0), 1, 0.05,
         0.05, True),
    Spec("platelets",   np.log(220.0), 0.35, -0.03, -0.05, 0.0, 0.06, (-0.30, 0.0, -0.08), 0,
         0.05, 0.05, True),
    Spec("hct",          31.0, 4.0, -0.3, -1.5, 0.0, 1.0, (-1.0, 0.0, -1.5), 1, 0.03, 0.05),
    Spec("potassium",     4.1, 0.4, 0.05, 0.05, 0.0, 0.15, (0.1, 0.0, 0.6), 1, 0.03, 0.05),
    Spec("sodium",      139.0, 3.0, 0.2, 0.0, 0.0, 1.0, (-1.0, 0.0, 1.5), 0, 0.03, 0.05),
    Spec("glucose",     np.log(130.0), 0.25, 0.02, 0.05, 0.0, 0.08, (0.15, 0.05, 0.0), 0, 0.02,
         0.05, True),
    Spec("bicarbonate",  24.0, 2.5, 0.0, -0.5, 0.0, 0.8, (-3.5, 0.0, -4.0), 0, 0.05, 0.10),
    Spec("bilirubin",   np.log(0.7), 0.50, 0.0, 0.10, 0.0, 0.08, (0.25, 0.0, 0.0), 1, 0.45,
         0.40, True),
    Spec("ph",            7.40, 0.03, 0.0, -0.005, 0.0, 0.015, (-0.06, -0.05, -0.07), 2, 0.35,
         0.30),
)
# fmt: on
_VIDX = {s.name: i for i, s in enumerate(VITALS)}


@dataclass(frozen=True)
class Params:
    """Who the patients are: every per-patient quantity the course depends on. (N,) unless
    noted."""

    age: np.ndarray  # years
    male: np.ndarray  # bool
    weight: np.ndarray  # kg
    height: np.ndarray  # cm
    frailty: np.ndarray  # latent, standard normal; raises baseline risk, shows in baselines
    deteriorates: np.ndarray  # bool: a deterioration starts within the window
    onset: np.ndarray  # hour the deterioration starts; NaN when none
    rate: np.ndarray  # deterioration speed, latent units per hour (0 when none)
    phenotype: np.ndarray  # int index into PHENOTYPES (meaningful only when deteriorates)
    clock: np.ndarray  # hour of day at admission, for the circadian rhythm
    vital_base: np.ndarray  # (N, len(VITALS)) baseline on the generation scale
    lab_base: np.ndarray  # (N, len(LABS))
    chronic: np.ndarray  # chronic offset along the phenotype's signature, latent units
    sedated: np.ndarray  # GCS deficit at baseline (0 for most patients)
    on_oxygen: np.ndarray  # baseline fio2 (0.21 = room air)


@dataclass(frozen=True)
class Noise:
    """Every random number `simulate` uses, drawn up front (standard normal or uniform)."""

    process: np.ndarray  # (N, HOURS) normal: wobble of the deterioration's speed per hour
    vital_gap: np.ndarray  # (N, VITAL_ROUNDS) uniform: gap to the next vitals round
    lab_gap: np.ndarray  # (N, LAB_ROUNDS) uniform: gap to the next blood draw
    vital_eps: np.ndarray  # (N, VITAL_ROUNDS, len(VITALS)) normal: measurement noise
    lab_eps: np.ndarray  # (N, LAB_ROUNDS, len(LABS)) normal
    vital_drop: np.ndarray  # (N, VITAL_ROUNDS, len(VITALS)) uniform: round skips variable
    lab_drop: np.ndarray  # (N, LAB_ROUNDS, len(LABS)) uniform
    vital_never: np.ndarray  # (N, len(VITALS)) uniform: stay never measures variable
    lab_never: np.ndarray  # (N, len(LABS)) uniform
    death: np.ndarray  # (N,) uniform: died = death < true risk
    los: np.ndarray  # (N,) normal: length-of-stay scatter


@dataclass(frozen=True)
class Plan:
    """A treatment plan on the hourly grid: column h is what is given at the start of hour
    h (0..HOURS; hour HOURS lies past the window and is never used). `training.interventions`
    turns a plan into observation rows and back."""

    antibiotics: np.ndarray  # (N, HOURS + 1) doses given at the start of each hour (0/1)
    vasopressor: np.ndarray  # (N, HOURS + 1) rate held during each hour, ug/kg/min
    fluid_bolus: np.ndarray  # (N, HOURS + 1) bolus volume given at the start of each hour, mL
    mech_vent: np.ndarray  # (N, HOURS + 1) ventilated during each hour (0/1)

    @classmethod
    def none(cls, n: int) -> Plan:
        def z() -> np.ndarray:
            return np.zeros((n, HOURS + 1))

        return cls(antibiotics=z(), vasopressor=z(), fluid_bolus=z(), mech_vent=z())

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.antibiotics, self.vasopressor, self.fluid_bolus, self.mech_vent

    def is_empty(self) -> bool:
        return not any(np.any(a) for a in self.arrays())

    def copy(self) -> Plan:
        return Plan(*(a.copy() for a in self.arrays()))

    def select(self, idx: np.ndarray) -> Plan:
        return Plan(*(a[idx] for a in self.arrays()))


@dataclass(frozen=True)
class Trajectories:
    """The simulated course. Values are NaN where nothing was measured."""

    latent: np.ndarray  # (N, HOURS + 1) deterioration at each hour (0 = none)
    vital_times: np.ndarray  # (N, VITAL_ROUNDS) hours; NaN past the window
    vital_values: np.ndarray  # (N, VITAL_ROUNDS, len(VITALS)) canonical units
    lab_times: np.ndarray  # (N, LAB_ROUNDS)
    lab_values: np.ndarray  # (N, LAB_ROUNDS, len(LABS))
    severity: np.ndarray  # (N,) projected deterioration at 72 h, what the risk rests on
    true_risk: np.ndarray  # (N,) Bayes-optimal probability of in-hospital death
    died: np.ndarray  # (N,) bool
    los_days: np.ndarray  # (N,)
    state: LatentState  # latent and treatment states on the knots (for noise-free values)


# --- risk and length of stay ---------------------------------------------------------------
RISK_INTERCEPT = -3.4  # logit of death for a 65-year-old of average frailty, no deterioration
RISK_AGE = 0.35  # logit per decade above 65
RISK_FRAILTY = 0.4  # logit per SD of frailty
RISK_SEVERITY = 0.2  # logit per unit of projected severity
RISK_SPEED = 5.0  # extra logit per unit of speed (latent units per 12 h): fast courses kill
SPEED_HOURS = 6  # the speed that matters is the slope over the window's last hours
PROJECTION_HOURS = 24.0  # severity is projected this far past the window at the current speed
LOS_BASE_DAYS = 3.0  # median stay beyond the 48 h window for a stable patient, days
LOS_MAX_DAYS = 120.0  # longest stay beyond the window, days
SICK_SAMPLING = 0.8  # how strongly sickness shortens sampling gaps (exp(-k * sickness))
CHRONIC_SD = 1.0  # SD of the chronic look-alike offset (half-normal), latent units
RATE_MEDIAN = 0.035  # median deterioration speed, latent units per hour
RATE_SIGMA = 0.5  # log-SD of the speed across deteriorating patients
RATE_MAX = 0.12  # fastest speed (a 0-to-saturation course in about a day)
SATURATION = 3.0  # latent units at which the visible signature saturates (tanh)


# --- treatment effects (issue 11; docs/synthetic.md, "Interventions") -----------------------
ABX_COVER_HOURS = 12  # a dose covers the next 12 h (the standard schedule re-doses every 8 h)
ABX_LAG_HOURS = 2.0  # time constant for the cover to take full effect
ABX_MAX = 0.9  # fraction of the deterioration speed removed at full effect, treated at onset
ABX_REVERSAL = 0.03  # latent units per hour a fully treated course recedes
ABX_DELAY_HOURS = 12.0  # effect shrinks as exp(-hours from onset to course start / this)
ABX_RESPONSE = (1.0, 0.5, 0.15)  # effect by phenotype (sepsis, respiratory, renal)
VASO_LAG_HOURS = 1.0  # time constant for blood pressure to follow the vasopressor rate
VASO_SBP = 150.0  # mmHg SBP per ug/kg/min at steady state (0.1 -> +15, MAP +10)
VASO_DBP = 75.0  # mmHg DBP per ug/kg/min
FLUID_HALF_LIFE = 1.5  # hours: a bolus raises blood pressure briefly
FLUID_SBP = 12.0  # mmHg SBP per 500 mL just after the bolus
FLUID_DBP = 5.0  # mmHg DBP per 500 mL
VENT_SPO2 = 3.0  # % SpO2 while ventilated
VENT_RR = -5.0  # /min respiratory rate while ventilated (the ventilator sets the rate)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def draw_params(rng: np.random.Generator, n: int) -> Params:
    """Draw `n` patients: demographics, frailty, baselines and the deterioration course."""
    age = np.clip(rng.normal(64.0, 16.0, n), 18.0, 95.0)
    male = rng.random(n) < 0.56
    height = np.where(male, rng.normal(176.0, 7.0, n), rng.normal(163.0, 7.0, n))
    bmi = np.clip(rng.lognormal(np.log(27.0), 0.18, n), 15.0, 60.0)
    weight = bmi * (height / 100.0) ** 2
    decades = (age - 65.0) / 10.0
    # Older patients are frailer on average; frailty is partly visible in the baselines.
    frailty = 0.35 * decades + rng.normal(0.0, 1.0, n)
    deteriorates = rng.random(n) < _sigmoid(-0.75 + 0.45 * frailty)
    # Some arrive already deteriorating (onset clipped to admission), most start later.
    onset = np.where(deteriorates, np.clip(rng.uniform(-10.0, 44.0, n), 0.0, None), np.nan)
    speed = np.clip(rng.lognormal(np.log(RATE_MEDIAN), RATE_SIGMA, n), 0.005, RATE_MAX)
    rate = np.where(deteriorates, speed, 0.0)
    phenotype = rng.choice(len(PHENOTYPES), size=n, p=PHENOTYPE_P)
    clock = rng.uniform(0.0, 24.0, n)

    def baselines(specs: tuple[Spec, ...]) -> np.ndarray:
        mean = np.array([s.mean for s in specs])
        sd = np.array([s.sd for s in specs])
        a = np.array([s.age for s in specs])
        f = np.array([s.frailty for s in specs])
        z = rng.normal(0.0, 1.0, (n, len(specs)))
        return mean + a * decades[:, None] + f * frailty[:, None] + sd * z  # (N, V)

    # Chronic look-alikes: many patients carry, from admission and without extra risk, an
    # offset along their phenotype's own deterioration signature (chronic tachycardia,
    # COPD, CKD). A single reading cannot tell it from an acute deterioration; the trend can.
    chronic = np.abs(rng.normal(0.0, CHRONIC_SD, n))
    vital_base = baselines(VITALS)
    lab_base = baselines(LABS)
    # Urine output scales with body weight (about 1 mL/kg/h at baseline).
    vital_base[:, _VIDX["urine_output"]] += np.log(weight / 80.0)
    sedated = np.where(rng.random(n) < 0.12, rng.integers(1, 9, n), 0).astype(np.float64)
    on_oxygen = np.where(rng.random(n) < 0.25, rng.choice([0.28, 0.35, 0.4, 0.5], n), 0.21)
    return Params(age=age, male=male, weight=weight, height=height, frailty=frailty,
                  deteriorates=deteriorates, onset=onset, rate=rate, phenotype=phenotype,
                  clock=clock, vital_base=vital_base, lab_base=lab_base, chronic=chronic,
                  sedated=sedated, on_oxygen=on_oxygen)


def draw_noise(rng: np.random.Generator, n: int) -> Noise:
    """Every random number the course of `n` patients will use."""
    nv, nl = len(VITALS), len(LABS)
    return Noise(
        process=rng.normal(0.0, 1.0, (n, HOURS)),
        vital_gap=rng.random((n, VITAL_ROUNDS)),
        lab_gap=rng.random((n, LAB_ROUNDS)),
        vital_eps=rng.normal(0.0, 1.0, (n, VITAL_ROUNDS, nv)),
        lab_eps=rng.normal(0.0, 1.0, (n, LAB_ROUNDS, nl)),
        vital_drop=rng.random((n, VITAL_ROUNDS, nv)),
        lab_drop=rng.random((n, LAB_ROUNDS, nl)),
        vital_never=rng.random((n, nv)),
        lab_never=rng.random((n, nl)),
        death=rng.random(n),
        los=rng.normal(0.0, 1.0, n),
    )


@dataclass
class LatentState:
    """The latent course and the treatment states that evolve with it, filled hour by hour
    (`step`), so that a policy can act between hours with exactly the arithmetic
    `simulate` uses. Knot h is the start of hour h."""

    latent: np.ndarray  # (N, HOURS + 1) deterioration at each knot
    cover: np.ndarray  # (N, HOURS + 1) antibiotic cover taking effect, 0..1 (lagged)
    last_dose: np.ndarray  # (N,) hour of the latest antibiotic dose, -inf when none
    course: np.ndarray  # (N,) hour the current antibiotic course began, -inf when none
    vaso: np.ndarray  # (N, HOURS + 1) vasopressor effect at each knot, ug/kg/min (lagged)
    fluid: np.ndarray  # (N, HOURS + 1) bolus effect just after each knot, units of 500 mL

    @classmethod
    def start(cls, n: int) -> LatentState:
        z = np.zeros((n, HOURS + 1))
        return cls(z, z.copy(), np.full(n, -np.inf), np.full(n, -np.inf), z.copy(), z.copy())

    def step(self, params: Params, noise: Noise, plan: Plan, h: int) -> None:
        """Advance from knot h to h + 1 under the plan's column h."""
        onset = np.where(params.deteriorates, params.onset, np.inf)
        active = np.clip(h + 1 - onset, 0.0, 1.0)  # fraction of hour h after onset
        step = params.rate * active * np.exp(0.35 * noise.process[:, h] - 0.06)
        # Antibiotics: a lagged cover that, after onset, removes part of the speed and makes
        # the course recede; the later after onset a course begins, the smaller the effect.
        dose = plan.antibiotics[:, h] > 0
        lapsed = h - self.last_dose >= ABX_COVER_HOURS
        self.course = np.where(dose & lapsed, float(h), self.course)
        self.last_dose = np.where(dose, float(h), self.last_dose)
        covered = (h - self.last_dose < ABX_COVER_HOURS).astype(np.float64)
        lag = 1.0 - np.exp(-1.0 / ABX_LAG_HOURS)
        cover = self.cover[:, h] + (covered - self.cover[:, h]) * lag
        self.cover[:, h + 1] = cover
        delay = np.maximum(self.course - onset, 0.0)  # hours from onset to treatment
        gain = (ABX_MAX * np.asarray(ABX_RESPONSE)[params.phenotype] * cover
                * np.exp(-delay / ABX_DELAY_HOURS) * (active > 0))
        self.latent[:, h + 1] = np.maximum(
            self.latent[:, h] + step * (1.0 - gain) - ABX_REVERSAL * gain, 0.0)
        # Vasopressor: first-order lag towards the running rate; fluids: decaying bolus.
        rate = plan.vasopressor[:, h]
        self.vaso[:, h + 1] = rate + (self.vaso[:, h] - rate) * np.exp(-1.0 / VASO_LAG_HOURS)
        self.fluid[:, h] += plan.fluid_bolus[:, h] / 500.0
        self.fluid[:, h + 1] = self.fluid[:, h] * 0.5 ** (1.0 / FLUID_HALF_LIFE)


def _latent_path(params: Params, noise: Noise, plan: Plan) -> LatentState:
    """Deterioration on the hourly knots, (N, HOURS + 1). It grows at the patient's speed
    from onset on (the first partial hour pro rata), with a multiplicative wobble, and
    never falls below 0; antibiotics bend it (`LatentState.step`)."""
    state = LatentState.start(params.age.shape[0])
    for h in range(HOURS):
        state.step(params, noise, plan, h)
    return state


def _vital_effects(state: LatentState, plan: Plan, times: np.ndarray) -> dict[str, np.ndarray]:
    """Shifts of the noise-free vitals at continuous `times` (N, R) by the interventions."""
    t = np.clip(np.nan_to_num(times, nan=0.0), 0.0, HOURS)
    h = np.minimum(np.floor(t).astype(np.int64), HOURS - 1)
    into = t - h
    rate = np.take_along_axis(plan.vasopressor, h, axis=1)
    knot = np.take_along_axis(state.vaso, h, axis=1)
    vaso = rate + (knot - rate) * np.exp(-into / VASO_LAG_HOURS)
    fluid = np.take_along_axis(state.fluid, h, axis=1) * 0.5 ** (into / FLUID_HALF_LIFE)
    vent = np.take_along_axis(plan.mech_vent, h, axis=1)
    return {"sbp": VASO_SBP * vaso + FLUID_SBP * fluid,
            "dbp": VASO_DBP * vaso + FLUID_DBP * fluid,
            "spo2": VENT_SPO2 * vent, "resp_rate": VENT_RR * vent}


def _at(latent: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Linear interpolation of the hourly latent at continuous `times` (N, R); NaN stays."""
    t = np.clip(np.nan_to_num(times, nan=0.0), 0.0, HOURS)
    lo = np.minimum(np.floor(t).astype(np.int64), HOURS - 1)
    frac = t - lo
    a = np.take_along_axis(latent, lo, axis=1)
    b = np.take_along_axis(latent, lo + 1, axis=1)
    return a + frac * (b - a)


def _schedule(
    gaps: np.ndarray, first: np.ndarray, lo: float, hi: float, latent: np.ndarray,
    frailty: np.ndarray,
) -> np.ndarray:
    """Sampling times (N, R): the first at `first`, then gaps in [lo, hi] hours that shrink
    with sickness (frailty and the current deterioration). NaN once past the window."""
    n, rounds = gaps.shape
    times = np.full((n, rounds), np.nan)
    t = first.copy()
    for k in range(rounds):
        times[:, k] = np.where(t < HOURS, t, np.nan)  # the window is [0, 48) h: 48 bins
        now = _at(latent, t[:, None])[:, 0]
        sickness = np.maximum(0.5 * frailty + now, 0.0)
        t = t + lo + (hi - lo) * gaps[:, k] * np.exp(-SICK_SAMPLING * sickness)
    return np.round(times, 2)


def _loads(specs: tuple[Spec, ...], phenotype: np.ndarray) -> np.ndarray:
    table = np.array([s.loads for s in specs]).T  # (P, V)
    return table[phenotype]  # (N, V)


def _signature(chronic: np.ndarray, acute: np.ndarray) -> np.ndarray:
    """How far along its phenotype's signature a patient looks, (N, R): chronic plus acute
    latent, saturating so that no course pushes a vital past what a body can show."""
    return SATURATION * np.tanh((chronic[:, None] + acute) / SATURATION)


def _circadian(specs: tuple[Spec, ...], clock: np.ndarray, times: np.ndarray) -> np.ndarray:
    amp = np.array([s.circadian for s in specs])
    phase = np.cos(2.0 * np.pi * (clock[:, None] + times - 16.0) / 24.0)  # (N, R), peak 16:00
    return phase[:, :, None] * amp  # (N, R, V)


def _observe(
    specs: tuple[Spec, ...], true: np.ndarray, eps: np.ndarray, drop: np.ndarray,
    never: np.ndarray, times: np.ndarray, sickness: np.ndarray,
) -> np.ndarray:
    """Noisy, rounded, range-checked measurements; NaN where not measured."""
    noise_sd = np.array([s.noise for s in specs])
    log_scale = np.array([s.log_scale for s in specs])
    val = true + eps * noise_sd
    val = np.where(log_scale, np.exp(np.minimum(val, 20.0)), val)
    for j, s in enumerate(specs):
        # Inside the possible range, and no further than 20 % past the typical range: a
        # body in extremis, not a sensor fault.
        lo, hi = CATALOGUE[s.name].possible
        tlo, thi = CATALOGUE[s.name].typical
        lo, hi = max(lo, 0.8 * tlo), min(hi, 1.2 * thi)
        val[:, :, j] = np.clip(np.round(val[:, :, j], s.decimals), lo, hi)
    # Sicker stays are less likely to miss a variable altogether.
    p_never = np.array([s.p_never for s in specs]) * np.exp(-sickness)[:, None]  # (N, V)
    p_drop = np.array([s.p_drop for s in specs])
    measured = (never >= p_never)[:, None, :] & (drop >= p_drop) & ~np.isnan(times)[:, :, None]
    return np.where(measured, val, np.nan)


def true_vitals(params: Params, state: LatentState, plan: Plan, times: np.ndarray) -> np.ndarray:
    """Noise-free vitals (N, R, V) at `times` (N, R) under `plan` (urine output still per
    hour: `simulate` scales it by the time since the previous round)."""
    sig_v = _signature(params.chronic, _at(state.latent, times))  # (N, R)
    loads_v = _loads(VITALS, params.phenotype)  # (N, V)
    true_v = (params.vital_base[:, None, :]
              + _circadian(VITALS, params.clock, np.nan_to_num(times))
              + sig_v[:, :, None] * loads_v[:, None, :])  # (N, R, V)
    iv = _VIDX
    for name, shift in _vital_effects(state, plan, times).items():
        true_v[:, :, iv[name]] += shift
    # MAP is not independent: it follows systolic and diastolic pressure.
    true_v[:, :, iv["map"]] = (true_v[:, :, iv["sbp"]] + 2.0 * true_v[:, :, iv["dbp"]]) / 3.0
    true_v[:, :, iv["gcs"]] = 15.0 - params.sedated[:, None] + sig_v * loads_v[:, None, iv["gcs"]]
    # fio2 is a setting, not a noisy reading: titrated in 0.05 steps as oxygenation fails.
    fio2 = params.on_oxygen[:, None] + sig_v * loads_v[:, None, iv["fio2"]]
    true_v[:, :, iv["fio2"]] = np.where(fio2 > 0.23, np.round(fio2 / 0.05) * 0.05, 0.21)
    return true_v


def true_labs(params: Params, state: LatentState, times: np.ndarray) -> np.ndarray:
    """Noise-free labs (N, R, V) at `times` (N, R), on the generation scale."""
    sig_l = _signature(params.chronic, _at(state.latent, times))  # (N, R)
    loads_l = _loads(LABS, params.phenotype)  # (N, V)
    return params.lab_base[:, None, :] + sig_l[:, :, None] * loads_l[:, None, :]


def simulate(params: Params, noise: Noise, plan: Plan) -> Trajectories:
    """The course of every patient under `plan`: pure and deterministic in its inputs."""
    n = params.age.shape[0]
    for a in plan.arrays():
        if a.shape != (n, HOURS + 1):
            raise ValueError(f"simulate: plan has shape {a.shape}, expected {(n, HOURS + 1)}")
    state = _latent_path(params, noise, plan)
    latent = state.latent
    sick0 = np.maximum(0.5 * params.frailty, 0.0)

    # --- vital signs: one round measures the bedside panel ----------------------------
    vt = _schedule(noise.vital_gap, 0.5 * noise.vital_gap[:, 0], 1.0, 4.0, latent,
                   params.frailty)
    true_v = true_vitals(params, state, plan, vt)
    # Urine output is the volume since the previous round: hourly rate x hours elapsed.
    elapsed = np.diff(np.nan_to_num(vt, nan=HOURS), axis=1, prepend=0.0)
    true_v[:, :, _VIDX["urine_output"]] += np.log(np.maximum(elapsed, 0.25))
    vital_values = _observe(VITALS, true_v, noise.vital_eps, noise.vital_drop,
                            noise.vital_never, vt, sick0)

    # --- labs: one blood draw measures the panel ---------------------------------------
    lt = _schedule(noise.lab_gap, 3.0 * noise.lab_gap[:, 0], 6.0, 24.0, latent, params.frailty)
    true_l = true_labs(params, state, lt)
    lab_values = _observe(LABS, true_l, noise.lab_eps, noise.lab_drop, noise.lab_never, lt,
                          sick0)

    # --- outcome: the true risk is a function of the latent course alone ---------------
    # Risk reads the latent *path* only (with age and frailty), so whatever changes the path
    # (issue 11's treatments) changes the risk through it: the speed is the realised slope
    # over the last SPEED_HOURS of the window.
    speed = (latent[:, -1] - latent[:, -1 - SPEED_HOURS]) / SPEED_HOURS * 12.0  # units / 12 h
    severity = latent[:, -1] + speed / 12.0 * PROJECTION_HOURS
    logit = (RISK_INTERCEPT + RISK_AGE * (params.age - 65.0) / 10.0
             + RISK_FRAILTY * params.frailty + RISK_SEVERITY * severity + RISK_SPEED * speed)
    true_risk = _sigmoid(logit)
    died = noise.death < true_risk
    sev = np.minimum(severity, 2.0 * SATURATION)
    # Survivors stay longer the sicker they are; deaths cluster earlier but scatter widely.
    los_extra = np.where(
        died,
        np.exp(np.log(2.0) + 0.15 * sev + 0.8 * noise.los),
        np.exp(np.log(LOS_BASE_DAYS) + 0.2 * params.frailty + 0.3 * sev + 0.5 * noise.los),
    )
    los_days = np.round(HOURS / 24.0 + np.minimum(los_extra, LOS_MAX_DAYS), 2)
    return Trajectories(latent=latent, vital_times=vt, vital_values=vital_values, lab_times=lt,
                        lab_values=lab_values, severity=severity, true_risk=true_risk,
                        died=died, los_days=los_days, state=state)
