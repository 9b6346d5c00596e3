"""What-if answers: a request's plans -> risk under each, effect with interval, support,
MAP forecast (DESIGN.md, "HTTP API", what-if).

The decision is taken at the bin after the last observation (D); the history is every row
of the request, the plan every row of a `what_if` item, moved to the decision bin when it
falls in the last observation's bin (a plan cannot act before the decision). Each plan is
answered against no further intervention, by the checkpoint's own what-if networks
(models/effect.py), so `risk` and `baseline` come from the same networks; the top-level
`risk.probability` is the risk model's, which reads the whole series.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app.errors import InvalidRequest, ModelFailure
from app.timebase import Timebase
from app.whatif_schemas import (
    EffectEstimate,
    MapPoint,
    PlanForecast,
    PlanRisk,
    Support,
    WhatIfAnswer,
    WhatIfPlan,
)
from models.checkpoint import Checkpoint, CheckpointError
from models.effect import EffectModel, has_effect, load_effect
from models.features import tensorise_rows

__all__ = ["SUPPORT_THRESHOLD", "PlanQuestion", "answer_what_if", "prepare_what_if"]

SUPPORT_THRESHOLD = 0.05  # below this propensity a plan gets a warning (DESIGN.md)


@dataclass(frozen=True)
class PlanQuestion:
    """A request's plans on the effect model's grid."""

    model: EffectModel
    decision: int  # bin D: the first bin after the last observation
    labels: tuple[str, ...]
    plans: np.ndarray  # (Q, T, I) raw units, bin k = D + k
    notes: tuple[tuple[str, ...], ...]  # per plan, warnings found while preparing it


def prepare_what_if(plans: Sequence[WhatIfPlan], ckpt: Checkpoint, hours: np.ndarray,
                    timebase: Timebase) -> PlanQuestion:
    """Checks that need the model; InvalidRequest naming the problem."""
    if not has_effect(ckpt):
        raise InvalidRequest(
            f"what_if: model {ckpt.name!r} has no treatment-effect model; ask a model trained "
            "with `python -m training.train --task effect` (GET /v1/models lists each "
            "model's task)")
    try:
        model = load_effect(ckpt)
    except CheckpointError as e:
        raise ModelFailure(f"model {ckpt.name}/{ckpt.version}: {e}") from None
    step, n_steps = ckpt.grid.step_hours, ckpt.grid.n_steps
    last = float(hours.max())
    decision = int(math.floor(last / step)) + 1
    if decision > n_steps - 1:
        raise InvalidRequest(
            f"what_if: the last observation (hour {last:g}) leaves no hour of model "
            f"{ckpt.name!r}'s {n_steps * step:g} h window to plan; what-if answers need "
            f"a history ending before hour {(n_steps - 1) * step:g}")
    end = (n_steps - decision) * step  # hours from the decision to the window's end
    grids, notes = [], []
    for plan in plans:
        rel = np.array([max(timebase.hours(s.time) - decision * step, 0.0)
                        for s in plan.interventions], dtype=np.float64)
        keep = rel < end
        names = [s.variable for s, k in zip(plan.interventions, keep, strict=True) if k]
        values = np.array([s.value for s in plan.interventions], dtype=np.float64)[keep]
        grid = tensorise_rows(np.zeros(len(names), np.int64), rel[keep], names, values, [{}],
                              ckpt.normalizer, ckpt.grid).interventions[0]
        grids.append(grid.astype(np.float64))
        dropped = int((~keep).sum())
        notes.append((f"{dropped} row(s) after hour {n_steps * step:g} lie past the model's "
                      "window and were left out",) if dropped else ())
    return PlanQuestion(model, decision, tuple(p.label for p in plans),
                        np.stack(grids), tuple(notes))


def _warnings(q: PlanQuestion, label: str, propensity: float, plan_class: int,
              step: float) -> list[str]:
    out = []
    if plan_class < 0:
        out.append(f"plan {label!r} matches none of the plans the training data show after "
                   f"a decision ({', '.join(q.model.plans)}): its propensity is 0 and the "
                   "estimate extrapolates")
    elif propensity < SUPPORT_THRESHOLD:
        out.append(f"plan {label!r} is barely supported by the training data: propensity "
                   f"{propensity:.3f} < {SUPPORT_THRESHOLD} (patients with this history "
                   "rarely got it), so the estimate extrapolates")
    lo, hi = q.model.decision_range
    if not lo <= q.decision <= hi:
        out.append(f"the decision at hour {q.decision * step:g} lies outside the hours the "
                   f"what-if model was trained on ({lo * step:g}-{hi * step:g} h): the "
                   "estimate extrapolates")
    return out


def answer_what_if(q: PlanQuestion, ckpt: Checkpoint, timebase: Timebase, hours: np.ndarray,
                   variables: Sequence[str], values: np.ndarray,
                   statics: Mapping[str, float | str | None]) -> list[WhatIfAnswer]:
    """Risk, effect, interval, support and MAP forecast of each plan. Blocking (torch)."""
    model, step = q.model, ckpt.grid.step_hours
    hist = tensorise_rows(np.zeros(len(hours), np.int64), hours, variables, values, [statics],
                          ckpt.normalizer, ckpt.grid)
    decision = np.array([q.decision])
    none = model.canonical_plans(decision)[0, :1]  # (1, T, I): no further intervention
    plans = np.concatenate([none, q.plans])  # (1 + Q, T, I)
    # Each distinct plan runs once: identical plans (an empty one and "none") get identical
    # numbers, not numbers that differ by the float noise of another batch row.
    unique, which = np.unique(plans.reshape(len(plans), -1), axis=0, return_inverse=True)
    which = which.reshape(-1)
    out = model.outcomes(hist, decision, unique.reshape(1, len(unique), *plans.shape[1:]))
    risk = out.risk[0, which]
    if not np.isfinite(risk).all():
        raise ModelFailure(f"model {ckpt.name}/{ckpt.version}: the what-if networks returned "
                           "a non-finite risk")
    classes = out.plan_class[0, which]
    intervals = model.intervals(risk - risk[0], risk, np.full_like(risk, risk[0]), classes)
    propensity = out.propensity_of_plans()[0, which]
    maps = None if out.map is None else out.map[0, which]
    answers = []
    for j, label in enumerate(q.labels, start=1):
        forecast = None
        if maps is not None:
            steps = min(model.cfg.map_steps, ckpt.grid.n_steps - q.decision)
            forecast = PlanForecast(map=[
                MapPoint(time=timebase.label((q.decision + k + 1) * step),
                         value=round(float(maps[j, k]), 1)) for k in range(steps)])
        cls = int(classes[j])
        lo, hi = (float(v) for v in intervals[j])
        answers.append(WhatIfAnswer(
            label=label, risk=PlanRisk(probability=float(np.clip(risk[j], 0.0, 1.0))),
            baseline=PlanRisk(probability=float(np.clip(risk[0], 0.0, 1.0))),
            effect=EffectEstimate(risk_difference=float(risk[j] - risk[0]),
                                  interval=(max(lo, -1.0), min(hi, 1.0)),
                                  nominal_coverage=model.nominal),
            support=Support(propensity=float(propensity[j]),
                            plan=model.plans[cls] if cls >= 0 else None),
            forecast=forecast,
            warnings=[*q.notes[j - 1], *_warnings(q, label, float(propensity[j]), cls, step)]))
    return answers
