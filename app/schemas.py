"""Request and response bodies of the HTTP API (DESIGN.md, "HTTP API").

Requests are validated here, before torch runs: every variable against the catalogue
(unknown names and impossible values are refused with the variable, value and expected
unit), every time as hours >= 0 or an ISO-8601 date-time with offset, one kind of time per
request. Limits that depend on settings (observations per patient, patients per batch) are
checked by the service.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Annotated, Any, Literal, overload

import numpy as np
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from app.hints import unknown_variable
from app.timebase import MAX_HOURS, Timebase, parse_time
from app.whatif_schemas import MAX_PLANS, WhatIfAnswer, WhatIfPlan, check_plan_times
from models.catalogue import CATALOGUE, STATICS, check_value
from models.features import factorize

__all__ = [
    "Answer",
    "AttentionBin",
    "BatchRequest",
    "BatchResponse",
    "Contribution",
    "ErrorBody",
    "ErrorDetail",
    "ErrorResponse",
    "Explanation",
    "ForecastPoint",
    "ForecastResponse",
    "ForecastSeries",
    "GridInfo",
    "Health",
    "LoadFailure",
    "ModelInfo",
    "ModelList",
    "ModelRef",
    "News2",
    "Observation",
    "ObservationColumns",
    "ObservationRows",
    "plain_values",
    "POSSIBLE",
    "STATES",
    "PredictRequest",
    "PredictResponse",
    "Prognosis",
    "Readiness",
    "Risk",
    "StaticDescriptors",
]

Hours = Annotated[float, Field(ge=0, le=MAX_HOURS, description="hours since admission")]
Moment = Annotated[AwareDatetime, Field(description="ISO-8601 date-time with UTC offset")]
Finite = Annotated[float, Field(allow_inf_nan=False)]

EXAMPLE_REQUEST: dict[str, Any] = {
    "patient_id": "opaque-123",
    "static": {"age": 71, "sex": "female", "weight": 68},
    "observations": [
        {"time": 0.5, "variable": "heart_rate", "value": 118},
        {"time": 0.5, "variable": "resp_rate", "value": 24},
        {"time": 0.5, "variable": "spo2", "value": 93},
        {"time": 0.5, "variable": "sbp", "value": 98},
        {"time": 0.5, "variable": "temperature", "value": 38.4},
        {"time": 2.0, "variable": "lactate", "value": 3.9},
        {"time": 3.0, "variable": "heart_rate", "value": 124},
        {"time": 3.5, "variable": "antibiotics", "value": 1},
    ],
}
EXAMPLE_ISO_REQUEST: dict[str, Any] = {
    "patient_id": "opaque-456",
    "admitted_at": "2026-11-22T08:00:00+01:00",
    "static": {"age": 58, "sex": "male"},
    "observations": [
        {"time": "2026-11-22T08:30:00+01:00", "variable": "heart_rate", "value": 96},
        {"time": "2026-11-22T09:10:00+01:00", "variable": "map", "value": 64},
        {"time": "2026-11-22T11:00:00+01:00", "variable": "creatinine", "value": 2.1},
    ],
}


class Observation(BaseModel):
    """One measurement or intervention, in the catalogue's canonical unit."""

    model_config = ConfigDict(extra="forbid")

    time: Hours | Moment = Field(
        description="hours since admission (>= 0) or an ISO-8601 date-time with offset; "
        "one kind per request",
        examples=[2.5, "2026-11-22T09:10:00+01:00"],
    )
    variable: str = Field(
        min_length=1, max_length=64, description="catalogue name", examples=["heart_rate"]
    )
    value: Finite = Field(description="value in the catalogue's canonical unit", examples=[118])

    @field_validator("time", mode="before")
    @classmethod
    def _time(cls, value: object) -> float | datetime:
        return parse_time(value)

    @field_validator("value", mode="before")
    @classmethod
    def _number(cls, value: object) -> object:
        # JSON true/"118" are not measurements: refuse rather than coerce a typo into a value
        if isinstance(value, bool | str):
            raise ValueError(f"value must be a number, not {type(value).__name__}")
        return value

    @field_validator("variable")
    @classmethod
    def _known(cls, name: str) -> str:
        var = CATALOGUE.get(name)
        if var is None:
            # its own error type: the error handler adds the variables of the model asked
            raise PydanticCustomError("unknown_variable", "{message}",
                                      {"message": unknown_variable(name)})
        if var.kind == "static":
            raise ValueError(f"{name} is a static descriptor: send it in 'static', not as an "
                             "observation")
        return name

    @model_validator(mode="after")
    def _possible(self) -> Observation:
        ok, message = check_value(self.variable, self.value)
        if not ok:
            raise ValueError(message)
        return self


