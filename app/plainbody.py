"""Plain batch bodies decoded straight into columns: the bulk-scoring fast path.

A 256-patient batch holds ~56,000 observation rows. Parsing it into a dict per row
(`parse_json`, orjson plus its duplicate-key check) and reading the rows back into columns
cost more than the batch's forward pass. `decode_plain_batch` decodes such a body with
msgspec into typed rows (no dict per row; number and field checks in C), checks every row
of every patient at once with numpy, and hands the route what `parse_json` would have
given with each `observations` list replaced by its `ObservationRows`; the route's model
(`BatchRequest`) then validates everything else as for any body.

It answers None for any body that is not plain, which then takes the general path
(`parse_json`, the per-field validators) and gets its answer, or its error message, from
there: the fast path never decides an error. Plain means, beyond `_plain_columns`'s rows
(time a number of hours in range, a catalogue variable, a number in its possible range):
patients with only patient_id, model, static (age, sex, weight, height) and observations
(rows, or the column form `schemas.ObservationColumns` with lists of equal length); no
backslash escapes, no run of 19 digits (orjson turns such integers into floats, the
general path keeps them exact) and no repeated key. Numbers come out as orjson's do, bit
for bit (msgspec reads `-0` as 0.0 too; tests/app/test_plainbody.py compares them).

A repeated key is found as `jsonbody._fast` finds it: without escapes every colon of the
body is after a key or inside a string, and the typed value says how many keys each object
kept and which strings it holds; a repeated key leaves its colon (and its value's) out of
that count (the column form has three keys, whatever its length).
"""

from __future__ import annotations

from itertools import chain
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import numpy as np
from msgspec import UNSET, UnsetType

from app.jsonbody import has_long_number
from app.schemas import POSSIBLE, STATES, ObservationRows, plain_values

__all__ = ["decode_plain_batch"]

_NAMES = list(POSSIBLE)  # every variable an observation may name: measurements, interventions
_CODE = {name: i for i, name in enumerate(_NAMES)}
_BOUNDS = np.array([POSSIBLE[name] for name in _NAMES], dtype=np.float64)
_STATE = np.array([name in STATES for name in _NAMES], dtype=bool)  # value 0 or 1 only
if TYPE_CHECKING:
    _Variable = str
else:  # msgspec checks the name in C and gives the catalogue's own string (hash cached)
    _Variable = Literal[tuple(_NAMES)]


class _Row(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    time: float  # msgspec's float takes JSON integers and floats, not true/false or strings
    variable: _Variable
    value: float


class _Columns(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The column form of a patient's observations (`schemas.ObservationColumns`)."""

    time: list[float]
    variable: list[_Variable]
    value: list[float]


class _Static(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    age: float | None | UnsetType = UNSET
    sex: str | None | UnsetType = UNSET
    weight: float | None | UnsetType = UNSET
    height: float | None | UnsetType = UNSET


class _Patient(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    observations: list[_Row] | _Columns
    patient_id: str | None | UnsetType = UNSET
    model: str | None | UnsetType = UNSET
    static: _Static | None | UnsetType = UNSET


class _Batch(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    patients: list[_Patient]


_DECODER = msgspec.json.Decoder(_Batch)
_PATIENT_FIELDS = ("patient_id", "model", "static")
_STATIC_FIELDS = _Static.__struct_fields__
_TIME, _VARIABLE, _VALUE = attrgetter("time"), attrgetter("variable"), attrgetter("value")

# Keys are field names and variables catalogue names: neither holds a colon to count.
if any(":" in name for name in chain(POSSIBLE, _Row.__struct_fields__, _STATIC_FIELDS,
                                     _Patient.__struct_fields__)):
    raise ImportError("a field or variable name holds ':': the repeated-key count breaks")


def decode_plain_batch(body: bytes) -> dict[str, Any] | None:
    """`parse_json(body)` with the observations as `ObservationRows`, or None when the body
    is not plain (module docstring): the general path then decides."""
    if b"\\" in body or has_long_number(body):
        return None
    try:
        batch = _DECODER.decode(body)
    except (msgspec.DecodeError, ValueError):  # malformed JSON or UTF-8, another shape or
        return None  # type, a number too large
    if not batch.patients:
        return None
    given = [p.observations for p in batch.patients]
    counts = list(map(_rows_given, given))
    if 0 in counts or -1 in counts:
        return None
    observations = _columns(given, counts)
    if observations is None:
        return None
    # Keys: "patients", then time, variable and value of each row or of each column form.
    patients, colons_in_strings = [], 0
    keys = 1 + 3 * sum(1 if isinstance(rows, _Columns) else len(rows) for rows in given)
    for patient, rows_of_patient in zip(batch.patients, observations, strict=True):
        out: dict[str, Any] = {}
        for name in _PATIENT_FIELDS:
            value = getattr(patient, name)
            if value is UNSET:
                continue
            if isinstance(value, _Static):
                value = {k: v for k in _STATIC_FIELDS if (v := getattr(value, k)) is not UNSET}
                keys += len(value)
                colons_in_strings += sum(v.count(":") for v in value.values()
                                         if isinstance(v, str))
            elif isinstance(value, str):
                colons_in_strings += value.count(":")
            out[name] = value
        out["observations"] = rows_of_patient
        keys += len(out)
        patients.append(out)
    if body.count(b":") != keys + colons_in_strings:
        return None  # a repeated key: which value is meant is the general path's to say
    return {"patients": patients}


def _rows_given(observations: list[_Row] | _Columns) -> int:
    """How many rows a patient sends; -1 for columns of different lengths (not plain)."""
    if isinstance(observations, _Columns):
        n = len(observations.time)
        return n if len(observations.variable) == len(observations.value) == n else -1
    return len(observations)


def _columns(given: list[list[_Row] | _Columns], counts: list[int]
             ) -> list[ObservationRows] | None:
    """Each patient's rows as columns when every row of the batch is plain, else None.

    The checks of `schemas._plain_columns` (the decoder has checked types and names), once
    over the whole batch; each patient's distinct names in order of first appearance."""
    n, n_patients = sum(counts), len(counts)
    variables = list(chain.from_iterable(
        o.variable if isinstance(o, _Columns) else map(_VARIABLE, o) for o in given))
    code = np.fromiter(map(_CODE.__getitem__, variables), np.int64, n)
    hours = np.fromiter(chain.from_iterable(
        o.time if isinstance(o, _Columns) else map(_TIME, o) for o in given), np.float64, n)
    values = np.fromiter(chain.from_iterable(
        o.value if isinstance(o, _Columns) else map(_VALUE, o) for o in given), np.float64, n)
    if not plain_values(hours, values, _BOUNDS[code], _STATE[code]):
        return None
    ends = np.cumsum(counts).tolist()
    starts = [end - count for end, count in zip(ends, counts, strict=True)]
    names = [list(dict.fromkeys(variables[s:e])) for s, e in zip(starts, ends, strict=True)]
    # position[patient, catalogue code] = the name's position among the patient's names
    sizes = list(map(len, names))
    position = np.zeros((n_patients, len(_NAMES)), dtype=np.int64)
    position[np.repeat(np.arange(n_patients), sizes),
             np.fromiter(map(_CODE.__getitem__, chain.from_iterable(names)), np.int64,
                         sum(sizes))] = np.concatenate([np.arange(k) for k in sizes])
    own = position[np.repeat(np.arange(n_patients), counts), code]
    return [ObservationRows(own_names, own[s:e], values[s:e], hours[s:e])
            for own_names, s, e in zip(names, starts, ends, strict=True)]
