"""Plain batch bodies decoded straight into columns: the bulk-scoring fast path.

A 256-patient batch holds ~56,000 observation rows. Parsing it into a dict per row
(`parse_json`, orjson plus its duplicate-key check) and reading the rows back into columns
cost more than the batch's forward pass. `decode_plain_batch` parses such a body with
Arrow's JSON reader against a fixed schema, straight into typed columns (no Python object
per row or per number), checks every row of every patient at once with numpy, and hands
the route what `parse_json` would have given with each `observations` list replaced by its
`ObservationRows`; the route's model (`BatchRequest`) then validates everything else as
for any body. Arrow parses without the GIL: while one batch is parsed the inference thread
goes on with the forward pass of the one before, which Python-level decoding (msgspec,
orjson) held up at every operator.

It answers None for any body that is not plain, which then takes the general path
(`parse_json`, the per-field validators) and gets its answer, or its error message, from
there: the fast path never decides an error (a fault in it sends the body there too:
app.jsonbody). Plain means, beyond `_plain_columns`'s rows
(time a number of hours in range, a catalogue variable, a number in its possible range):
one JSON object {"patients": [...]}, patients with only patient_id, model, static (age,
sex, weight, height) and observations, every patient's observations in the same form (all
rows, or all the column form `schemas.ObservationColumns` with lists of equal length); no
backslash escapes, no run of 19 digits (orjson turns such integers into floats, the general
path keeps them exact), no number written `-0` and no NaN or Infinity (JSON has neither;
Arrow reads them); null only where the general path takes it as left out. Numbers come out
as orjson's do, bit for bit (tests/app/test_plainbody.py compares them). Arrow refuses a
repeated key, a value of another JSON type than the schema's and a field the schema does
not name.
"""

from __future__ import annotations

import re
from functools import cache
from itertools import pairwise
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from app.schemas import POSSIBLE, STATES, ObservationRows, plain_values

__all__ = ["decode_plain_batch"]

_NAMES = list(POSSIBLE)  # every variable an observation may name: measurements, interventions
_BOUNDS = np.array([POSSIBLE[name] for name in _NAMES], dtype=np.float64)
_STATE = np.array([name in STATES for name in _NAMES], dtype=bool)  # value 0 or 1 only

_STATIC = pa.struct([("age", pa.float64()), ("sex", pa.string()), ("weight", pa.float64()),
                     ("height", pa.float64())])
_ROW = pa.struct([("time", pa.float64()), ("variable", pa.string()), ("value", pa.float64())])
_COLUMNS = pa.struct([("time", pa.list_(pa.float64())), ("variable", pa.list_(pa.string())),
                      ("value", pa.list_(pa.float64()))])


# Arrow arrays are built and read here from their buffers: pyarrow's conversions
# (pa.array from a list, Array.to_numpy) ask its pandas shim whether they were handed pandas
# objects, which imports pandas (~40 MiB resident) into a service that never uses it.

@cache
def _name_set() -> pa.Array:
    """`_NAMES` as an Arrow string array (its offsets and UTF-8 bytes)."""
    encoded = [name.encode() for name in _NAMES]
    offsets = np.cumsum([0, *map(len, encoded)], dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def _view(array: pa.Array, dtype: type[np.generic]) -> np.ndarray:
    """The values of a fixed-width Arrow array as a read-only numpy view (a null's slot
    holds whatever is there: callers mask or have ruled nulls out)."""
    width = np.dtype(dtype).itemsize
    if not len(array):
        return np.empty(0, dtype=dtype)
    # np.frombuffer of a buffer Arrow allocated (the JSON reader's) is writable: make the
    # view read-only, as Array.to_numpy's was, so no caller writes into Arrow's memory.
    view = np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array),
                         offset=array.offset * width)
    view.flags.writeable = False
    return view


def _valid(array: pa.Array) -> np.ndarray:
    """Which slots of `array` hold a value (its validity bitmap, or all)."""
    bitmap = array.buffers()[0]
    if bitmap is None or not array.null_count:
        return np.ones(len(array), dtype=bool)
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
    return bits[array.offset:array.offset + len(array)].astype(bool)


