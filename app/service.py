"""Scoring: validated requests -> long-format frames -> `models.predict.score` -> responses.

The network sees exactly the preprocessing it was trained with because the frames go
through `models/` (tensorisation, normalisation and calibration live there). This module
only translates: request times to hours since admission, and the window grid back into
the request's own kind of time.

A batch is scored with one call per model (one batched forward pass), not per patient.
Responses are built as the JSON-ready values of `PredictResponse` (`Answer`), which the
routes encode with orjson: validating ~12,000 attention bins of a 256-patient batch into
pydantic objects and dumping them again cost more than the forward pass of the batch. Each
answer's attention list is itself encoded already (an `orjson.Fragment`: `_attention_json`),
which orjson writes as it is; `predict` reads answers back through their JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, compress
from typing import Any

import numpy as np
import orjson

from app.cache import CachedStay, Key, PredictionCache, rows_key
from app.errors import InvalidRequest, ModelFailure, ServiceError
from app.schemas import Answer, PredictRequest, PredictResponse
from app.timebase import Timebase
from app.whatif import PlanQuestion, answer_what_if, prepare_what_if
from models.catalogue import CATALOGUE, check_value
from models.checkpoint import Checkpoint
from models.features import Tensors, tensorise_codes
from models.news2 import NEWS2_PARAMETERS, news2_points
from models.predict import Prediction, score_tensors
from models.traced import trace_for_inference

__all__ = ["Answer", "Job", "Outcome", "answer_cached", "forecast", "predict", "predict_each",
           "prepare", "prepare_batch", "warm_up"]


@dataclass(slots=True)
class Job:
    """One patient ready to score: the request, its model and its rows as arrays. Built
    once per patient (a frozen dataclass took ~1.3 us a build, two builds per patient of a
    bulk batch); `_with_warnings` fills in its warnings (and the rows' catalogue numbers
    where the decoder did not hand them on), nothing else changes it."""

    request: PredictRequest
    ckpt: Checkpoint  # taken when the request started; a reload does not change it
    timebase: Timebase
    hours: np.ndarray  # (n_obs,) hours since admission, request order
    values: np.ndarray  # (n_obs,) values, request order
    names: list[str]  # the distinct variables, in order of first appearance
    code: np.ndarray  # (n_obs,) position of each row's variable in `names`
    warnings: tuple[str, ...]
    what_if: PlanQuestion | None = None  # the request's plans, when it asks what-if
    explain: bool = True  # per-variable contributions (integrated gradients) wanted
    name_ids: np.ndarray | None = None  # (n_obs,) catalogue number of each row's variable

    @property
    def variables(self) -> list[str]:
        """(n_obs,) variable names, request order."""
        return [self.names[c] for c in self.code.tolist()]


def prepare(request: PredictRequest, ckpt: Checkpoint, max_observations: int,
            explain: bool = True, forecast: bool = False) -> Job:
    """Checks that need the model or the settings; raises InvalidRequest naming the problem.

    Every later step works on the request's columns (`ObservationRows`). Without
    `explain` the response leaves out the contributions (their integrated gradients cost
    several forward and backward passes per patient).
    """
    return _with_warnings([_checked(request, ckpt, max_observations, explain, forecast)])[0]


def prepare_batch(requests: Sequence[PredictRequest],
                  checkpoint: Callable[[PredictRequest], Checkpoint], max_observations: int,
                  explain: bool = True) -> list[Job]:
    """`prepare` for each patient of a batch, the first error named by its batch index
    (`checkpoint` gives a request's model, raising for an unknown one); warnings for all
    the batch's rows in one vectorised pass."""
    jobs = []
    for i, request in enumerate(requests):
        try:
            jobs.append(_checked(request, checkpoint(request), max_observations, explain))
        except ServiceError as e:
            raise e.in_batch(i) from None
    return _with_warnings(jobs)


def _checked(request: PredictRequest, ckpt: Checkpoint, max_observations: int,
             explain: bool, forecast: bool = False) -> Job:
    """The job of one request (without warnings) after the checks that can refuse it; for
    /v1/forecast (`forecast`) the model must be a forecaster."""
    observations = request.observations
    n = len(observations)
    if n > max_observations:
        raise InvalidRequest(f"observations: {n} observations exceed the limit of "
                             f"{max_observations} per patient")
    if forecast and ckpt.task != "forecast":
        raise InvalidRequest(f"model {ckpt.name!r} is a {ckpt.task} model; /v1/forecast needs "
                             "a forecast model (python -m training.train --task forecast)")
    if not forecast and ckpt.task not in ("risk", "effect"):  # effect: carries a risk model
        elsewhere = "; its forecasts come from /v1/forecast" if ckpt.task == "forecast" else ""
        raise InvalidRequest(f"model {ckpt.name!r} is a {ckpt.task} model{elsewhere}; "
                             "/v1/predict needs a risk model (or a what-if model, which "
                             "carries one)")
    names = observations.names
    if _feature_set(ckpt.normalizer.features).isdisjoint(names):
        raise InvalidRequest(
            f"observations: model {ckpt.name!r} uses none of the variables sent "
            f"({', '.join(names)[:200]}); send at least one of: "
            f"{', '.join(ckpt.normalizer.features)}")
    timebase = request.timebase()
    hours = observations.hours
    if hours is None:
        hours = np.array([timebase.hours(t) for t in observations.times()], dtype=np.float64)
    question = prepare_what_if(request.what_if, ckpt, hours, timebase) \
        if request.what_if else None
    return Job(request, ckpt, timebase, hours, observations.values, names, observations.code,
               (), question, explain, observations.catalogue)


# Catalogue tables by a fixed number per name (also the cache key's, below).
_NAMES = list(CATALOGUE)
_NAME_ID = {name: i for i, name in enumerate(_NAMES)}
# Typical ranges by catalogue number, as two arrays (rows of an (n, 2) table gather
# several times slower).
_TYPICAL_LOW, _TYPICAL_HIGH = (
    np.ascontiguousarray(bound) for bound in
    np.array([CATALOGUE[name].typical for name in CATALOGUE], dtype=np.float64).T)
# The typical range of each static: a value inside it needs no wording (`check_value`).
_TYPICAL_STATIC = {name: var.typical for name, var in CATALOGUE.items() if var.kind == "static"}


def _row_name_ids(jobs: Sequence[Job], lengths: Sequence[int]) -> np.ndarray:
    """(rows of all the jobs,) the catalogue number (`_NAME_ID`) of each row's variable."""
    known = [job.name_ids for job in jobs]
    if all(ids is not None for ids in known):  # prepared jobs (the warnings looked them up,
        return np.concatenate(known)  # or the fast decoders handed them on)
    names = list(chain.from_iterable(job.names for job in jobs))
    name_start = np.cumsum([0, *(len(job.names) for job in jobs)])[:-1]
    name_ids = np.fromiter(map(_NAME_ID.__getitem__, names), np.int64, len(names))
    return name_ids[np.concatenate([job.code for job in jobs])
                    + np.repeat(name_start, lengths)]


@dataclass(frozen=True)
class _Rows:
    """The rows of several jobs end to end, concatenated once for every step that reads
    them all (warnings; tensorisation and NEWS2 of a group)."""

    lengths: list[int]  # rows per job
    name_ids: np.ndarray  # (rows,) catalogue number (`_NAME_ID`) of each row's variable
    hours: np.ndarray  # (rows,)
    values: np.ndarray  # (rows,)


def _rows(jobs: Sequence[Job]) -> _Rows:
    lengths = [len(job.code) for job in jobs]
    return _Rows(lengths, _row_name_ids(jobs, lengths),
                 np.concatenate([job.hours for job in jobs]),
                 np.concatenate([job.values for job in jobs]))


@lru_cache(maxsize=64)
def _feature_set(features: tuple[str, ...]) -> frozenset[str]:
    """A model's features as a set, once per model."""
    return frozenset(features)


@lru_cache(maxsize=64)
def _reads(features: tuple[str, ...]) -> np.ndarray:
    """(catalogue names,) whether a model with these features reads each name (by
    `_NAME_ID`); one per model, not per request."""
    reads = np.zeros(len(_NAMES), dtype=bool)
    reads[[_NAME_ID[f] for f in features]] = True
    reads.setflags(write=False)
    return reads


def _with_warnings(jobs: list[Job]) -> list[Job]:
    """The jobs, their warnings filled in: atypical values (the first message of a variable
    and how many more), variables the model does not use, a series longer than its window.
    Each check runs once over all the jobs' rows (or statics); the rare rows and patients
    they flag are worded one by one."""
    if not jobs:
        return jobs
    rows = _rows(jobs)
    lengths, row_ids, values, hours = rows.lengths, rows.name_ids, rows.values, rows.hours
    starts = np.cumsum([0, *lengths[:-1]])
    atypical: list[dict[str, tuple[str, int]]] = [{} for _ in jobs]  # request order
    flagged = np.flatnonzero((values < _TYPICAL_LOW[row_ids])
                             | (values > _TYPICAL_HIGH[row_ids]))
    if flagged.size:
        # Worded once per patient and variable, at its first flagged row (rows and the
        # patients' variables in request order), with the number of its flagged rows.
        patient_of = np.searchsorted(starts, flagged, side="right") - 1
        _, first, count = np.unique(patient_of * len(_NAMES) + row_ids[flagged],
                                    return_index=True, return_counts=True)
        by_row = np.argsort(first)
        k = first[by_row]  # in request order: each cell's first flagged row is flagged[k]
        for patient, name_id, value, n_flagged in zip(
                patient_of[k].tolist(), row_ids[flagged[k]].tolist(),
                values[flagged[k]].tolist(), count[by_row].tolist(), strict=True):
            name = _NAMES[name_id]
            _, message = check_value(name, value)
            if message is not None:
                atypical[patient][name] = (message, n_flagged)
    _atypical_statics(jobs, atypical)
    # Rows of variables each job's model reads, of measurements it does not.
    models = {id(job.ckpt): job.ckpt for job in jobs}  # a batch has one or a few
    reads = np.stack([_reads(ckpt.normalizer.features) for ckpt in models.values()])
    model_of = {key: i for i, key in enumerate(models)}
    job_model = np.array([model_of[id(job.ckpt)] for job in jobs])
    used = reads.reshape(-1)[np.repeat(job_model * len(_NAMES), lengths) + row_ids]
    unused = _names_by_patient(np.flatnonzero(~used & _MEASUREMENT[row_ids]), starts,
                               row_ids)
    # The latest hour of a variable each job's model uses: the window ends in its bin.
    latest = np.maximum.reduceat(np.where(used, hours, -np.inf), starts)
    grids = [(ckpt.grid.step_hours, ckpt.grid.n_steps) for ckpt in models.values()]
    step, n_steps = (np.array(column)[job_model] for column in zip(*grids, strict=True))
    beyond = set(np.flatnonzero(np.floor(latest / step) + 1 > n_steps).tolist())
    for i, (job, found, last_hour, start, n) in enumerate(zip(
            jobs, atypical, latest.tolist(), starts.tolist(), lengths, strict=True)):
        job.warnings = _job_warnings(job, found, unused.get(i),
                                     last_hour if i in beyond else None)
        job.name_ids = row_ids[start:start + n]
    return jobs


# Whether each catalogue variable (by its number) is a measurement: the variables a model
# may not read, and then says it ignores.
_MEASUREMENT = np.array([var.kind == "measurement" for var in CATALOGUE.values()], dtype=bool)
_NUMERIC_STATICS = [name for name in _TYPICAL_STATIC if name != "sex"]  # (sex: a code)


def _atypical_statics(jobs: Sequence[Job], atypical: list[dict[str, tuple[str, int]]]
                      ) -> None:
    """Adds to each job's atypical values its statics outside their typical range (after
    its rows', in the statics' order), checked a static at a time over all the jobs."""
    statics = [job.request.static for job in jobs]
    outside: list[tuple[int, int, float]] = []  # (patient, static, value)
    for k, name in enumerate(_NUMERIC_STATICS):
        given = np.array([math.nan if s is None or getattr(s, name) is None
                          else getattr(s, name) for s in statics], dtype=np.float64)
        low, high = _TYPICAL_STATIC[name]
        for patient in np.flatnonzero((given < low) | (given > high)).tolist():
            outside.append((patient, k, float(given[patient])))
    for patient, k, value in sorted(outside):
        name = _NUMERIC_STATICS[k]
        _, message = check_value(name, value)
        if message is not None:
            atypical[patient][name] = (message, 1)


def _names_by_patient(rows: np.ndarray, starts: np.ndarray, row_ids: np.ndarray
                      ) -> dict[int, list[str]]:
    """The distinct variable names of `rows` (of all the jobs' rows) by job, sorted."""
    if not rows.size:
        return {}
    patient_of = np.searchsorted(starts, rows, side="right") - 1
    cells = np.unique(patient_of * len(_NAMES) + row_ids[rows]).tolist()
    out: dict[int, list[str]] = {}
    for cell in cells:
        out.setdefault(cell // len(_NAMES), []).append(_NAMES[cell % len(_NAMES)])
    return {patient: sorted(names) for patient, names in out.items()}


def _job_warnings(job: Job, atypical: dict[str, tuple[str, int]], unused: list[str] | None,
                  beyond_hour: float | None) -> tuple[str, ...]:
    """A job's warnings from what the batch-wide checks found about it: its atypical
    values, the measurements its model does not use, and the latest hour it uses when
    that lies beyond the model's window."""
    if not atypical and unused is None and beyond_hour is None:
        return ()
    ckpt = job.ckpt
    out = [first if count == 1 else f"{first} (and {count - 1} more such values)"
           for first, count in atypical.values()]
    if unused is not None:
        out.append(f"model {ckpt.name!r} does not use: {', '.join(unused)} (ignored)")
    if beyond_hour is not None:
        step, n_steps = ckpt.grid.step_hours, ckpt.grid.n_steps
        last_bin = int(math.floor(beyond_hour / step))
        seen_from = (last_bin + 1 - n_steps) * step
        out.append(f"the series spans more than the model's {n_steps * step:g} h window: "
                   f"only hours {seen_from:g}-{(last_bin + 1) * step:g} were scored")
    return tuple(out)


# NEWS2 parameter of each catalogue variable by its number (-1: none).
_NEWS2_OF = np.array([NEWS2_PARAMETERS.index(name) if name in NEWS2_PARAMETERS else -1
                      for name in _NAMES], dtype=np.int64)


def _news2(jobs: Sequence[Job], rows: _Rows) -> list[Mapping[str, object]]:
    """NEWS2 of every job from the latest value of each parameter (of rows at the same
    time, the later one), in one vectorised pass over all the jobs' rows (`rows`): per
    (patient, parameter) cell the latest hour, then the last row at that hour; no sort."""
    param = _NEWS2_OF[rows.name_ids]
    keep = np.flatnonzero(param >= 0)
    n_params = len(NEWS2_PARAMETERS)
    cell = np.repeat(np.arange(len(jobs)), rows.lengths)[keep] * n_params + param[keep]
    hours = rows.hours[keep]
    latest_hour = np.full(len(jobs) * n_params, -np.inf)
    np.maximum.at(latest_hour, cell, hours)
    at_latest = np.flatnonzero(hours == latest_hour[cell])
    row = np.full(len(jobs) * n_params, -1, dtype=np.int64)
    np.maximum.at(row, cell[at_latest], at_latest)
    values = np.append(rows.values[keep], np.nan)
    latest = values[row].reshape(len(jobs), n_params)  # row -1: the NaN appended
    table = {name: latest[:, i] for i, name in enumerate(NEWS2_PARAMETERS)}
    points = np.stack(list(news2_points(table).values()), axis=1).tolist()
    missing = np.isnan(latest).tolist()
    return [{"score": sum(parts), "parts": dict(zip(NEWS2_PARAMETERS, parts, strict=True)),
             "missing": list(compress(NEWS2_PARAMETERS, absent))}
            for parts, absent in zip(points, missing, strict=True)]


def _bin_labels(job: Job, bins: np.ndarray) -> tuple[list[float | str], list[float | str]]:
    """Start and end of grid bins (absolute bin numbers) in the request's kind of time:
    hours, or ISO-8601 labels in the request's offset."""
    step = job.ckpt.grid.step_hours
    starts: list[float | str] = (bins * step).tolist()
    ends: list[float | str] = ((bins + 1) * step).tolist()
    if job.timebase.kind != "hours":
        starts = [job.timebase.label(float(h)) for h in starts]
        ends = [job.timebase.label(float(h)) for h in ends]
    return starts, ends


def _model_ref(ckpt: Checkpoint) -> dict[str, object]:
    """The `model` of an answer (`ModelRef`)."""
    return {"name": ckpt.name, "version": ckpt.version, "architecture": ckpt.config.arch,
            "bidirectional": ckpt.config.bidirectional}


_LISTED_MARKS = 4096  # bins from admission whose marks are listed once per grid


@lru_cache(maxsize=16)
def _hour_heads(step: float, n: int) -> tuple[list[bytes], list[bytes]]:
    """The JSON of bins 0 .. n - 1 in hours up to their weight, listed once per grid: bin k
    as the first of a list (`[{"start":k * step,"end":(k + 1) * step,"weight":`, the
    floats `_bin_labels` computes) and as any other (`},{"start":...`)."""
    heads = [_head(k * step, (k + 1) * step) for k in range(n)]
    return [b"[" + h for h in heads], [b"}," + h for h in heads]


def _head(start: float | str, end: float | str) -> bytes:
    """A bin's JSON up to its weight: `{"start":...,"end":...,"weight":`."""
    return orjson.dumps({"start": start, "end": end})[:-1] + b',"weight":'


def _heads(job: Job, step: float, a: int, b: int,
           listed: tuple[list[bytes], list[bytes]] | None) -> list[bytes]:
    """The heads of bins a .. b (absolute bin numbers) in the request's kind of time, the
    first opening the list and each other closing the bin before it: in hours from the
    group's listed heads (which reach past every stay's last bin), else made here (ISO
    labels, or a group past `_LISTED_MARKS` with none listed)."""
    if job.timebase.kind == "hours" and listed is not None:
        opening, following = listed
        return [opening[a], *following[a + 1:b + 1]]
    hours = [k * step for k in range(a, b + 2)]  # the bins' starts and ends
    marks: list[float | str] = ([job.timebase.label(h) for h in hours]
                                if job.timebase.kind != "hours" else list(hours))
    return _bin_heads(marks[:-1], marks[1:])


def _bin_heads(starts: Sequence[float | str], ends: Sequence[float | str]) -> list[bytes]:
    """The heads of bins with these starts and ends, the first opening the list."""
    heads = list(map(_head, starts, ends))
    return [b"[" + heads[0], *(b"}," + h for h in heads[1:])] if heads else []


def _attention_json(heads: list[bytes], weights: Sequence[bytes]) -> orjson.Fragment:
    """The `explanation.attention` list, encoded: each bin's head (`_heads`) and its
    weight's JSON, in one join. A 256-patient batch has ~12,000 bins: as dicts they cost
    more to build and to encode than this does, and a cached answer held ~3x the memory
    (11 KiB a stay against 3.6)."""
    if not heads:
        return orjson.Fragment(b"[]")
    parts = heads + heads  # (2n entries, overwritten)
    parts[0::2] = heads
    parts[1::2] = weights
    return orjson.Fragment(b"".join(parts) + b"}]")


def _floats_json(values: np.ndarray) -> list[bytes]:
    """Each float's JSON as orjson writes it in any answer (a float64 array's numbers as
    its floats: the same shortest form), in one call for all of them."""
    if not len(values):
        return []
    array = np.ascontiguousarray(values, dtype=np.float64)
    return orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")


def _explanations(jobs: Sequence[Job], preds: Sequence[Prediction]
                  ) -> list[dict[str, object] | ModelFailure]:
    """Each job's `explanation` (or the error about its attention), for jobs that share a
    checkpoint: the attention of every stay checked and normalised in one pass over the
    group, and every weight encoded in one call (a 256-patient batch has ~12,000 bins).
    The weights are each stay's window divided by its exact float sum, as `_explanation`
    computes them for a stay on its own."""
    if not preds:
        return []
    attention = np.stack([p.attention for p in preds]).astype(np.float64, copy=False)
    mask = np.stack([p.step_mask for p in preds]).astype(bool, copy=False)
    n_steps = mask.shape[1]
    first = mask.argmax(axis=1)
    last = n_steps - 1 - mask[:, ::-1].argmax(axis=1)
    # The window is the bins from the first to the last observed one; any other mask
    # (none, or with gaps) takes the one-stay path.
    span = mask.any(axis=1) & (mask.sum(axis=1) == last - first + 1)
    totals = np.array([row[a:b + 1].sum() if ok else np.nan for row, a, b, ok
                       in zip(attention, first.tolist(), last.tolist(), span.tolist(),
                              strict=True)])
    negative = (np.where(mask, attention, 0.0) < 0).any(axis=1)
    usable = np.isfinite(totals) & (totals > 0) & ~negative
    ready = span & usable
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # every ready stay's window, stay after stay, bins in order
        texts = _floats_json((attention / totals[:, None])[mask & ready[:, None]])
    offsets = [p.offset for p in preds]
    step = jobs[0].ckpt.grid.step_hours
    reach = max(offsets) + n_steps + 1
    listed = (_hour_heads(step, 1 << reach.bit_length()) if reach < _LISTED_MARKS
              else None)
    out: list[dict[str, object] | ModelFailure] = []
    at = 0  # the first weight of the next ready stay in `texts`
    for j, (job, pred) in enumerate(zip(jobs, preds, strict=True)):
        if not span[j]:
            try:
                out.append(_explanation(job, pred))
            except ModelFailure as e:
                out.append(e)
            continue
        if not usable[j]:
            out.append(_unusable_attention(job))
            continue
        a, b = int(first[j]) + offsets[j], int(last[j]) + offsets[j]
        n = b - a + 1
        out.append({"attention": _attention_json(_heads(job, step, a, b, listed),
                                                 texts[at:at + n]),
                    "variables": _variables(job, pred)})
        at += n
    return out


def _unusable_attention(job: Job) -> ModelFailure:
    return ModelFailure(f"model {job.ckpt.name}/{job.ckpt.version} returned unusable "
                        "attention weights")


def _explanation(job: Job, pred: Prediction) -> dict[str, object]:
    """One stay's `explanation`, whatever its mask (`_explanations` takes the usual
    window, a span of bins, for a whole group at once)."""
    window = np.flatnonzero(pred.step_mask)  # bins from the first to the last observed one
    weights = np.asarray(pred.attention, dtype=np.float64)[window]
    total = float(weights.sum())
    if not (math.isfinite(total) and total > 0) or weights.min() < 0:
        raise _unusable_attention(job)
    weights = weights / total  # exact float sum; the model's is float32
    starts, ends = _bin_labels(job, pred.offset + window)
    return {"attention": _attention_json(_bin_heads(starts, ends), _floats_json(weights)),
            "variables": _variables(job, pred)}


def _variables(job: Job, pred: Prediction) -> list[dict[str, object]] | None:
    """The explanation's per-variable contributions, largest first (None unless asked)."""
    # A variable the request never mentions equals the attribution baseline ("nothing
    # observed"), so its contribution is zero up to float noise: list only those it holds.
    if not job.explain or pred.contributions is None:
        return None
    present = set(job.names)
    contributions = {k: v for k, v in pred.contributions.items() if k in present}
    ranked = sorted(contributions.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    return [{"variable": k, "contribution": float(v)} for k, v in ranked]


def _templates(group: Sequence[Job], stays: Sequence[CachedStay],
               cache: PredictionCache | None) -> list[Answer | ServiceError]:
    """Each job's response less its own parts: the parts every request with the stay's key
    shares (built once, kept by the cache for requests in hours, never modified), or the
    error about the stay. The explanations of those not kept are built for the group at
    once."""
    out: list[Answer | ServiceError | None] = [
        stay.response if job.timebase.kind == "hours" else None
        for job, stay in zip(group, stays, strict=True)]
    need = [k for k, template in enumerate(out) if template is None]
    explanations = _explanations([group[k] for k in need],
                                 [stays[k].prediction for k in need])
    for k, explanation in zip(need, explanations, strict=True):
        job, stay = group[k], stays[k]
        try:
            template = _shared_response(job, stay.prediction, stay.news2, explanation)
        except ServiceError as e:
            out[k] = e
            continue
        if cache is not None and job.timebase.kind == "hours":  # ISO labels: this request's
            cache.keep_response(stay, template)
        out[k] = template
    return [t for t in out if t is not None]


def _shared_response(job: Job, pred: Prediction, news2_score: Mapping[str, object],
                     explanation: dict[str, object] | ModelFailure) -> Answer:
    """The response without id, warnings and what-if, as `PredictResponse` writes it: its
    fields in their order, each value of the type the field serialises (tests validate
    answers against the model; its constraints hold by construction: the probability is
    clamped to [0, 1], the stay to >= 0 days, attention weights are shares of their sum)."""
    ckpt = job.ckpt
    if not (math.isfinite(pred.probability) and math.isfinite(pred.los_days)):
        raise ModelFailure(f"model {ckpt.name}/{ckpt.version} returned a non-finite output")
    if pred.contributions is not None and not all(map(math.isfinite,
                                                      pred.contributions.values())):
        # (JSON has no NaN: orjson would write null where the schema promises a number)
        raise ModelFailure(f"model {ckpt.name}/{ckpt.version} returned non-finite "
                           "contributions; ask with ?contributions=false for the risk alone")
    if isinstance(explanation, ModelFailure):
        raise explanation
    return {
        "patient_id": None,
        "model": _model_ref(ckpt),
        "risk": {"probability": min(max(pred.probability, 0.0), 1.0),
                 "outcome": "in_hospital_death"},
        "prognosis": {"los_days": max(pred.los_days, 0.0)},
        "news2": news2_score,
        "explanation": explanation,
        "warnings": [],
        "what_if": None,
    }


def forecast(job: Job) -> Answer:
    """/v1/forecast's answer for a job of a forecast model (`prepare(..., forecast=True)`):
    each target variable over the `horizon` grid bins after the last observed bin, in its
    catalogue unit, with the bins' start and end in the request's time kind. Blocking
    (torch)."""
    ckpt = job.ckpt
    (pred,) = score_tensors(ckpt, _tensorise([job]))
    targets = [str(t) for t in ckpt.extra.get("targets", [])]
    if pred.forecast is None or pred.forecast.shape[1] != len(targets):
        raise ModelFailure(f"model {ckpt.name}/{ckpt.version} gave no forecast of its "
                           f"targets {targets}")
    features = list(ckpt.normalizer.features)
    values = ckpt.normalizer.denormalise(pred.forecast, [features.index(t) for t in targets])
    if not np.isfinite(values).all():
        raise ModelFailure(f"model {ckpt.name}/{ckpt.version} returned a non-finite forecast")
    last = pred.offset + int(np.flatnonzero(pred.step_mask)[-1])  # the forecast's origin bin
    starts, ends = _bin_labels(job, last + 1 + np.arange(values.shape[0]))
    # A target the series never measured would be forecast from nothing (the cohort's
    # mean): it is left out, and the warnings say so.
    sent = set(job.names)
    series = [{"variable": name, "unit": CATALOGUE[name].shown_unit,
               "points": [{"start": a, "end": b, "value": v}
                          for a, b, v in zip(starts, ends, values[:, k].tolist(), strict=True)]}
              for k, name in enumerate(targets) if name in sent]
    unmeasured = [name for name in targets if name not in sent]
    warnings = list(job.warnings)
    if unmeasured:
        warnings.append(f"not forecast, never measured in this series: {', '.join(unmeasured)}")
    return {"patient_id": job.request.patient_id, "model": _model_ref(ckpt),
            "forecast": series, "warnings": warnings}


def _what_if(job: Job) -> list[dict[str, Any]] | None:
    if job.what_if is None:
        return None
    statics = job.request.static.numeric() if job.request.static else {}
    return [answer.model_dump(mode="json") for answer in answer_what_if(
        job.what_if, job.ckpt, job.timebase, job.hours, job.variables, job.values, statics)]


Outcome = Answer | ServiceError


def _groups(jobs: Sequence[Job]) -> Iterator[tuple[list[int], list[Job]]]:
    """Per checkpoint and explain flag: the jobs' positions and the jobs."""
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault((id(job.ckpt), job.explain), []).append(i)
    for members in groups.values():
        yield members, [jobs[i] for i in members]


def _tensorise(group: Sequence[Job], rows: _Rows | None = None) -> Tensors:
    """The stays of jobs that share a checkpoint (their `rows`), on its grid: rows by
    catalogue number."""
    ckpt = group[0].ckpt
    rows = rows if rows is not None else _rows(group)
    return tensorise_codes(
        np.repeat(np.arange(len(group)), rows.lengths), rows.hours, rows.name_ids, _NAMES,
        rows.values, [j.request.static.numeric() if j.request.static else {} for j in group],
        ckpt.normalizer, ckpt.grid)


def _key(job: Job) -> Key:
    """The cache key of a job: its checkpoint, whether it explains, and a digest of its
    rows in a fixed order and its statics; what the network sees and the NEWS2 follow from
    these. The order is by time, then variable; rows of one variable at one time keep
    their request order, because the later of them is the one scored (as the bin's and
    NEWS2's latest value), so swapping them is another series."""
    name_id = np.array([_NAME_ID[name] for name in job.names], dtype=np.int64)[job.code]
    order = np.lexsort((name_id, job.hours))  # stable: ties keep the request order
    static = job.request.static.numeric() if job.request.static else {}
    return rows_key(job.ckpt, job.explain, (job.hours[order], name_id[order],
                                           job.values[order]), repr(sorted(static.items())))


def _responses(outcomes: list[Outcome | None], members: list[int], group: list[Job],
               stays: list[CachedStay], cache: PredictionCache | None) -> None:
    """Each job's response: its stay's template with the request's own id, warnings (their
    order follows the request's) and what-if answers; or the error about it alone."""
    templates = _templates(group, stays, cache)
    for i, job, template in zip(members, group, templates, strict=True):
        if isinstance(template, ServiceError):
            outcomes[i] = template
            continue
        try:
            outcomes[i] = {**template, "patient_id": job.request.patient_id,
                           "warnings": list(job.warnings), "what_if": _what_if(job)}
        except ServiceError as e:
            outcomes[i] = e


def predict_each(jobs: Sequence[Job], cache: PredictionCache | None = None) -> list[Outcome]:
    """Score prepared patients, one batched call per model; per patient its response or the
    error that is about it alone (a non-finite output), in input order. With a cache, only
    stays it does not hold are scored.

    Blocking (torch): call it from a worker thread, not the event loop.
    """
    if cache is not None and not cache.enabled:
        cache = None  # off: no keys to compute, no responses to keep
    outcomes: list[Outcome | None] = [None] * len(jobs)
    for members, group in _groups(jobs):
        _responses(outcomes, members, group, _stays(group, cache), cache)
    return [o for o in outcomes if o is not None]


def answer_cached(jobs: Sequence[Job], cache: PredictionCache) -> list[Outcome] | None:
    """The outcomes when the cache holds every stay and no what-if is asked, else None: no
    torch, so a repeated request is answered where it arrived (the event loop)."""
    if not cache.enabled or any(job.what_if is not None for job in jobs):
        return None  # cache off; plans are scored by torch: the inference thread's work
    outcomes: list[Outcome | None] = [None] * len(jobs)
    for members, group in _groups(jobs):
        found = [cache.get(_key(job), count_miss=False) for job in group]
        if any(s is None for s in found):
            return None
        _responses(outcomes, members, group, [s for s in found if s is not None], cache)
    return [o for o in outcomes if o is not None]


def _stays(group: list[Job], cache: PredictionCache | None) -> list[CachedStay]:
    """The stays' predictions and NEWS2, from the cache where it has them."""
    ckpt, explain = group[0].ckpt, group[0].explain
    if cache is None:
        return _scored(ckpt, group, explain)
    keys = [_key(job) for job in group]
    found = [cache.get(k) for k in keys]
    missing = [i for i, s in enumerate(found) if s is None]
    if missing:
        scored = _scored(ckpt, [group[i] for i in missing], explain)
        for i, stay in zip(missing, scored, strict=True):
            found[i] = stay
            cache.put(keys[i], stay)
    return [s for s in found if s is not None]


def _scored(ckpt: Checkpoint, group: list[Job], explain: bool) -> list[CachedStay]:
    rows = _rows(group)
    tensors = _tensorise(group, rows)
    predictions = score_tensors(ckpt, tensors, explain=explain)
    if len(predictions) != len(tensors):
        raise ModelFailure("the model returned a different number of predictions")
    return [CachedStay(p, n) for p, n in zip(predictions, _news2(group, rows), strict=True)]


def warm_up(ckpt: Checkpoint) -> None:
    """Score one made-up stay (three typical readings of every variable the model reads) as
    requests are scored, then record the model's forward pass as a graph where it gives the
    module's outputs exactly (models/traced.py: no waits for the GIL between its
    operators), before the model serves. Torch sets up its kernels and buffers on a model's
    first pass (the default bi-LSTM's first prediction took ~85 ms against ~10 after it, and
    ~60 MiB), which the first request would otherwise wait for; and a checkpoint that loads
    but cannot score (weights that give NaN) raises ModelFailure here, before it is traced,
    so the registry keeps serving what it served. Blocking (torch)."""
    cfg = ckpt.config
    features = list(ckpt.normalizer.features)
    typical = [sum(CATALOGUE[name].typical) / 2 for name in features]
    n, hours = len(features), (0.5, 1.5, 2.5)
    tensors = tensorise_codes(np.zeros(n * len(hours), dtype=np.int64),
                              np.repeat(hours, n), np.tile(np.arange(n), len(hours)),
                              features, np.tile(typical, len(hours)), [{}], ckpt.normalizer,
                              ckpt.grid)
    (pred,) = score_tensors(ckpt, tensors, explain=ckpt.task != "forecast")
    outputs = [pred.probability, pred.los_days, *pred.attention.tolist(),
               *(pred.contributions or {}).values()]
    if pred.forecast is not None:
        outputs.extend(pred.forecast.ravel().tolist())
    if not np.isfinite(outputs).all():
        raise ModelFailure(f"model {ckpt.name}/{ckpt.version} gives non-finite outputs for "
                           "a stay of typical values")
    trace_for_inference(ckpt.model, ckpt.grid.n_steps, cfg.n_inputs, cfg.n_static)


def predict(jobs: Sequence[Job]) -> list[PredictResponse]:
    """`predict_each` as response models (routes that edit or re-shape the response: FHIR),
    raising the first patient's error (named by its batch index)."""
    responses = []
    for i, outcome in enumerate(predict_each(jobs)):
        if isinstance(outcome, ServiceError):
            raise outcome.in_batch(i) if len(jobs) > 1 else outcome
        # (its attention is encoded JSON: `_attention_json`)
        responses.append(PredictResponse.model_validate_json(orjson.dumps(outcome)))
    return responses