# Possible range of every variable an observation may name (not the statics).
POSSIBLE = {name: var.possible for name, var in CATALOGUE.items() if var.kind != "static"}
# Observations whose value is a state, 0 or 1 only (mechanical ventilation).
STATES = frozenset(name for name in POSSIBLE if CATALOGUE[name].mode == "state")


class ObservationColumns(BaseModel):
    """The observations as three lists of equal length, row i being (time[i], variable[i],
    value[i]): the same rows as the list form, in a body less than half the size, that a
    bulk client builds straight from its arrays. Validated as those rows (an error names
    the row index i, as for the list form)."""

    model_config = ConfigDict(extra="forbid")

    time: list[Hours | Moment] = Field(
        description="per row: hours since admission or an ISO-8601 date-time with offset",
        examples=[[0.5, 0.5, 2.0]])
    variable: list[str] = Field(description="per row: catalogue name",
                                examples=[["heart_rate", "sbp", "lactate"]])
    value: list[Finite] = Field(description="per row: value in the catalogue's canonical unit",
                                examples=[[118, 98, 3.9]])


_COLUMNS = tuple(ObservationColumns.model_fields)  # time, variable, value
_OBSERVATION_FIELDS = frozenset(Observation.model_fields)
_TIME, _VARIABLE, _VALUE = itemgetter("time"), itemgetter("variable"), itemgetter("value")
_NUMBERS = frozenset({float, int})  # not bool: JSON true is not a measurement


class ObservationRows(Sequence[Observation]):
    """A request's observations as columns: what scoring reads, without an object per row.

    Plain rows (see `_plain_columns`; nearly every request) are checked column by column
    with numpy and never become objects unless something reads them one by one (what-if
    plans, tests): validating a 256-patient batch of ~56,000 rows row by row in Python
    cost more than scoring it. Rows that need the per-field validators are validated one
    by one as before (`of_rows`), which names the row and the problem.
    """

    __slots__ = ("_rows", "catalogue", "code", "hours", "names", "values")
    __hash__ = None  # type: ignore[assignment]  # compares by content, like the list it stands for

    def __init__(self, names: list[str], code: np.ndarray, values: np.ndarray,
                 hours: np.ndarray | None, rows: list[Observation] | None = None,
                 catalogue: np.ndarray | None = None) -> None:
        self.names = names  # the distinct variables, in order of first appearance
        self.code = code  # (n,) int64: position of each row's variable in `names`
        self.values = values  # (n,) float64, request order
        self.hours = hours  # (n,) float64 when every time is hours; None with date-times
        self._rows = rows
        # (n,) int64: position of each row's variable in the catalogue (CATALOGUE's order),
        # where the decoder had it (app.plainbody); scoring looks it up otherwise
        self.catalogue = catalogue

    @classmethod
    def of_rows(cls, rows: list[Observation]) -> ObservationRows:
        """The columns of rows the per-field validators built."""
        names, code = factorize([o.variable for o in rows])
        times = [o.time for o in rows]
        hours = (np.array(times, dtype=np.float64)
                 if not any(isinstance(t, datetime) for t in times) else None)
        return cls(names, code, np.fromiter((o.value for o in rows), np.float64, len(rows)),
                   hours, rows)

    @property
    def variables(self) -> list[str]:
        """The variable of each row, request order."""
        return [self.names[c] for c in self.code.tolist()]

    def times(self) -> list[float | datetime]:
        """The time of each row as validated: hours (float) or an aware datetime."""
        if self._rows is None and self.hours is not None:
            return list(self.hours.tolist())
        return [o.time for o in self.rows()]

    def rows(self) -> list[Observation]:
        """The rows as `Observation`s (built on first use when the columns came first)."""
        if self._rows is None:
            new, set_attribute = Observation.__new__, object.__setattr__
            built = []
            for time, name, value in zip(self.times(), self.variables, self.values.tolist(),
                                         strict=True):
                observation = new(Observation)
                set_attribute(observation, "__dict__",
                              {"time": time, "variable": name, "value": value})
                set_attribute(observation, "__pydantic_fields_set__", set(_OBSERVATION_FIELDS))
                set_attribute(observation, "__pydantic_extra__", None)
                set_attribute(observation, "__pydantic_private__", None)
                built.append(observation)
            self._rows = built
        return self._rows

    def __len__(self) -> int:
        return len(self.code)

    @overload
    def __getitem__(self, index: int) -> Observation: ...
    @overload
    def __getitem__(self, index: slice) -> list[Observation]: ...
    def __getitem__(self, index: int | slice) -> Observation | list[Observation]:
        return self.rows()[index]

    def __iter__(self) -> Iterator[Observation]:
        return iter(self.rows())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ObservationRows | list | tuple):
            return self.rows() == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"ObservationRows({self.rows()!r})"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler
                                     ) -> CoreSchema:
        # Validated as a non-empty list of Observation (columns become those rows first);
        # documented as that list or ObservationColumns; held as columns; written as rows.
        rows = core_schema.list_schema(handler.generate_schema(Observation), min_length=1)
        return core_schema.no_info_wrap_validator_function(
            cls._validate, rows, serialization=core_schema.plain_serializer_function_ser_schema(
                lambda value: value.rows(), return_schema=rows),
            json_schema_input_schema=core_schema.union_schema(
                [rows, handler.generate_schema(ObservationColumns)]))

    @classmethod
    def _validate(cls, value: object, handler: ValidatorFunctionWrapHandler) -> ObservationRows:
        if isinstance(value, ObservationRows):
            return value
        if isinstance(value, dict):
            return cls._of_columns(value, handler)
        plain = _plain_columns(value)
        return plain if plain is not None else cls.of_rows(list(handler(value)))

    @classmethod
    def _of_columns(cls, columns: dict[str, Any], handler: ValidatorFunctionWrapHandler
                    ) -> ObservationRows:
        """The column form (`ObservationColumns`): checked as its rows would be, so that
        errors and answers are the list form's (a bad row is named by its index)."""
        missing = [name for name in _COLUMNS if name not in columns]
        # (a lone surrogate in a key, which JSON allows, is shown escaped: the message
        # must encode as UTF-8)
        unknown = sorted(str(name).encode("utf-8", "backslashreplace").decode()
                         for name in columns if name not in _COLUMNS)
        if missing or unknown:
            found = ([f"missing: {', '.join(missing)}"] if missing else []) + (
                [f"unknown: {', '.join(unknown)[:200]}"] if unknown else [])
            raise ValueError("as columns, observations holds exactly the lists time, variable "
                             f"and value ({'; '.join(found)})")
        lists = [columns[name] for name in _COLUMNS]
        if not all(type(column) is list for column in lists):
            raise ValueError("as columns, observations.time, .variable and .value are lists")
        if len({len(column) for column in lists}) > 1:
            raise ValueError("as columns, observations.time, .variable and .value have one "
                             "entry per row: lengths "
                             f"{', '.join(str(len(column)) for column in lists)} differ")
        plain = _plain_lists(*lists)
        if plain is not None:
            return plain
        rows = [dict(zip(_COLUMNS, row, strict=True)) for row in zip(*lists, strict=True)]
        return cls.of_rows(list(handler(rows)))


