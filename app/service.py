"""Scoring: validated requests -> long-format frames -> `models.predict.score` -> responses.

The network sees exactly the preprocessing it was trained with because the frames go
through `models/` (tensorisation, normalisation and calibration live there). This module
only translates: request times to hours since admission, and the window grid back into
the request's own kind of time.

A batch is scored with one call per model (one batched forward pass), not per patient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from app.errors import InvalidRequest, ModelFailure, ServiceError
from app.schemas import (
    AttentionBin,
    Contribution,
    Explanation,
    ModelRef,
    News2,
    PredictRequest,
    PredictResponse,
    Prognosis,
    Risk,
)
from app.timebase import Timebase
from models.catalogue import CATALOGUE, STATICS, check_value
from models.checkpoint import Checkpoint
from models.news2 import NEWS2_PARAMETERS, news2, news2_missing
from models.predict import Prediction, score

__all__ = ["Job", "predict", "prepare"]


@dataclass(frozen=True)
class Job:
    """One patient ready to score: the request, its model and its times in hours."""

    request: PredictRequest
    ckpt: Checkpoint  # taken when the request started; a reload does not change it
    timebase: Timebase
    hours: np.ndarray  # (n_obs,) hours since admission, request order
    warnings: tuple[str, ...]


def prepare(request: PredictRequest, ckpt: Checkpoint, max_observations: int) -> Job:
    """Checks that need the model or the settings; raises InvalidRequest naming the problem."""
    n = len(request.observations)
    if n > max_observations:
        raise InvalidRequest(f"observations: {n} observations exceed the limit of "
                             f"{max_observations} per patient")
    if ckpt.task != "risk":
        raise InvalidRequest(f"model {ckpt.name!r} is a {ckpt.task} model; /v1/predict needs "
                             "a risk model")
    features = set(ckpt.normalizer.features)
    used = [o.variable in features for o in request.observations]
    if not any(used):
        raise InvalidRequest(
            f"observations: none is of a variable model {ckpt.name!r} uses; it needs at least "
            f"one of: {', '.join(ckpt.normalizer.features)}")
    timebase = request.timebase()
    hours = np.array([timebase.hours(o.time) for o in request.observations], dtype=np.float64)
    return Job(request, ckpt, timebase, hours, tuple(_warnings(request, ckpt, hours)))


def _warnings(request: PredictRequest, ckpt: Checkpoint, hours: np.ndarray) -> list[str]:
    out: list[str] = []
    atypical: dict[str, tuple[str, int]] = {}
    for obs in request.observations:
        _, message = check_value(obs.variable, obs.value)
        if message is not None:
            first, count = atypical.get(obs.variable, (message, 0))
            atypical[obs.variable] = (first, count + 1)
    if request.static is not None:
        for name, value in request.static.numeric().items():
            if isinstance(value, float):
                _, message = check_value(name, value)
                if message is not None:
                    atypical[name] = (message, 1)
    for first, count in atypical.values():
        out.append(first if count == 1 else f"{first} (and {count - 1} more such values)")
    features = set(ckpt.normalizer.features)
    unused = sorted({o.variable for o in request.observations
                     if CATALOGUE[o.variable].kind == "measurement"
                     and o.variable not in features})
    if unused:
        out.append(f"model {ckpt.name!r} does not use: {', '.join(unused)} (ignored)")
    step, n_steps = ckpt.grid.step_hours, ckpt.grid.n_steps
    measured = hours[[o.variable in features for o in request.observations]]
    last_bin = int(math.floor(measured.max() / step))
    if last_bin + 1 > n_steps:
        seen_from = (last_bin + 1 - n_steps) * step
        out.append(f"the series spans more than the model's {n_steps * step:g} h window: "
                   f"only hours {seen_from:g}-{(last_bin + 1) * step:g} were scored")
    return out


def _frames(jobs: Sequence[Job]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Long-format observations and the per-patient table; ids are batch positions."""
    ids = [str(i) for i in range(len(jobs))]
    observations = pd.DataFrame({
        "patient_id": np.repeat(ids, [len(j.request.observations) for j in jobs]),
        "time_hours": np.concatenate([j.hours for j in jobs]),
        "variable": [o.variable for j in jobs for o in j.request.observations],
        "value": np.array([o.value for j in jobs for o in j.request.observations],
                          dtype=np.float64),
    })
    statics = [j.request.static.numeric() if j.request.static else {} for j in jobs]
    patients = pd.DataFrame({
        "patient_id": ids,
        **{name: [s.get(name) for s in statics] for name in STATICS},
    })
    return observations, patients, ids


