"""FHIR R4 in and out: a Bundle of Observations -> the same `PredictRequest` as /v1/predict,
and a scored response -> a `RiskAssessment`.

Nothing here validates values or times a second time: codes are mapped to catalogue names
through the catalogue's LOINC column, quantities are converted to the catalogue's canonical
UCUM unit, and the result goes through `PredictRequest` like any /v1 request. Its errors come
back with `observations[k]` rewritten to the Bundle entry the observation came from.

Read: `Observation` (status `entered-in-error`/`cancelled` skipped; `valueQuantity`;
`effectiveDateTime`, `effectiveInstant` or `effectivePeriod`; a blood-pressure panel as
`component`s), `Patient` (`birthDate` -> age at the first observation, `gender` -> sex) and
`Encounter` (`period.start` -> hour 0). Other resources are skipped with a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pydantic import ValidationError

from app.errors import InvalidRequest
from app.schemas import PredictRequest, PredictResponse
from app.timebase import parse_time
from models.catalogue import CATALOGUE
from models.units import annotation_only, convert, unit_key

__all__ = [
    "BUNDLE_TYPES",
    "LOINC",
    "LOINC_SYSTEM",
    "PANEL_CODES",
    "UCUM_SYSTEM",
    "FhirRequest",
    "bundle_to_request",
    "risk_assessment",
    "to_canonical",
]

LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
# Bundles that carry resources to read; a searchset is what a FHIR server answers to
# `GET Observation?patient=...`, so an integration can forward it untouched.
BUNDLE_TYPES = ("collection", "batch", "transaction", "searchset")
# Observation categories scored; GCS is a `survey` in US Core, so that one is read too.
CATEGORIES = ("vital-signs", "laboratory", "survey")
SKIPPED_STATUSES = ("entered-in-error", "cancelled")
# Blood pressure panels (vital-signs profile 85354-9; 55284-4 "blood pressure systolic and
# diastolic"): no value of their own, systolic 8480-6 / diastolic 8462-4 as components.
PANEL_CODES = ("85354-9", "55284-4")

# LOINC code -> catalogue name: measurements and the numeric statics (sex comes from
# Patient.gender). Interventions have no LOINC code.
LOINC: dict[str, str] = {
    v.loinc: v.name for v in CATALOGUE.values()
    if v.loinc and v.kind != "intervention" and v.name != "sex"
}
_STATIC_OBSERVATIONS = ("age", "weight", "height")

def to_canonical(variable: str, value: float, unit: str | None) -> float:
    """`value` in `unit` (UCUM code) -> the catalogue's canonical unit of `variable`.

    Raises ValueError naming the unit and the variable when no conversion is defined.
    A missing unit is only accepted for dimensionless variables (GCS, pH, FiO2).
    """
    var = CATALOGUE[variable]
    if unit is None or not unit.strip() or annotation_only(unit):  # no scale given
        if unit_key(var.unit) in ("1", "[ph]"):
            return value
        raise ValueError(f"{variable} has no unit; send valueQuantity.code in UCUM, e.g. "
                         f"{var.unit!r}")
    out = convert(variable, var.unit, value, unit)
    if out is None:
        raise ValueError(f"unit {unit[:40]!r} cannot be converted to {var.unit!r} for "
                         f"{variable}")
    return out


@dataclass
class FhirRequest:
    """A Bundle read into a /v1 request, and what the response needs to point back."""

    request: PredictRequest
    subject: str | None  # the patient reference all observations agree on
    basis: list[str]  # references of the observations used ("Observation/<id>")
    latest: str | None  # effective time of the latest observation, as sent
    warnings: list[str] = field(default_factory=list)  # skipped resources


def _fail(where: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: {message}")


def _obj(value: object, where: str, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, f"{what} must be a JSON object")
    return value


def _list(value: object, where: str, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(where, f"{what} must be a JSON array")
    return value


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _loinc_codes(concept: object, where: str) -> list[str]:
    """LOINC codes of a CodeableConcept, in the sender's order."""
    codings = _list(_obj(concept, where, "code").get("coding"), where, "code.coding")
    codes = []
    for coding in codings:
        if isinstance(coding, Mapping) and coding.get("system") == LOINC_SYSTEM:
            code = _str(coding.get("code"))
            if code:
                codes.append(code.strip())
    if not codes:
        raise _fail(where, f"code has no LOINC coding (system {LOINC_SYSTEM})")
    return codes