def _plain_columns(rows: object) -> ObservationRows | None:
    """The observations as columns when every row is plain, checked without the per-field
    validators; None when any row needs them (they then run and name the problem).

    Plain: exactly time, variable and value; time a number of hours in range, variable a
    catalogue measurement or intervention, value a number (not a bool) in its possible
    range. For such rows the validators would give float(time), the name and float(value),
    which is what the columns hold (tests/app/test_validation.py compares both ways).
    Each check is one pass over the rows in C (map, set, numpy); a name is looked at once.
    """
    if type(rows) is not list or not rows:
        return None
    try:
        if set(map(len, rows)) != {3}:  # a row that is not a dict fails here or just below
            return None
        times = list(map(_TIME, rows))  # KeyError: another key than these three
        variables = list(map(_VARIABLE, rows))
        values = list(map(_VALUE, rows))
    except (KeyError, TypeError):
        return None
    return _plain_lists(times, variables, values)


def plain_values(hours: np.ndarray, values: np.ndarray, low: np.ndarray, high: np.ndarray,
                 state: np.ndarray) -> bool:
    """Whether every row's time is in range and its value possible for its variable
    (`low`, `high` (n,), the catalogue's possible range; `state` (n,), a 0/1 variable): the
    row checks of the fast paths, which otherwise leave the rows to the validators. NaN
    fails every comparison, so it is not plain either. (Each row's bounds come as two
    arrays: numpy gathers rows of an (n, 2) table several times slower.)"""
    return bool(((hours >= 0) & (hours <= MAX_HOURS) & (values >= low) & (values <= high)
                 & (~state | (values == 0) | (values == 1))).all())


