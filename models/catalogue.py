"""The variable catalogue: one table, one place.

Every variable vitalcast reads — vital signs, lab values, static descriptors and
interventions — is declared here once, with its canonical UCUM unit, its LOINC
code, the physiologically *possible* range (outside it a value is a unit or
entry error and is rejected) and the *typical* range (outside it a value is
accepted with a warning). Training, the importers and the service all validate
against this table, so a value means the same thing everywhere.

Ranges are for adult ICU patients. Possible ranges are deliberately wide (they
catch a temperature sent in Fahrenheit or a glucose in mmol/L, not a sick
patient); typical ranges cover what a busy ICU sees on most days.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.units import alternatives

__all__ = [
    "CATALOGUE",
    "INTERVENTIONS",
    "MEASUREMENTS",
    "STATICS",
    "Variable",
    "check_value",
    "get",
]

Kind = Literal["measurement", "static", "intervention"]
Group = Literal["vital", "lab", "static", "intervention"]
# How an intervention row is put on the grid: an event is summed per bin, a rate or a
# state is carried forward until the next row.
Mode = Literal["value", "event", "rate", "state"]


@dataclass(frozen=True)
class Variable:
    name: str  # canonical snake_case name used in every table and request
    unit: str  # canonical UCUM unit; values are stored and modelled in it
    loinc: str  # LOINC code (FHIR Observation.code); "" where LOINC has none
    possible: tuple[float, float]  # outside: impossible, rejected (unit or entry error)
    typical: tuple[float, float]  # outside: accepted with a warning
    kind: Kind
    group: Group
    label: str  # human-readable name for plots and messages
    display_unit: str = ""  # unit as a person writes it in a message; defaults to `unit`
    log_scale: bool = False  # right-skewed lab: normalise log1p(value) instead of value
    mode: Mode = "value"  # grid semantics for interventions

    @property
    def shown_unit(self) -> str:
        """The unit as a person reads it: the display unit, else the UCUM code, except a
        UCUM annotation alone ({male}, {state}), which is no unit: ""."""
        if self.display_unit:
            return self.display_unit
        return "" if self.unit.startswith("{") else self.unit


def _v(
    name: str,
    unit: str,
    loinc: str,
    possible: tuple[float, float],
    typical: tuple[float, float],
    group: Group,
    label: str,
    display_unit: str = "",
    log_scale: bool = False,
) -> Variable:
    kind: Kind = "static" if group == "static" else "measurement"
    return Variable(name, unit, loinc, possible, typical, kind, group, label, display_unit,
                    log_scale)


def _i(name: str, unit: str, possible: tuple[float, float], mode: Mode, label: str,
       display_unit: str = "") -> Variable:
    return Variable(name, unit, "", possible, possible, "intervention", "intervention", label,
                    display_unit=display_unit, mode=mode)


_TABLE: tuple[Variable, ...] = (
    # --- vital signs -------------------------------------------------------------------
    _v("heart_rate", "/min", "8867-4", (0, 300), (40, 180), "vital", "Heart rate"),
    _v("resp_rate", "/min", "9279-1", (0, 80), (6, 40), "vital", "Respiratory rate"),
    _v("spo2", "%", "59408-5", (20, 100), (85, 100), "vital", "SpO2 (pulse oximetry)"),
    _v("temperature", "Cel", "8310-5", (25, 45), (35, 40), "vital", "Body temperature", "°C"),
    _v("sbp", "mm[Hg]", "8480-6", (0, 300), (70, 200), "vital", "Systolic blood pressure",
       "mmHg"),
    _v("dbp", "mm[Hg]", "8462-4", (0, 250), (30, 120), "vital", "Diastolic blood pressure",
       "mmHg"),
    _v("map", "mm[Hg]", "8478-0", (0, 270), (50, 140), "vital", "Mean arterial pressure", "mmHg"),
    _v("gcs", "{score}", "9269-2", (3, 15), (3, 15), "vital", "Glasgow coma scale", "points"),
    _v("fio2", "1", "3150-0", (0.21, 1.0), (0.21, 1.0), "vital", "Inspired O2 fraction",
       "fraction"),
    _v("urine_output", "mL", "9187-6", (0, 5000), (0, 1000), "vital",
       "Urine output since last measurement", log_scale=True),
    # --- laboratory values -------------------------------------------------------------
    _v("lactate", "mmol/L", "2524-7", (0.1, 30), (0.3, 8), "lab", "Lactate", log_scale=True),
    _v("creatinine", "mg/dL", "2160-0", (0.05, 25), (0.3, 6), "lab", "Creatinine",
       log_scale=True),
    _v("bun", "mg/dL", "3094-0", (0.5, 300), (4, 100), "lab", "Blood urea nitrogen",
       log_scale=True),
    _v("wbc", "10*3/uL", "6690-2", (0, 300), (1.5, 30), "lab", "White blood cells", "x10^3/uL",
       log_scale=True),
    _v("platelets", "10*3/uL", "777-3", (1, 2500), (50, 600), "lab", "Platelets", "x10^3/uL",
       log_scale=True),
    _v("hct", "%", "4544-3", (5, 75), (20, 55), "lab", "Haematocrit"),
    _v("potassium", "mmol/L", "2823-3", (1, 12), (3.0, 6.0), "lab", "Potassium"),
    _v("sodium", "mmol/L", "2951-2", (90, 200), (125, 155), "lab", "Sodium"),
    _v("glucose", "mg/dL", "2345-7", (10, 2000), (60, 350), "lab", "Glucose", log_scale=True),
    _v("bicarbonate", "mmol/L", "1963-8", (2, 60), (14, 36), "lab", "Bicarbonate"),
    _v("bilirubin", "mg/dL", "1975-2", (0.05, 60), (0.1, 6), "lab", "Total bilirubin",
       log_scale=True),
    _v("ph", "[pH]", "2744-1", (6.5, 8.0), (7.2, 7.6), "lab", "Arterial pH", "pH"),
    # Further PhysioNet 2012 parameters: kept because they are real signal on real data.
    _v("sao2", "%", "2708-6", (20, 100), (85, 100), "lab", "Arterial O2 saturation"),
    _v("pao2", "mm[Hg]", "2703-7", (10, 800), (55, 450), "lab", "Arterial pO2", "mmHg",
       log_scale=True),
    _v("paco2", "mm[Hg]", "2019-8", (5, 200), (25, 65), "lab", "Arterial pCO2", "mmHg"),
    _v("albumin", "g/dL", "1751-7", (0.5, 7), (1.5, 5.5), "lab", "Albumin"),
    _v("alp", "U/L", "6768-6", (5, 5000), (30, 400), "lab", "Alkaline phosphatase",
       log_scale=True),
    _v("alt", "U/L", "1742-6", (1, 20000), (5, 500), "lab", "Alanine aminotransferase",
       log_scale=True),
    _v("ast", "U/L", "1920-8", (1, 40000), (5, 500), "lab", "Aspartate aminotransferase",
       log_scale=True),
    _v("cholesterol", "mg/dL", "2093-3", (10, 1000), (80, 300), "lab", "Total cholesterol"),
    _v("magnesium", "mmol/L", "2601-3", (0.1, 10), (0.5, 1.5), "lab", "Magnesium"),
    _v("troponin_i", "ug/L", "10839-9", (0, 500), (0, 10), "lab", "Troponin I",
       log_scale=True),
    _v("troponin_t", "ug/L", "6598-7", (0, 100), (0, 2), "lab", "Troponin T", log_scale=True),
    # --- static descriptors ------------------------------------------------------------
    _v("age", "a", "30525-0", (0, 120), (18, 100), "static", "Age", "years"),
    _v("sex", "{male}", "46098-0", (0, 1), (0, 1), "static", "Sex (1 = male, 0 = female)"),
    _v("weight", "kg", "29463-7", (1, 400), (35, 200), "static", "Body weight"),
    _v("height", "cm", "8302-2", (30, 250), (140, 210), "static", "Body height"),
    # --- interventions (issue 11) -------------------------------------------------------
    _i("antibiotics", "{dose}", (0, 1), "event", "Antibiotic dose given", "doses"),
    _i("vasopressor", "ug/kg/min", (0, 5), "rate",
       "Vasopressor rate (norepinephrine equivalent)"),
    _i("fluid_bolus", "mL", (0, 5000), "event", "Fluid bolus"),
    _i("mech_vent", "{state}", (0, 1), "state", "Mechanical ventilation (0/1)"),
)

CATALOGUE: dict[str, Variable] = {v.name: v for v in _TABLE}
MEASUREMENTS: tuple[str, ...] = tuple(v.name for v in _TABLE if v.kind == "measurement")
STATICS: tuple[str, ...] = tuple(v.name for v in _TABLE if v.kind == "static")
INTERVENTIONS: tuple[str, ...] = tuple(v.name for v in _TABLE if v.kind == "intervention")
# The variables the synthetic cohort and DESIGN.md's minimum list cover.
CORE_MEASUREMENTS: tuple[str, ...] = MEASUREMENTS[: MEASUREMENTS.index("ph") + 1]


def get(name: str) -> Variable:
    """The catalogue entry for `name`; KeyError with the known names otherwise."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise KeyError(f"unknown variable {name!r}; known: {', '.join(CATALOGUE)}") from None