def _check_category(resource: Mapping[str, Any], where: str) -> None:
    codes: list[str] = []
    for concept in _list(resource.get("category"), where, "category"):
        if isinstance(concept, Mapping):
            for coding in _list(concept.get("coding"), where, "category.coding"):
                if isinstance(coding, Mapping) and coding.get("system") == CATEGORY_SYSTEM:
                    codes.append(str(coding.get("code")))
    if codes and not set(codes) & set(CATEGORIES):
        raise _fail(where, f"category {', '.join(codes)[:80]} is not scored; send "
                    f"{' or '.join(CATEGORIES)} observations")


def _quantity(holder: Mapping[str, Any],
              where: str) -> tuple[float, str | None, str | None]:
    """(value, UCUM code, comparator) of a valueQuantity."""
    quantity = holder.get("valueQuantity")
    if quantity is None:
        raise _fail(where, "has no valueQuantity (a numeric value with a UCUM unit)")
    quantity = _obj(quantity, where, "valueQuantity")
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, "valueQuantity.value must be a number")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond any float
        raise _fail(where, "valueQuantity.value is out of range") from None
    system = quantity.get("system")
    code = _str(quantity.get("code"))
    if system is not None and system != UCUM_SYSTEM:
        raise _fail(where, f"valueQuantity.system must be {UCUM_SYSTEM}")
    if code is None:  # no coded unit: the human-readable one may still be plain UCUM
        code = _str(quantity.get("unit"))
    comparator = quantity.get("comparator")
    return number, code, (comparator if isinstance(comparator, str) else None)


def _moment(text: str, where: str, what: str = "effectiveDateTime") -> datetime:
    """An ISO-8601 date-time with offset, or a 422 naming where it came from."""
    try:
        moment = parse_time(text, what)
    except ValueError as e:
        raise _fail(where, str(e)) from None
    if not isinstance(moment, datetime):  # parse_time reads a number as hours
        raise _fail(where, f"{what} must be an ISO-8601 date-time with offset")
    return moment


def _effective(resource: Mapping[str, Any], where: str) -> str:
    moment = resource.get("effectiveDateTime", resource.get("effectiveInstant"))
    if moment is None and isinstance(resource.get("effectivePeriod"), Mapping):
        period = resource["effectivePeriod"]
        moment = period.get("end", period.get("start"))  # a collection period ends at the value
    if not isinstance(moment, str):
        raise _fail(where, "has no effectiveDateTime (ISO-8601 with offset)")
    _moment(moment, where)
    return moment