def _plain_lists(times: list[Any], variables: list[Any], values: list[Any]
                 ) -> ObservationRows | None:
    """`_plain_columns` of rows given as three lists of equal length (the column form)."""
    if not times:
        return None
    try:
        names, code = factorize(variables)
    except TypeError:  # an unhashable "variable"
        return None
    if (not set(map(type, times)) <= _NUMBERS or not set(map(type, values)) <= _NUMBERS
            or not all(type(name) is str and name in POSSIBLE for name in names)):
        return None
    try:
        hours = np.fromiter(times, np.float64, len(times))
        numbers = np.fromiter(values, np.float64, len(values))
    except OverflowError:  # an integer beyond float: the validators refuse it
        return None
    low, high = np.array([POSSIBLE[name] for name in names], dtype=np.float64).T
    state = np.array([name in STATES for name in names], dtype=bool)[code]
    if not plain_values(hours, numbers, low[code], high[code], state):
        return None
    return ObservationRows(names, code, numbers, hours)


class StaticDescriptors(BaseModel):
    """Per-patient descriptors (catalogue kind `static`); any may be left out."""

    model_config = ConfigDict(extra="forbid")

    age: Finite | None = Field(None, description="years", examples=[71])
    sex: Literal["female", "male"] | None = None
    weight: Finite | None = Field(None, description="kg", examples=[68])
    height: Finite | None = Field(None, description="cm", examples=[165])

    @field_validator("age", "weight", "height", mode="before")
    @classmethod
    def _number(cls, value: object) -> object:
        # As for observation values: JSON true would become age 1 and "71" a silent coercion
        if isinstance(value, bool | str):
            raise ValueError(f"must be a number, not {type(value).__name__}")
        return value

    @model_validator(mode="after")
    def _possible(self) -> StaticDescriptors:
        for name in ("age", "weight", "height"):
            value = getattr(self, name)
            if value is not None:
                ok, message = check_value(name, value)
                if not ok:
                    raise ValueError(message)
        return self

    def numeric(self) -> dict[str, float | str]:
        """The descriptors given, by catalogue name (the fields' values as validated: what
        model_dump gives for these plain fields, without its serializer, ~3 us a patient
        several times per request)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


# The fields above must be exactly the catalogue's statics: a new static needs a field here.
if set(StaticDescriptors.model_fields) != set(STATICS):
    raise ImportError(f"StaticDescriptors fields differ from the catalogue's statics {STATICS}")


class PredictRequest(BaseModel):
    """One patient's series (long format) and descriptors."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_REQUEST]})

    patient_id: str | None = Field(None, max_length=256, description="opaque, echoed back")
    model: str | None = Field(
        None, min_length=1, max_length=128, description="model name; default when left out"
    )
    admitted_at: Moment | None = Field(
        None, description="hour 0 for ISO-8601 times; else the earliest observation"
    )
    static: StaticDescriptors | None = None
    observations: ObservationRows = Field(
        description="any order; at least one; at most VITALCAST_MAX_OBSERVATIONS; a list "
                    "of rows, or the same rows as columns (ObservationColumns)"
    )
    what_if: list[WhatIfPlan] | None = Field(
        None, min_length=1, max_length=MAX_PLANS,
        description="treatment plans to compare with no further intervention (needs a model "
                    "trained with --task effect)")

    @field_validator("admitted_at", mode="before")
    @classmethod
    def _admitted(cls, value: object) -> object:
        if value is None:
            return None
        moment = parse_time(value, "admitted_at")
        if not isinstance(moment, datetime):
            raise ValueError("admitted_at must be an ISO-8601 date-time with offset")
        return moment

    @model_validator(mode="after")
    def _one_clock(self) -> PredictRequest:
        if self.observations.hours is not None:  # hours only
            kinds = {False}
        else:
            kinds = {isinstance(o.time, datetime) for o in self.observations}
        if len(kinds) > 1:
            first_iso = next(i for i, o in enumerate(self.observations)
                             if isinstance(o.time, datetime) != isinstance(
                                 self.observations[0].time, datetime))
            raise ValueError(
                "observations mix hours and ISO-8601 date-times (observations[0] and "
                f"observations[{first_iso}]); one request uses one kind of time"
            )
        if kinds == {False} and self.admitted_at is not None:
            raise ValueError("admitted_at goes with ISO-8601 times; hours are already hours "
                             "since admission, so leave admitted_at out")
        if kinds == {True}:
            base = self.timebase()
            for i, obs in enumerate(self.observations):
                hours = base.hours(obs.time)
                if hours < 0:
                    raise ValueError(f"observations[{i}].time {obs.time.isoformat()} is "  # type: ignore[union-attr]
                                     "before admitted_at")
                if hours > MAX_HOURS:
                    raise ValueError(f"observations[{i}].time lies more than {MAX_HOURS:g} h "
                                     "after hour 0")
        return self

    @model_validator(mode="after")
    def _plans_follow_history(self) -> PredictRequest:
        if self.what_if:
            check_plan_times(self.what_if, self.observations.times(), self.timebase())
        return self

    def timebase(self) -> Timebase:
        if self.observations.hours is not None:
            return Timebase("hours")
        return Timebase.of(self.observations.times(), self.admitted_at)


class BatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"patients": [EXAMPLE_REQUEST, EXAMPLE_ISO_REQUEST]}]},
    )

    patients: list[PredictRequest] = Field(
        min_length=1, description="at most VITALCAST_MAX_BATCH; answered in the same order"
    )


# --- responses -------------------------------------------------------------------------------


class ModelRef(BaseModel):
    name: str
    version: str = Field(description="UTC creation time, YYYYMMDDTHHMMSSZ")
    architecture: str
    bidirectional: bool


class Risk(BaseModel):
    probability: float = Field(ge=0, le=1, description="calibrated probability")
    outcome: Literal["in_hospital_death"] = "in_hospital_death"


class Prognosis(BaseModel):
    los_days: float = Field(ge=0, description="expected length of stay, days")


class News2(BaseModel):
    score: int = Field(ge=0, description="NEWS2 from the latest value of each parameter")
    parts: dict[str, int] = Field(description="points per parameter (0 where missing)")
    missing: list[str] = Field(description="parameters without a value: the score is then a "
                                           "lower bound")


class AttentionBin(BaseModel):
    start: float | str = Field(description="bin start in the request's kind of time")
    end: float | str
    weight: float = Field(ge=0, le=1)


class ForecastPoint(BaseModel):
    start: float | str = Field(description="grid bin start in the request's kind of time")
    end: float | str
    value: float = Field(description="forecast value in the variable's catalogue unit")


class ForecastSeries(BaseModel):
    variable: str
    unit: str = Field(description="the catalogue unit, as a person writes it")
    points: list[ForecastPoint] = Field(
        description="one per grid bin after the last bin holding an observation")


class ForecastResponse(BaseModel):
    patient_id: str | None
    model: ModelRef
    forecast: list[ForecastSeries] = Field(description="one per variable the model forecasts")
    warnings: list[str]


class Contribution(BaseModel):
    variable: str
    contribution: float = Field(description="signed; positive raises the risk")


class Explanation(BaseModel):
    attention: list[AttentionBin] = Field(description="one bin per grid step from the first to "
                                                      "the last bin holding an observation")
    variables: list[Contribution] | None = Field(
        description="sorted by |contribution|, largest first; null when the request asked "
                    "for none (?contributions=false)")


class PredictResponse(BaseModel):
    patient_id: str | None
    model: ModelRef
    risk: Risk
    prognosis: Prognosis
    news2: News2
    explanation: Explanation
    warnings: list[str]
    what_if: list[WhatIfAnswer] | None = Field(
        None, description="one answer per requested plan, in request order")


# A PredictResponse as the JSON-ready values it serialises to (fields in order): what the
# scoring path builds and the routes encode with orjson, without a pydantic object per bin
# (its explanation's attention list is already encoded: an orjson.Fragment).
Answer = dict[str, Any]


class BatchResponse(BaseModel):
    results: list[PredictResponse]


class GridInfo(BaseModel):
    step_hours: float
    n_steps: int


class ModelInfo(BaseModel):
    name: str
    version: str = Field(description="the version serving")
    versions: list[str] = Field(description="versions on disk, newest last")
    default: bool = Field(description="scores requests that name no model")
    architecture: str
    bidirectional: bool
    task: str
    features: list[str]
    static_features: list[str]
    grid: GridInfo
    temperature: float
    metrics: dict[str, Any]
    created: str
    code_version: str
    fingerprint: str


class LoadFailure(BaseModel):
    name: str
    version: str | None
    message: str


class ModelList(BaseModel):
    default_model: str
    models: list[ModelInfo]
    errors: list[LoadFailure] = Field(description="checkpoints that failed to load, skipped")


class ErrorDetail(BaseModel):
    loc: str
    message: str


class ErrorBody(BaseModel):
    kind: str
    message: str
    index: int | None = Field(None, description="0-based patient index in a batch")
    details: list[ErrorDetail] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    models: list[str]