def _fmt(x: float) -> str:
    return f"{x:g}"


def _other_unit(var: Variable, value: float) -> str:
    """"in mmol/L it would be 270 mg/dL" for each other unit in which `value` would be a
    typical reading of `var` (a unit mistake is the likeliest reason for an odd value);
    "" when there is none."""
    lo, hi = var.typical
    hits = [f"in {other} it would be {_fmt(round(v, 1))} {var.shown_unit}"
            for other, v in alternatives(var.name, var.unit, value) if lo <= v <= hi]
    return "; ".join(hits)


def check_value(name: str, value: float) -> tuple[bool, str | None]:
    """Validate one value against the catalogue.

    Returns (ok, message): ok is False for an impossible value (message says why, for a
    422); ok is True with a message for an atypical value (a warning); (True, None)
    otherwise.
    """
    var = get(name)
    lo, hi = var.possible
    tlo, thi = var.typical
    if tlo <= value <= thi and lo <= value <= hi and var.mode != "state":
        return True, None  # typical (the usual value): nothing to word
    unit = var.shown_unit
    if not lo <= value <= hi:
        if not unit:  # a code (sex, a ventilation state): no other unit to suspect
            return False, f"{name} {_fmt(value)} is impossible: expected {_fmt(lo)}-{_fmt(hi)}"
        return False, (
            f"{name} {_fmt(value)} is impossible: expected {unit} in "
            f"{_fmt(lo)}-{_fmt(hi)} ({_other_unit(var, value) or 'is it in another unit?'})"
        )
    if var.mode == "state" and value not in (0.0, 1.0):  # ventilated or not, nothing between
        return False, f"{name} {_fmt(value)} is impossible: {name} is 0 (off) or 1 (on)"
    if not tlo <= value <= thi:
        shown = f" {unit}" if unit else ""
        hint = _other_unit(var, value)
        return True, (
            f"{name} {_fmt(value)}{shown} is outside the typical range "
            f"{_fmt(tlo)}-{_fmt(thi)}" + (f" ({hint})" if hint else "")
        )
    return True, None
