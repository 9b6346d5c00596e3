"""POST /v1/predict/fhir: a FHIR R4 Bundle of Observations, scored like /v1/predict.

The Bundle becomes the same `PredictRequest` a /v1/predict client would send (`app.fhir`),
and goes through the same `prepare`/`predict` path. The answer is the /v1/predict response,
or a FHIR `RiskAssessment` with `?format=riskassessment` or `Accept: application/fhir+json`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.deps import MetricsDep, RegistryDep, SettingsDep
from app.fhir import bundle_to_request, risk_assessment
from app.jsonbody import StrictJsonRoute
from app.schemas import ErrorResponse, PredictResponse
from app.security import UserKey
from app.service import predict, prepare

__all__ = ["FHIR_JSON", "router"]

router = APIRouter(prefix="/v1/predict", tags=["fhir"], route_class=StrictJsonRoute)

FHIR_JSON = "application/fhir+json"
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in (
        (401, "missing or unknown API key"),
        (404, "unknown model"),
        (413, "body over VITALCAST_MAX_BODY_BYTES"),
        (415, "body not sent as JSON: send 'Content-Type: application/json' (or "
              "application/fhir+json)"),
        (422, "the message names the Bundle entry and the problem: unknown LOINC code, "
              "unit without a conversion, missing value or time, impossible value"),
        (503, "no model loaded, or the model named failed to load (the message says why)"),
    )
}
_RISK_ASSESSMENT_SCHEMA: dict[str, Any] = {
    "type": "object", "description": "FHIR R4 RiskAssessment",
    "required": ["resourceType", "status", "prediction"],
    "properties": {"resourceType": {"const": "RiskAssessment"}, "status": {"type": "string"},
                   "prediction": {"type": "array", "items": {"type": "object"}}},
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the /v1/predict response, or a FHIR RiskAssessment",
          "content": {FHIR_JSON: {"schema": _RISK_ASSESSMENT_SCHEMA}}},
    **_ERRORS,
}


def _observation(i: int, code: str, display: str, time: str, value: float, unit: str,
                 category: str = "vital-signs") -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000000{i}", "resource": {
        "resourceType": "Observation", "id": f"obs-{i}", "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "subject": {"reference": "Patient/example"}, "effectiveDateTime": time,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                          "code": unit}}}


EXAMPLE_BUNDLE: dict[str, Any] = {
    "resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "example", "gender": "female",
                      "birthDate": "1955-03-14"}},
        _observation(1, "8867-4", "Heart rate", "2026-11-22T08:30:00+01:00", 118, "/min"),
        _observation(2, "8310-5", "Body temperature", "2026-11-22T08:30:00+01:00", 101.1,
                     "[degF]"),
        {"resource": {
            "resourceType": "Observation", "id": "bp-1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9",
                                 "display": "Blood pressure panel"}]},
            "subject": {"reference": "Patient/example"},
            "effectiveDateTime": "2026-11-22T09:10:00+01:00",
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                 "valueQuantity": {"value": 96, "unit": "mmHg",
                                   "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                 "valueQuantity": {"value": 58, "unit": "mmHg",
                                   "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            ]}},
        _observation(3, "2345-7", "Glucose", "2026-11-22T10:00:00+01:00", 9.4, "mmol/L",
                     "laboratory"),
        _observation(4, "2160-0", "Creatinine", "2026-11-22T10:00:00+01:00", 186, "umol/L",
                     "laboratory"),
    ],
}

Format = Literal["vitalcast", "riskassessment"]


@router.post(
    "/fhir", response_model=PredictResponse, responses=_RESPONSES,
    summary="Risk from a FHIR R4 Bundle of LOINC-coded Observations",
    description="Observations coded in LOINC with UCUM quantities (converted to the "
    "catalogue's unit: [degF] -> Cel, glucose and creatinine mmol/L or umol/L -> mg/dL, FiO2 "
    "% -> fraction, ...); blood pressure as a 85354-9 panel with 8480-6/8462-4 components; "
    "Patient.birthDate/gender as age and sex; Encounter.period.start as hour 0. "
    "`?format=riskassessment` or `Accept: application/fhir+json` answers a RiskAssessment.",
)
async def predict_fhir(
    bundle: Annotated[dict[str, Any], Body(
        media_type="application/json",
        openapi_examples={"bundle": {"summary": "vitals, BP panel, SI labs, °F",
                                     "value": EXAMPLE_BUNDLE}})],
    http: Request, registry: RegistryDep, settings: SettingsDep, metrics: MetricsDep,
    _: UserKey,
    model: Annotated[str | None, Query(min_length=1, max_length=128,
                                       description="model name; default when left out")] = None,
    format: Annotated[Format | None, Query(  # noqa: A002 - the query parameter's name
        description="riskassessment: answer a FHIR RiskAssessment")] = None,
) -> Response | PredictResponse:
    fhir = bundle_to_request(bundle, model)
    ckpt = registry.get(fhir.request.model)  # this request's model, whatever a reload does
    job = prepare(fhir.request, ckpt, settings.max_observations)
    (response,) = await run_in_threadpool(predict, [job])
    metrics.predictions.labels(response.model.name, response.model.version).inc()
    response.warnings.extend(fhir.warnings)
    wants_fhir = FHIR_JSON in http.headers.get("accept", "")
    if format == "riskassessment" or (format is None and wants_fhir):
        return JSONResponse(risk_assessment(fhir, response), media_type=FHIR_JSON)
    return response