def _news2(job: Job) -> News2:
    latest: dict[str, float] = {}
    order = np.argsort(job.hours, kind="stable")  # the last row per name is its latest value
    for i in order:
        obs = job.request.observations[i]
        if obs.variable in NEWS2_PARAMETERS:
            latest[obs.variable] = obs.value
    total, parts = news2(latest)
    return News2(score=total, parts=parts, missing=list(news2_missing(latest)))


def _explanation(job: Job, pred: Prediction) -> Explanation:
    step = job.ckpt.grid.step_hours
    window = np.flatnonzero(pred.step_mask)  # bins from the first to the last observed one
    weights = np.asarray(pred.attention, dtype=np.float64)[window]
    total = float(weights.sum())
    if not (math.isfinite(total) and total > 0):
        raise ModelFailure(f"model {job.ckpt.name}/{job.ckpt.version} returned unusable "
                           "attention weights")
    weights = weights / total  # exact float sum; the model's is float32
    bins = [
        AttentionBin(start=job.timebase.label((pred.offset + int(i)) * step),
                     end=job.timebase.label((pred.offset + int(i) + 1) * step),
                     weight=float(w))
        for i, w in zip(window, weights, strict=True)
    ]
    # A variable the request never mentions equals the attribution baseline ("nothing
    # observed"), so its contribution is zero up to float noise: list only those it holds.
    present = {o.variable for o in job.request.observations}
    contributions = {k: v for k, v in (pred.contributions or {}).items() if k in present}
    ranked = sorted(contributions.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    return Explanation(
        attention=bins,
        variables=[Contribution(variable=k, contribution=float(v)) for k, v in ranked],
    )


def _response(job: Job, pred: Prediction) -> PredictResponse:
    ckpt = job.ckpt
    if not (math.isfinite(pred.probability) and math.isfinite(pred.los_days)):
        raise ModelFailure(f"model {ckpt.name}/{ckpt.version} returned a non-finite output")
    return PredictResponse(
        patient_id=job.request.patient_id,
        model=ModelRef(name=ckpt.name, version=ckpt.version, architecture=ckpt.config.arch,
                       bidirectional=ckpt.config.bidirectional),
        risk=Risk(probability=min(max(pred.probability, 0.0), 1.0)),
        prognosis=Prognosis(los_days=max(pred.los_days, 0.0)),
        news2=_news2(job),
        explanation=_explanation(job, pred),
        warnings=list(job.warnings),
    )


def predict(jobs: Sequence[Job]) -> list[PredictResponse]:
    """Score prepared patients, one batched call per model; responses in input order.

    Blocking (torch): call it from a worker thread, not the event loop.
    """
    groups: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(id(job.ckpt), []).append(i)
    responses: list[PredictResponse | None] = [None] * len(jobs)
    for members in groups.values():
        group = [jobs[i] for i in members]
        observations, patients, ids = _frames(group)
        predictions = score(group[0].ckpt, observations, patients, ids, explain=True)
        if len(predictions) != len(group):
            raise ModelFailure("the model returned a different number of predictions")
        for i, job, pred in zip(members, group, predictions, strict=True):
            try:
                responses[i] = _response(job, pred)
            except ServiceError as e:
                raise e.in_batch(i) if len(jobs) > 1 else e from None
    return [r for r in responses if r is not None]
