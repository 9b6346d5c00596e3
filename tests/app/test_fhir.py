"""POST /v1/predict/fhir: hand-written FHIR R4 Bundles score exactly like /v1/predict."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.fhir import to_canonical
from tests.app.support import USER

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
T0 = "2026-11-22T08:30:00+01:00"
T1 = "2026-11-22T09:45:00+01:00"
T2 = "2026-11-22T12:10:00+01:00"


def quantity(value: float, code: str) -> dict[str, Any]:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


def obs(oid: str, code: str, time: str, value: float, unit: str,
        category: str = "vital-signs", subject: str = "Patient/p1") -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{oid}", "resource": {
        "resourceType": "Observation", "id": oid, "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": subject}, "effectiveDateTime": time,
        "valueQuantity": quantity(value, unit)}}


def bp_panel(oid: str, time: str, sbp: float, dbp: float) -> dict[str, Any]:
    return {"resource": {
        "resourceType": "Observation", "id": oid, "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": time,
        "component": [
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
             "valueQuantity": quantity(sbp, "mm[Hg]")},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
             "valueQuantity": quantity(dbp, "mm[Hg]")},
        ]}}


def labs(si: bool) -> list[dict[str, Any]]:
    """Glucose 9.4 mmol/L = 169.3504 mg/dL; creatinine 186 umol/L = 186 / 88.42 mg/dL."""
    if si:
        return [obs("glu", "2345-7", T1, 9.4, "mmol/L", "laboratory"),
                obs("cre", "2160-0", T1, 186, "umol/L", "laboratory"),
                obs("lac", "2524-7", T2, 3.9, "mmol/L", "laboratory")]
    return [obs("glu", "2345-7", T1, 9.4 * 18.016, "mg/dL", "laboratory"),
            obs("cre", "2160-0", T1, 186 / 88.42, "mg/dL", "laboratory"),
            obs("lac", "2524-7", T2, 3.9, "mmol/L", "laboratory")]


def bundle(si: bool = True, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:p1", "resource": {
            "resourceType": "Patient", "id": "p1", "gender": "female",
            "birthDate": "1955-12-01"}},
        obs("hr0", "8867-4", T0, 118, "/min"),
        obs("rr0", "9279-1", T0, 24, "/min"),
        obs("spo", "59408-5", T0, 93, "%"),
        obs("fio", "3150-0", T0, 40, "%"),
        obs("tmp", "8310-5", T0, 101.1, "[degF]"),
        bp_panel("bp1", T1, 96, 58),
        obs("hr2", "8867-4", T2, 126, "{beats}/min"),
        *labs(si),
        *(extra or []),
    ]}


# The /v1/predict request the Bundle stands for, in canonical units written out by hand.
V1_REQUEST: dict[str, Any] = {
    "patient_id": "Patient/p1",
    "static": {"age": 70, "sex": "female"},  # born 1955-12-01, first observation 2026-11-22
    "observations": [
        {"time": T0, "variable": "heart_rate", "value": 118},
        {"time": T0, "variable": "resp_rate", "value": 24},
        {"time": T0, "variable": "spo2", "value": 93},
        {"time": T0, "variable": "fio2", "value": 0.40},
        {"time": T0, "variable": "temperature", "value": (101.1 - 32) / 1.8},
        {"time": T1, "variable": "sbp", "value": 96},
        {"time": T1, "variable": "dbp", "value": 58},
        {"time": T2, "variable": "heart_rate", "value": 126},
        {"time": T1, "variable": "glucose", "value": 169.3504},
        {"time": T1, "variable": "creatinine", "value": 186 / 88.42},
        {"time": T2, "variable": "lactate", "value": 3.9},
    ],
}


def fhir(client: TestClient, body: object, status: int = 200, **params: str) -> Any:
    r = client.post("/v1/predict/fhir", json=body, headers=USER, params=params)
    assert r.status_code == status, r.text
    return r.json()


def error(client: TestClient, body: object, **params: str) -> str:
    out = fhir(client, body, 422, **params)
    message: str = out["error"]["message"]
    return message


def assert_same_prediction(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["risk"]["probability"] == pytest.approx(b["risk"]["probability"], abs=1e-6)
    assert a["prognosis"]["los_days"] == pytest.approx(b["prognosis"]["los_days"], abs=1e-6)
    assert a["news2"] == b["news2"]
    assert [(x["start"], x["end"]) for x in a["explanation"]["attention"]] == \
        [(x["start"], x["end"]) for x in b["explanation"]["attention"]]
    assert [x["weight"] for x in a["explanation"]["attention"]] == pytest.approx(
        [x["weight"] for x in b["explanation"]["attention"]], abs=1e-6)
    assert a["model"] == b["model"]


def test_bundle_scores_like_the_equivalent_v1_request(client: TestClient) -> None:
    v1 = client.post("/v1/predict", json=V1_REQUEST, headers=USER)
    assert v1.status_code == 200, v1.text
    out = fhir(client, bundle(si=True))
    assert_same_prediction(out, v1.json())
    assert out["patient_id"] == "Patient/p1"
    assert {v["variable"] for v in out["explanation"]["variables"]} == {
        o["variable"] for o in V1_REQUEST["observations"]}


def test_labs_in_si_and_conventional_units_give_the_same_risk(client: TestClient) -> None:
    assert_same_prediction(fhir(client, bundle(si=True)), fhir(client, bundle(si=False)))


def test_fahrenheit_differs_from_the_same_number_in_celsius(client: TestClient) -> None:
    # 101.1 with code Cel is impossible: the unit really is read, not ignored.
    body = bundle()
    body["entry"][5]["resource"]["valueQuantity"] = quantity(101.1, "Cel")
    message = error(client, body)
    assert message.startswith("entry[5]") and "temperature 101.1 is impossible" in message


def test_unknown_loinc_code_is_a_422_naming_it(client: TestClient) -> None:
    message = error(client, bundle(extra=[obs("x", "99999-9", T1, 1.0, "1")]))
    assert "99999-9" in message and "entry[11]" in message


def test_unknown_component_code_is_a_422_naming_it(client: TestClient) -> None:
    body = bundle()
    body["entry"][6]["resource"]["component"][1]["code"]["coding"][0]["code"] = "12345-6"
    message = error(client, body)
    assert "12345-6" in message and "entry[6].component[1]" in message


@pytest.mark.parametrize(("code", "unit", "value"), [
    ("2345-7", "g", 1.0),            # glucose: a mass is not a concentration
    ("8867-4", "mm[Hg]", 80.0),      # heart rate in a pressure unit
    ("2160-0", "mg/L/h", 1.0),       # creatinine: no conversion defined
])
def test_unconvertible_unit_is_a_422_naming_unit_and_variable(
        client: TestClient, code: str, unit: str, value: float) -> None:
    message = error(client, bundle(extra=[obs("x", code, T1, value, unit, "laboratory")]))
    assert repr(unit) in message and "entry[11]" in message
    variable = {"2345-7": "glucose", "8867-4": "heart_rate", "2160-0": "creatinine"}[code]
    assert variable in message


def test_missing_value_or_time_names_the_entry(client: TestClient) -> None:
    body = bundle()
    del body["entry"][2]["resource"]["valueQuantity"]
    assert error(client, body).startswith("entry[2]: has no valueQuantity")
    body = bundle()
    del body["entry"][3]["resource"]["effectiveDateTime"]
    assert error(client, body).startswith("entry[3]: has no effectiveDateTime")
    body = bundle()
    body["entry"][3]["resource"]["effectiveDateTime"] = "2026-11-22T08:30:00"
    assert "entry[3]" in (message := error(client, body)) and "no UTC offset" in message


def test_subjects_that_disagree_are_a_422(client: TestClient) -> None:
    message = error(client, bundle(extra=[obs("x", "8867-4", T1, 90, "/min",
                                              subject="Patient/p2")]))
    assert "Patient/p2" in message and "entry[11]" in message


def test_subject_must_be_the_bundles_patient(client: TestClient) -> None:
    body = bundle()
    body["entry"][0]["resource"]["id"] = "someone-else"
    body["entry"][0]["fullUrl"] = "urn:uuid:someone-else"
    assert "is not the Bundle's Patient" in error(client, body)


def test_entered_in_error_observations_are_skipped(client: TestClient) -> None:
    wrong = obs("bad", "8867-4", T2, 250, "/min")
    wrong["resource"]["status"] = "entered-in-error"
    out = fhir(client, bundle(extra=[wrong]))
    assert_same_prediction(out, fhir(client, bundle()))
    assert any("entered-in-error skipped" in w for w in out["warnings"])


def test_other_categories_and_non_bundles_are_refused(client: TestClient) -> None:
    assert "social-history" in error(client, bundle(extra=[
        obs("s", "8867-4", T1, 80, "/min", category="social-history")]))
    assert "Bundle" in error(client, {"resourceType": "Observation"})
    assert "Bundle.type" in error(client, {"resourceType": "Bundle", "type": "document"})
    assert "no Observation" in error(client, {"resourceType": "Bundle", "type": "batch"})
    assert "must be a JSON object" in error(client, {"resourceType": "Bundle",
                                                     "type": "batch", "entry": [3]})


def test_impossible_values_after_conversion_name_the_entry(client: TestClient) -> None:
    message = error(client, bundle(extra=[obs("x", "2345-7", T1, 400, "mmol/L")]))
    assert message.startswith("entry[11]: glucose") and "impossible" in message


def test_model_query_picks_the_model(client: TestClient) -> None:
    out = fhir(client, bundle(), model="other")
    assert out["model"]["name"] == "other"
    assert fhir(client, bundle(), 404, model="nope")["error"]["kind"] == "unknown_model"


def test_risk_assessment_format(client: TestClient) -> None:
    plain = fhir(client, bundle())
    r = client.post("/v1/predict/fhir", json=bundle(), headers=USER,
                    params={"format": "riskassessment"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/fhir+json"
    ra = r.json()
    assert ra["resourceType"] == "RiskAssessment" and ra["status"] == "final"
    assert ra["subject"] == {"reference": "Patient/p1"}
    assert ra["occurrenceDateTime"] == T2  # as of the latest observation
    (prediction,) = ra["prediction"]
    assert prediction["outcome"]["text"] == "in-hospital death"
    assert prediction["probabilityDecimal"] == plain["risk"]["probability"]
    basis = {b["reference"] for b in ra["basis"]}
    assert {"Observation/hr0", "Observation/bp1", "Observation/cre"} <= basis
    # A FHIR client asking for FHIR gets FHIR; the Content-Type may be FHIR's too.
    headers = {**USER, "Accept": "application/fhir+json",
               "Content-Type": "application/fhir+json"}
    r2 = client.post("/v1/predict/fhir", content=json.dumps(bundle()), headers=headers)
    assert r2.status_code == 200 and r2.json() == ra


def test_encounter_start_is_hour_zero(client: TestClient) -> None:
    admitted = "2026-11-22T06:00:00+01:00"
    encounter = {"resource": {"resourceType": "Encounter", "id": "e1",
                              "period": {"start": admitted}}}
    v1 = client.post("/v1/predict", json={**V1_REQUEST, "admitted_at": admitted}, headers=USER)
    assert v1.status_code == 200, v1.text
    out = fhir(client, bundle(extra=[encounter]))
    assert_same_prediction(out, v1.json())
    assert out["explanation"]["attention"][0]["start"] == "2026-11-22T08:00:00+01:00"


def test_an_observation_before_the_encounter_start_names_its_entry(client: TestClient) -> None:
    encounter = {"resource": {"resourceType": "Encounter", "id": "e1",
                              "period": {"start": "2026-11-22T09:00:00+01:00"}}}
    message = error(client, bundle(extra=[encounter]))
    assert message.startswith("entry[1]: effectiveDateTime 2026-11-22T08:30:00+01:00 is before "
                              "Encounter.period.start 2026-11-22T09:00:00+01:00 (entry[11])")
    assert "observations[" not in message and "admitted_at" not in message


def test_a_date_without_a_time_of_day_asks_for_a_date_time(client: TestClient) -> None:
    body = bundle()
    body["entry"][3]["resource"]["effectiveDateTime"] = "2026-11-20"
    message = error(client, body)
    assert message.startswith("entry[3]: effectiveDateTime '2026-11-20' is a date alone")
    assert "send a date-time with UTC offset" in message and "T00:00:00 has" not in message
    encounter = {"resource": {"resourceType": "Encounter", "period": {"start": "2026-11-22"}}}
    assert error(client, bundle(extra=[encounter])).startswith(
        "entry[11]: Encounter.period.start '2026-11-22' is a date alone")
    encounter = {"resource": {"resourceType": "Encounter", "period": {"start": 5}}}
    assert error(client, bundle(extra=[encounter])) == (
        "entry[11]: Encounter.period.start must be a dateTime string with UTC offset")


def test_censored_values_are_scored_at_their_bound_with_a_warning(client: TestClient) -> None:
    low = obs("x", "1975-2", T1, 0.2, "mg/dL", "laboratory")
    low["resource"]["valueQuantity"]["comparator"] = "<"
    out = fhir(client, bundle(extra=[low]))
    assert "entry[11]: bilirubin < 0.2 scored as 0.2" in out["warnings"]


def test_risk_assessment_without_a_patient_still_has_a_subject(client: TestClient) -> None:
    body = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {**obs("a", "8867-4", T0, 90, "/min")["resource"]}}]}
    del body["entry"][0]["resource"]["subject"]
    ra = fhir(client, body, format="riskassessment")
    assert ra["subject"] == {"display": "patient of the submitted Bundle"}
    assert ra["basis"] == [{"reference": "Observation/a"}]


def test_fhir_route_needs_a_key(client: TestClient) -> None:
    r = client.post("/v1/predict/fhir", json=bundle())
    assert r.status_code == 401


def test_openapi_example_bundle_is_accepted(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/predict/fhir"]["post"]["requestBody"]["content"]
    example = content["application/json"]["examples"]["bundle"]["value"]
    out = fhir(client, copy.deepcopy(example))
    assert 0 < out["risk"]["probability"] < 1


@pytest.mark.parametrize(("variable", "value", "unit", "expected"), [
    ("temperature", 212.0, "[degF]", 100.0),
    ("temperature", 310.15, "K", 37.0),
    ("temperature", 37.0, "Cel", 37.0),
    ("glucose", 10.0, "mmol/L", 180.16),
    ("creatinine", 88.42, "umol/L", 1.0),
    ("creatinine", 0.08842, "mmol/L", 1.0),
    ("fio2", 40.0, "%", 0.4),
    ("fio2", 0.4, "1", 0.4),
    ("spo2", 95.0, "%", 95.0),
    ("heart_rate", 80.0, "{beats}/min", 80.0),
    ("sbp", 16.0, "kPa", 120.0098),
    ("gcs", 14.0, None, 14.0),
    ("weight", 154.0, "[lb_av]", 69.8532),
])
def test_to_canonical_converts_ucum_units(variable: str, value: float, unit: str | None,
                                          expected: float) -> None:
    assert to_canonical(variable, value, unit) == pytest.approx(expected, rel=1e-6)


def test_to_canonical_refuses_what_it_cannot_convert() -> None:
    with pytest.raises(ValueError, match="'mmol/L' cannot be converted to 'mg/dL' for bun"):
        to_canonical("bun", 5.0, "mmol/L")
    with pytest.raises(ValueError, match="heart_rate has no unit"):
        to_canonical("heart_rate", 80.0, None)
    # an annotation alone names what was measured, not a scale: not read as a fraction
    with pytest.raises(ValueError, match="spo2 has no unit"):
        to_canonical("spo2", 93.0, "{saturation}")
    assert to_canonical("gcs", 14.0, "{score}") == 14.0  # a score has no scale anyway


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(bundle())[1:]


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(where=st.sampled_from(PATHS), value=JSON)
def test_any_corrupted_bundle_gets_a_200_or_a_4xx(client: TestClient, where: tuple[Any, ...],
                                                 value: Any) -> None:
    body = bundle()
    node: Any = body
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    r = client.post("/v1/predict/fhir", json=body, headers=USER)
    assert r.status_code in (200, 404, 422), r.text
    if r.status_code != 200:
        assert r.json()["error"]["message"]


def test_a_bundle_sent_as_plain_text_is_a_415_naming_the_json_types(client: TestClient) -> None:
    r = client.post("/v1/predict/fhir", content=json.dumps(bundle()),
                    headers={**USER, "Content-Type": "text/plain"})
    assert r.status_code == 415, r.text
    assert "'Content-Type: application/json'" in r.json()["error"]["message"]