@dataclass
class _Reader:
    """Collects observations from the Bundle's entries, entry by entry."""

    observations: list[dict[str, Any]] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)  # entry location of each observation
    statics: dict[str, tuple[str, float]] = field(default_factory=dict)  # name -> (time, value)
    subjects: dict[str, str] = field(default_factory=dict)  # reference -> first entry naming it
    patient_refs: set[str] = field(default_factory=set)
    birth_date: str | None = None
    gender: str | None = None
    admitted_at: str | None = None
    encounter: str = "Encounter"  # the entry admitted_at came from
    basis: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    used: int = 0  # values read so far, observations and statics

    def entry(self, i: int, entry: object) -> None:
        where = f"entry[{i}]"
        resource = _obj(_obj(entry, where, "entry").get("resource"), where, "entry.resource")
        kind = resource.get("resourceType")
        if kind == "Observation":
            self.observation(where, resource, _str(_obj(entry, where, "entry").get("fullUrl")))
        elif kind == "Patient":
            self.patient(where, resource, _str(_obj(entry, where, "entry").get("fullUrl")))
        elif kind == "Encounter":
            period = resource.get("period")
            start = period.get("start") if isinstance(period, Mapping) else None
            if start is not None:
                if not isinstance(start, str):
                    raise _fail(where, "Encounter.period.start must be a dateTime string "
                                       "with UTC offset")
                _moment(start, where, "Encounter.period.start")
                self.admitted_at, self.encounter = start, where
        else:
            self.warnings.append(f"{where}: {str(kind)[:40]} resource skipped")

    def patient(self, where: str, resource: Mapping[str, Any], full_url: str | None) -> None:
        if self.patient_refs:
            raise _fail(where, "a second Patient: one Bundle describes one patient")
        if isinstance(resource.get("id"), str):
            self.patient_refs.add(f"Patient/{resource['id']}")
        if full_url:
            self.patient_refs.add(full_url)
        self.birth_date = _str(resource.get("birthDate"))
        gender = resource.get("gender")
        self.gender = gender if gender in ("female", "male") else None

    def observation(self, where: str, resource: Mapping[str, Any],
                    full_url: str | None) -> None:
        status = resource.get("status")
        if status in SKIPPED_STATUSES:
            self.warnings.append(f"{where}: Observation with status {status} skipped")
            return
        subject = resource.get("subject")
        if isinstance(subject, Mapping) and isinstance(subject.get("reference"), str):
            self.subjects.setdefault(subject["reference"], where)
        _check_category(resource, where)
        codes = _loinc_codes(resource.get("code"), where)
        time = _effective(resource, where)
        used = self.used
        panel = next((c for c in codes if c in PANEL_CODES), None)
        known = next((c for c in codes if c in LOINC), None)
        if known is not None and "valueQuantity" in resource:
            self.value(where, LOINC[known], time, resource)
        elif panel is not None or (known is None and resource.get("component")):
            components = _list(resource.get("component"), where, "component")
            if not components:
                raise _fail(where, f"panel {panel} has no component")
            for j, component in enumerate(components):
                at = f"{where}.component[{j}]"
                component = _obj(component, at, "component")
                if "dataAbsentReason" in component and "valueQuantity" not in component:
                    continue  # the sender says this one was not measured
                (code,) = _known(_loinc_codes(component.get("code"), at), at)
                self.value(at, LOINC[code], time, component)
        elif known is None:
            raise _fail(where, f"LOINC code {codes[0][:20]!r} is not a variable vitalcast "
                        "knows (see GET /v1/models for the variables a model uses)")
        elif "dataAbsentReason" in resource:
            self.warnings.append(f"{where}: Observation without a value (dataAbsentReason) "
                                 "skipped")
        else:
            self.value(where, LOINC[known], time, resource)  # names the missing value
        if self.used > used:
            reference = (f"Observation/{resource['id']}" if isinstance(resource.get("id"), str)
                         else full_url)
            if reference:
                self.basis.append(reference)

    def value(self, where: str, variable: str, time: str, holder: Mapping[str, Any]) -> None:
        value, unit, comparator = _quantity(holder, where)
        try:
            value = to_canonical(variable, value, unit)
        except ValueError as e:
            raise _fail(where, str(e)) from None
        if comparator is not None:  # a censored lab value ("< 0.2"): the bound is the best guess
            self.warnings.append(f"{where}: {variable} {comparator[:4]} {value:g} scored as "
                                 f"{value:g}")
        self.used += 1
        if variable in _STATIC_OBSERVATIONS:  # the latest one wins
            previous = self.statics.get(variable)
            if previous is None or _moment(previous[0], where) <= _moment(time, where):
                self.statics[variable] = (time, value)
            return
        self.observations.append({"time": time, "variable": variable, "value": value})
        self.origins.append(where)


def _known(codes: list[str], where: str) -> tuple[str]:
    for code in codes:
        if code in LOINC:
            return (code,)
    raise _fail(where, f"LOINC code {codes[0][:20]!r} is not a variable vitalcast knows")


def _age(birth_date: str, at: datetime, where: str) -> float:
    parts = birth_date.split("-")
    try:
        born = date(int(parts[0]), int(parts[1]) if len(parts) > 1 else 1,
                    int(parts[2][:2]) if len(parts) > 2 else 1)
    except (ValueError, IndexError):
        raise _fail(where, f"Patient.birthDate {birth_date[:20]!r} is not a FHIR date "
                    "(YYYY, YYYY-MM or YYYY-MM-DD)") from None
    day = at.date()
    return float(day.year - born.year - ((day.month, day.day) < (born.month, born.day)))


def _origin_of(loc: tuple[int | str, ...], origins: list[str]) -> str:
    if len(loc) >= 2 and loc[0] == "observations" and isinstance(loc[1], int):
        return origins[loc[1]] if loc[1] < len(origins) else "entry"
    if loc and loc[0] == "observations":
        return "Bundle"
    if loc and loc[0] in ("static", "admitted_at", "patient_id"):
        return {"static": "Patient", "admitted_at": "Encounter.period.start",
                "patient_id": "subject"}[str(loc[0])]
    return "Bundle"