def _options(observations: pa.DataType) -> pj.ParseOptions:
    patient = pa.struct([("patient_id", pa.string()), ("model", pa.string()),
                         ("static", _STATIC), ("observations", observations)])
    return pj.ParseOptions(explicit_schema=pa.schema([("patients", pa.list_(patient))]),
                           unexpected_field_behavior="error", newlines_in_values=True)


_ROWS_FORM, _COLUMNS_FORM = _options(pa.list_(_ROW)), _options(_COLUMNS)
# The first patient's observations: "[" rows, "{" the column form.
_FIRST_FORM = re.compile(rb'"observations"\s*:\s*([\[{])')
# Bytes after "-0" that continue a number: any other byte (or none) ends a number written
# -0, which orjson reads as the integer 0 and Arrow as -0.0.
_CONTINUES = np.zeros(256, dtype=bool)
_CONTINUES[list(b".0123456789eE")] = True
_LONG = 19  # digits in a row that may be an integer beyond int64 (app.jsonbody)
_CHUNK = 1 << 17  # bytes per pass: the passes' arrays stay in the core's cache


def has_unplain_number(body: bytes) -> bool:
    """Whether `body` holds 19 digits in a row (`jsonbody.has_long_number`) or a number
    written -0: numbers the fast path would not read as orjson does.

    numpy passes over chunks of the body, which let the GIL go (the bytes.translate and
    regular expression they replace held it for ~4 ms of a 2.7 MB batch body, while the
    inference threads waited to go on)."""
    data = np.frombuffer(body, dtype=np.uint8)
    for start in range(0, len(data), _CHUNK):
        chunk = data[start:start + _CHUNK + _LONG - 1]  # runs that start in this chunk
        digit = (chunk - np.uint8(ord("0"))) < 10
        run = digit  # run[i]: digits at i .. i + width - 1, width 1, 2, 4, 8, 16, 19
        for shift in (1, 2, 4, 8, _LONG - 16):
            run = run[:-shift] & run[shift:]
        if run.any():
            return True
        minus_zero = start + np.flatnonzero((chunk[:-1] == ord("-")) & (chunk[1:] == ord("0")))
        after = minus_zero + 2
        if (after >= len(data)).any() or not _CONTINUES[data[after[after < len(data)]]].all():
            return True
    return False


def decode_plain_batch(body: bytes) -> dict[str, Any] | None:
    """`parse_json(body)` with the observations as `ObservationRows`, or None when the body
    is not plain (module docstring): the general path then decides."""
    if b"\\" in body or has_unplain_number(body):
        return None
    first = _FIRST_FORM.search(body)
    if first is None:
        return None
    columns = first.group(1) == b"{"
    try:  # Arrow reads one object per row, without the GIL
        table = pj.read_json(pa.py_buffer(body),
                             read_options=pj.ReadOptions(use_threads=False,
                                                         block_size=len(body) + 1),
                             parse_options=_COLUMNS_FORM if columns else _ROWS_FORM)
    except (pa.ArrowInvalid, UnicodeDecodeError):  # malformed JSON or UTF-8, another shape
        return None  # or type, a number too large, a repeated or unknown key
    if table.num_rows != 1:  # no object, or several one after the other
        return None
    batch = table.column("patients").combine_chunks()
    if batch.null_count or not len(batch[0]):
        return None
    patients = batch.flatten()  # StructArray, one per patient
    patient_id, model, static, given = patients.flatten()
    if patients.null_count or given.null_count:
        return None
    try:  # Arrow's reader leaves UTF-8 unchecked; a bad variable name fails index_in
        for strings in (patient_id, model, static.field("sex")):
            strings.validate(full=True)
    except pa.ArrowInvalid:
        return None
    if columns:
        time, variable, value = given.flatten()
        if time.null_count or variable.null_count or value.null_count:
            return None  # a list left out or null: the general path names it
        counts = _view(time.value_lengths(), np.int32)
        if (not np.array_equal(counts, _view(variable.value_lengths(), np.int32))
                or not np.array_equal(counts, _view(value.value_lengths(), np.int32))):
            return None  # lists of different lengths: the general path names them
        time, variable, value = time.flatten(), variable.flatten(), value.flatten()
    else:
        counts = _view(given.value_lengths(), np.int32)
        time, variable, value = given.flatten().flatten()
    if 0 in counts:
        return None
    observations = _columns(time, variable, value, counts)
    if observations is None:
        return None
    ids, models = patient_id.to_pylist(), model.to_pylist()
    statics = _statics(static)
    if statics is None:
        return None
    out: list[dict[str, Any]] = []
    for i, rows in enumerate(observations):
        patient: dict[str, Any] = {"observations": rows}
        if ids[i] is not None:
            patient["patient_id"] = ids[i]
        if models[i] is not None:
            patient["model"] = models[i]
        if statics[i] is not None:
            patient["static"] = statics[i]
        out.append(patient)
    return {"patients": out}


