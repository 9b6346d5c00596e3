"""What-if bodies of POST /v1/predict: treatment plans in, their answers out (DESIGN.md,
"HTTP API", what-if).

A plan is validated before torch runs, like an observation: each row an intervention of
the catalogue (a measurement or an unknown name is refused, naming it) with a possible
dose (outside the catalogue's possible range: refused, naming the value and the unit; a
state such as mech_vent is 0 or 1), in the request's own kind of time, at or after the last
observation, at most one row per intervention and time. A plan says everything
given from the decision on: an empty plan is "no further intervention", and a vasopressor
or ventilation running in the history stops at the decision unless the plan continues it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from app.timebase import MAX_HOURS, Timebase, parse_time
from models.catalogue import CATALOGUE, INTERVENTIONS

__all__ = [
    "MAX_PLANS",
    "MAX_PLAN_ROWS",
    "EffectEstimate",
    "MapPoint",
    "PlanForecast",
    "PlanRisk",
    "PlanStep",
    "Support",
    "WhatIfAnswer",
    "WhatIfPlan",
    "check_plan_times",
]

MAX_PLANS = 8  # plans per request: each is a forward pass of every ensemble member
MAX_PLAN_ROWS = 500  # rows per plan: far more than 48 hourly bins can hold distinct

_Hours = Annotated[float, Field(ge=0, le=MAX_HOURS, description="hours since admission")]
_Moment = Annotated[AwareDatetime, Field(description="ISO-8601 date-time with UTC offset")]
_Finite = Annotated[float, Field(allow_inf_nan=False)]


class PlanStep(BaseModel):
    """One intervention of a plan, in the catalogue's canonical unit."""

    model_config = ConfigDict(extra="forbid")

    time: _Hours | _Moment = Field(description="when it is given (or a rate or state set): "
                                   "the request's kind of time, at or after the last "
                                   "observation", examples=[12.0])
    variable: str = Field(min_length=1, max_length=64, description="an intervention: "
                          + ", ".join(INTERVENTIONS), examples=["antibiotics"])
    value: _Finite = Field(description="dose (event), rate (held until the next row) or "
                           "state, in the catalogue's unit", examples=[1])

    @field_validator("time", mode="before")
    @classmethod
    def _time(cls, value: object) -> float | datetime:
        return parse_time(value)

    @field_validator("value", mode="before")
    @classmethod
    def _number(cls, value: object) -> object:
        if isinstance(value, bool | str):
            raise ValueError(f"value must be a number, not {type(value).__name__}")
        return value

    @field_validator("variable")
    @classmethod
    def _intervention(cls, name: str) -> str:
        var = CATALOGUE.get(name)
        if var is None:
            raise ValueError(f"unknown intervention {name[:64]!r}; a plan holds: "
                             f"{', '.join(INTERVENTIONS)}")
        if var.kind != "intervention":
            raise ValueError(f"{name} is a {var.kind}, not an intervention; a plan holds: "
                             f"{', '.join(INTERVENTIONS)}")
        return name

    @model_validator(mode="after")
    def _possible(self) -> PlanStep:
        """A dose, rate or state the catalogue allows; a state is off (0) or on (1), as the
        grid carries it forward: 0.5 of a ventilator is no plan anyone can give."""
        var = CATALOGUE[self.variable]
        lo, hi = var.possible
        where = f"{self.variable} at {_when(self.time)}"
        if var.mode == "state" and self.value not in (0, 1):
            raise ValueError(f"{where}: state {self.value:g} is impossible: {self.variable} is "
                             "0 (off) or 1 (on)")
        if not lo <= self.value <= hi:
            what = "rate" if var.mode == "rate" else "dose"
            raise ValueError(f"{where}: {what} {self.value:g} is impossible (expected "
                             f"{lo:g}-{hi:g} {var.shown_unit})")
        return self


def _when(time: float | datetime) -> str:
    return time.isoformat() if isinstance(time, datetime) else f"hour {time:g}"


class WhatIfPlan(BaseModel):
    """A plan to compare with no further intervention."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=128, examples=["antibiotics now"])
    interventions: list[PlanStep] = Field(
        default_factory=list, max_length=MAX_PLAN_ROWS,
        description="everything given from the decision on (empty: no further intervention); "
                    "one row per intervention and time")

    @field_validator("interventions")
    @classmethod
    def _one_row_per_time(cls, steps: list[PlanStep]) -> list[PlanStep]:
        """Two rows of one intervention at one time (vasopressor 0.1 and 0.3 at hour 12)
        are ambiguous: the grid would keep one of them without saying which."""
        seen: dict[tuple[str, float | datetime], int] = {}
        for j, step in enumerate(steps):
            first = seen.setdefault((step.variable, step.time), j)
            if first != j:
                raise ValueError(
                    f"rows {first} and {j} both set {step.variable} at "
                    f"{_when(step.time)} ({steps[first].value:g} and {step.value:g}): which is "
                    "meant is ambiguous; send one row per intervention and time")
        return steps


def check_plan_times(plans: Sequence[WhatIfPlan], times: Sequence[float | datetime],
                     timebase: Timebase) -> None:
    """Plan times in the observations' kind of time, none before the last observation;
    ValueError naming the first offending row."""
    last = max(timebase.hours(t) for t in times)
    iso = timebase.kind == "iso"
    for i, plan in enumerate(plans):
        for j, step in enumerate(plan.interventions):
            where = f"what_if[{i}].interventions[{j}].time"
            if isinstance(step.time, datetime) != iso:
                raise ValueError(f"{where} is {'hours' if iso else 'an ISO-8601 date-time'} "
                                 f"but the observations use "
                                 f"{'ISO-8601 date-times' if iso else 'hours'}; one request "
                                 "uses one kind of time")
            hours = timebase.hours(step.time)
            if hours < last:
                shown = step.time.isoformat() if isinstance(step.time, datetime) \
                    else f"{hours:g} h"
                raise ValueError(f"{where} {shown} is before the last observation (hour "
                                 f"{last:g} since admission): a plan starts after the history "
                                 "it is asked about")


# --- answers -----------------------------------------------------------------------------


class PlanRisk(BaseModel):
    probability: float = Field(ge=0, le=1, description="risk of in-hospital death")


class EffectEstimate(BaseModel):
    risk_difference: float = Field(description="risk under the plan minus risk under no "
                                               "further intervention")
    interval: tuple[float, float] = Field(description="conformal interval of the difference")
    nominal_coverage: float = Field(ge=0, le=1, description="the interval's target coverage")


class Support(BaseModel):
    propensity: float = Field(ge=0, le=1, description="how often patients with this history "
                              "got this plan in the training data; 0 for a plan they never got")
    plan: str | None = Field(description="the training data's plan it matches, if any")


class MapPoint(BaseModel):
    time: float | str = Field(description="in the request's kind of time")
    value: float = Field(description="mean arterial pressure, mmHg")


class PlanForecast(BaseModel):
    map: list[MapPoint] = Field(description="MAP over the hours after the decision")


class WhatIfAnswer(BaseModel):
    label: str
    risk: PlanRisk = Field(description="under the plan")
    baseline: PlanRisk = Field(description="under no further intervention, same networks")
    effect: EffectEstimate
    support: Support
    forecast: PlanForecast | None
    warnings: list[str]