def bundle_to_request(bundle: object, model: str | None = None) -> FhirRequest:
    """A FHIR R4 Bundle (parsed JSON) -> the /v1 request it stands for.

    Raises InvalidRequest (422) naming the entry and the problem: an unknown LOINC code, a
    unit without a conversion, a missing value or time, subjects that disagree, and any
    value or time the /v1 request validation refuses.
    """
    body = _obj(bundle, "Bundle", "the body")
    if body.get("resourceType") != "Bundle":
        raise _fail("resourceType", "the body must be a FHIR Bundle (resourceType 'Bundle')")
    if body.get("type") not in BUNDLE_TYPES:
        raise _fail("type", f"Bundle.type {str(body.get('type'))[:40]!r} is not read; send "
                    f"one of {', '.join(BUNDLE_TYPES)}")
    reader = _Reader()
    for i, entry in enumerate(_list(body.get("entry"), "entry", "Bundle.entry")):
        reader.entry(i, entry)
    if len(reader.subjects) > 1:
        (a, first), (b, second) = list(reader.subjects.items())[:2]
        raise _fail(second, f"subject {b[:80]!r} differs from {a[:80]!r} in {first}: one "
                    "Bundle describes one patient")
    subject = next(iter(reader.subjects), None)
    if subject is not None and reader.patient_refs and subject not in reader.patient_refs:
        raise _fail(reader.subjects[subject], f"subject {subject[:80]!r} is not the Bundle's "
                    "Patient")
    if subject is None and reader.patient_refs:
        subject = sorted(reader.patient_refs, key=lambda r: not r.startswith("Patient/"))[0]
    if not reader.observations:
        raise _fail("entry", "the Bundle holds no Observation with a value to score")

    static: dict[str, Any] = {k: v for k, (_, v) in reader.statics.items()}
    if reader.gender is not None:
        static["sex"] = reader.gender
    times = [_moment(o["time"], where) for o, where in zip(reader.observations, reader.origins,
                                                          strict=True)]
    start = (_moment(reader.admitted_at, reader.encounter, "Encounter.period.start")
             if reader.admitted_at else min(times))
    for time, observation, where in zip(times, reader.observations, reader.origins,
                                        strict=True):
        if time < start:
            raise _fail(where, f"effectiveDateTime {observation['time'][:40]} is before "
                        f"Encounter.period.start {reader.admitted_at} ({reader.encounter}): "
                        "every observation scored is of this encounter")
    if reader.birth_date is not None and "age" not in static:
        static["age"] = _age(reader.birth_date, start, "Patient")
    latest: str = reader.observations[max(range(len(times)), key=times.__getitem__)]["time"]
    payload: dict[str, Any] = {
        "patient_id": subject[:256] if subject else None,
        "model": model,
        "admitted_at": reader.admitted_at,
        "static": static or None,
        "observations": reader.observations,
    }
    try:
        request = PredictRequest.model_validate(payload)
    except ValidationError as e:
        problems = []
        for error in e.errors()[:3]:
            loc = tuple(error.get("loc", ()))
            message = str(error.get("msg", "")).removeprefix("Value error, ")
            problems.append(f"{_origin_of(loc, reader.origins)}: {message}")
        raise InvalidRequest("; ".join(problems)) from None
    return FhirRequest(request, subject, reader.basis, latest, reader.warnings)


def risk_assessment(fhir: FhirRequest, response: PredictResponse) -> dict[str, Any]:
    """The scored response as a FHIR R4 RiskAssessment resource."""
    model = response.model
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "method": {"text": f"vitalcast {model.name}/{model.version} ({model.architecture})"},
        "prediction": [{
            "outcome": {"text": "in-hospital death"},
            "probabilityDecimal": response.risk.probability,
        }],
        "note": [{"text": f"expected length of stay {response.prognosis.los_days:.1f} days; "
                          f"NEWS2 {response.news2.score}"}]
        + [{"text": w} for w in response.warnings],
    }
    # RiskAssessment.subject is mandatory: a Bundle that names nobody gets a display-only one.
    resource["subject"] = ({"reference": fhir.subject} if fhir.subject
                           else {"display": "patient of the submitted Bundle"})
    if fhir.latest:
        # The assessment holds as of the latest observation it saw (deterministic, unlike
        # the wall-clock time of the request).
        resource["occurrenceDateTime"] = fhir.latest
    if fhir.basis:
        resource["basis"] = [{"reference": r} for r in fhir.basis]
    return resource
