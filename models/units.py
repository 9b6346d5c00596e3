"""Unit conversions to the catalogue's canonical units (UCUM codes), for the FHIR importer
of requests and for the hint a message gives when a value looks like it was sent in
another unit ("glucose 15 mg/dL ... (in mmol/L it would be 270 mg/dL)").

Codes are compared case-insensitively with UCUM annotations ({beats}) removed, and with
the spellings senders put in a free-text unit resolved to UCUM.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["alternatives", "annotation_only", "convert", "unit_key"]

# Affine conversions to the canonical unit, canonical = value * scale + shift, keyed by
# (variable or "*" for any variable with that canonical unit, canonical unit, given unit).
_Affine = tuple[float, float]
_CONVERSIONS: dict[tuple[str, str, str], _Affine] = {
    ("*", "cel", "[degf]"): (5.0 / 9.0, -32.0 * 5.0 / 9.0),
    ("*", "cel", "k"): (1.0, -273.15),
    ("*", "1", "%"): (0.01, 0.0),  # FiO2 as a percentage -> fraction
    ("*", "%", "1"): (100.0, 0.0),  # SpO2, SaO2, haematocrit as a fraction -> percent
    ("*", "kg", "g"): (0.001, 0.0),
    ("*", "kg", "[lb_av]"): (0.45359237, 0.0),
    ("*", "cm", "m"): (100.0, 0.0),
    ("*", "cm", "[in_i]"): (2.54, 0.0),
    ("*", "mm[hg]", "kpa"): (7.50062, 0.0),  # blood gases in SI
    ("*", "10*3/ul", "10*9/l"): (1.0, 0.0),  # the same count, SI spelling
    ("*", "ug/l", "ng/ml"): (1.0, 0.0),
    ("*", "mmol/l", "meq/l"): (1.0, 0.0),  # only monovalent ions are mmol/L in the catalogue
    ("glucose", "mg/dl", "mmol/l"): (18.016, 0.0),  # molar mass 180.16 g/mol
    ("creatinine", "mg/dl", "umol/l"): (1.0 / 88.42, 0.0),  # 88.42 umol/L per mg/dL
    ("creatinine", "mg/dl", "mmol/l"): (1000.0 / 88.42, 0.0),
    ("bilirubin", "mg/dl", "umol/l"): (1.0 / 17.104, 0.0),  # 17.104 umol/L per mg/dL
    ("magnesium", "mmol/l", "mg/dl"): (1.0 / 2.431, 0.0),
    ("magnesium", "mmol/l", "meq/l"): (0.5, 0.0),  # divalent
    ("lactate", "mmol/l", "mg/dl"): (1.0 / 9.008, 0.0),
}
# Human spellings FHIR senders put in `unit` when they leave `code` out.
_ALIASES = {"mmhg": "mm[hg]", "°c": "cel", "degc": "cel", "°f": "[degf]", "degf": "[degf]",
            "bpm": "/min", "beats/min": "/min", "breaths/min": "/min", "1/min": "/min",
            "lb": "[lb_av]", "lbs": "[lb_av]", "in": "[in_i]", "ph": "[ph]", "": "1"}
# How a message writes a unit code of the table.
_SHOWN = {"[degf]": "°F", "k": "K", "%": "%", "1": "a fraction", "g": "g", "[lb_av]": "lb",
          "m": "m", "[in_i]": "in", "kpa": "kPa", "mmol/l": "mmol/L", "umol/l": "µmol/L",
          "mg/dl": "mg/dL", "meq/l": "mEq/L"}
_ANNOTATION = re.compile(r"\{[^{}]*\}")


def unit_key(code: str) -> str:
    """Comparable form of a UCUM code: no annotations, lower case, aliases resolved."""
    key = _ANNOTATION.sub("", code.strip()).lower()
    key = _ALIASES.get(key, key)
    return "1" if key in ("", "/1") else key


def annotation_only(code: str) -> bool:
    """A UCUM code that is only an annotation ("{saturation}", "{score}"): it names what was
    measured, not a unit, so it says nothing about the scale (UCUM reads it as 1)."""
    return bool(_ANNOTATION.search(code)) and not _ANNOTATION.sub("", code).strip()


def convert(variable: str, canonical: str, value: float, unit: str) -> float | None:
    """`value` in `unit` -> the canonical unit `canonical` of `variable` (both UCUM codes);
    None when no conversion is defined."""
    want, given = unit_key(canonical), unit_key(unit)
    if given == want:
        return value
    affine = _CONVERSIONS.get((variable, want, given)) or _CONVERSIONS.get(("*", want, given))
    if affine is None:
        return None
    scale, shift = affine
    return value * scale + shift


def alternatives(variable: str, canonical: str, value: float) -> list[tuple[str, float]]:
    """(unit as shown, value in the canonical unit) for each other unit `value` may have
    been sent in, where the conversion changes the number (not a mere respelling)."""
    return [(shown, value * scale + shift)
            for shown, scale, shift in _other_units(variable, canonical)]


@lru_cache(maxsize=256)
def _other_units(variable: str, canonical: str) -> tuple[tuple[str, float, float], ...]:
    """(unit as shown, scale, shift) of `alternatives`: one table scan per variable (a
    batch may word hundreds of atypical values)."""
    want = unit_key(canonical)
    return tuple((_SHOWN.get(given, given), scale, shift)
                 for (name, to, given), (scale, shift) in _CONVERSIONS.items()
                 if to == want and name in (variable, "*") and (scale, shift) != (1.0, 0.0))