def _statics(static: pa.StructArray) -> list[dict[str, Any] | None] | None:
    """Each patient's static descriptors as parse_json gives them, a null as a field left
    out (every one defaults to None); None when a number is NaN or infinite."""
    fields = [f.name for f in static.type]
    arrays = static.flatten()
    for array in arrays:
        if (pa.types.is_floating(array.type)
                and not np.isfinite(_view(array, np.float64)[_valid(array)]).all()):
            return None
    given = _valid(static)
    columns = [array.to_pylist() for array in arrays]
    return [{name: column[i] for name, column in zip(fields, columns, strict=True)
             if column[i] is not None} if given[i] else None for i in range(len(static))]


def _columns(time: pa.Array, variable: pa.Array, value: pa.Array, counts: np.ndarray
             ) -> list[ObservationRows] | None:
    """Each patient's rows as columns when every row of the batch is plain, else None.

    The checks of `schemas._plain_columns` (Arrow has checked the types), once over the
    whole batch; each patient's distinct names in order of first appearance."""
    code_array = pc.index_in(variable, value_set=_name_set())  # null: not a catalogue name
    if time.null_count or variable.null_count or value.null_count or code_array.null_count:
        return None
    code = _view(code_array, np.int32).astype(np.int64)
    hours, values = _view(time, np.float64), _view(value, np.float64)
    if not plain_values(hours, values, _BOUNDS[code], _STATE[code]):
        return None  # out of range, impossible, or NaN/Infinity (every comparison fails)
    n_patients, n_names = len(counts), len(_NAMES)
    patient = np.repeat(np.arange(n_patients), counts)
    # Each patient's distinct names in order of first appearance: patients are contiguous,
    # so ordering the first appearances keeps them grouped and in the request's order.
    # (A minimum per (patient, name) cell, not np.unique: no sort of every row.)
    key = patient * n_names + code
    first = np.full(n_patients * n_names, len(key), dtype=np.int64)
    np.minimum.at(first, key, np.arange(len(key)))
    keys = np.flatnonzero(first < len(key))
    keys = keys[np.argsort(first[keys], kind="stable")]
    sizes = np.bincount(keys // n_names, minlength=n_patients)
    own_codes = keys % n_names
    # position[patient, catalogue code] = the name's position among the patient's names
    position = np.zeros((n_patients, n_names), dtype=np.int64)
    position[keys // n_names, own_codes] = np.arange(len(keys)) - np.repeat(
        np.cumsum(sizes) - sizes, sizes)
    own = position[patient, code]
    bounds = np.cumsum(np.r_[0, counts]).tolist()
    name_bounds = np.cumsum(np.r_[0, sizes]).tolist()
    all_names = [_NAMES[c] for c in own_codes.tolist()]
    return [ObservationRows(all_names[a:b], own[start:end], values[start:end],
                            hours[start:end])
            for (start, end), (a, b) in zip(pairwise(bounds), pairwise(name_bounds),
                                            strict=True)]
