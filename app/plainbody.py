"""Plain batch bodies decoded straight into columns: the bulk-scoring fast path.

A 256-patient batch holds ~56,000 observation rows. Parsing it into a dict per row
(`parse_json`, orjson plus its duplicate-key check) and reading the rows back into columns
cost more than the batch's forward pass. `decode_plain_batch` reads such a body straight
into typed columns (no Python object per row or per number), checks every row of every
patient at once with numpy, and hands the route what `parse_json` would have given with
each `observations` list replaced by its `ObservationRows`; the route's model
(`BatchRequest`) then validates everything else as for any body.

Two readers, by the form of the first patient's observations:
- rows ([{"time": ..., "variable": ..., "value": ...}, ...]): Arrow's JSON reader against
  a fixed schema, without the GIL (while one batch is parsed an inference thread goes on
  with the forward pass of another). It refuses a repeated key, a value of another JSON
  type than the schema's and a field the schema does not name.
- columns ({"time": [...], "variable": [...], "value": [...]}): simdjson, then a walk over
  the patients that makes the same checks (`_walk`) and takes each patient's lists of
  numbers as buffers of doubles and its names as bytes that numpy and Arrow read for the
  whole batch. It holds the GIL, but the server spent ~16 % less CPU per bulk batch than
  with Arrow's reader (~20 ms less of ~120 ms: Arrow keeps every number as text and
  converts it later, and ran ~6x as long over the same body as simdjson's parse).

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
as orjson's do, bit for bit (tests/app/test_plainbody.py and test_columns.py compare them).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import pairwise
from typing import Any, TypeGuard

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import simdjson

from app.jsonbody import OFF_LOOP_BYTES
from app.schemas import POSSIBLE, STATES, ObservationRows, plain_values
from models.catalogue import CATALOGUE

__all__ = ["decode_plain_batch"]

# Arrow allocates from malloc: its default pool (mimalloc) kept ~50 MiB more resident under
# batch load (benchmarks/scoring.py prints RSS). This module is imported with the first
# batch body (app.routers.predict), before Arrow allocates anything.
pa.set_memory_pool(pa.system_memory_pool())

_NAMES = list(POSSIBLE)  # every variable an observation may name: measurements, interventions
_LOW, _HIGH = (np.ascontiguousarray(bound) for bound in
               np.array([POSSIBLE[name] for name in _NAMES], dtype=np.float64).T)
_STATE = np.array([name in STATES for name in _NAMES], dtype=bool)  # value 0 or 1 only
_CATALOGUE_NUMBER = np.array([list(CATALOGUE).index(name) for name in _NAMES], dtype=np.int64)

_STATIC = pa.struct([("age", pa.float64()), ("sex", pa.string()), ("weight", pa.float64()),
                     ("height", pa.float64())])
_ROW = pa.struct([("time", pa.float64()), ("variable", pa.string()), ("value", pa.float64())])


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


_ROWS_FORM = _options(pa.list_(_ROW))
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
    if first.group(1) == b"{":
        return _decode_columns(body)
    return _decode_rows(body)


def _decode_rows(body: bytes) -> dict[str, Any] | None:
    """A batch whose first patient sends rows: Arrow reads one object per row, without the
    GIL."""
    try:
        table = pj.read_json(pa.py_buffer(body),
                             read_options=pj.ReadOptions(use_threads=False,
                                                         block_size=len(body) + 1),
                             parse_options=_ROWS_FORM)
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
    counts = _view(given.value_lengths(), np.int32)
    time, variable, value = given.flatten().flatten()
    if 0 in counts or time.null_count or variable.null_count or value.null_count:
        return None
    code = _codes(variable)
    if code is None:
        return None
    observations = _rows(code, _view(time, np.float64), _view(value, np.float64), counts)
    statics = _statics(static)
    if observations is None or statics is None:
        return None
    return _batch(observations, patient_id.to_pylist(), model.to_pylist(), statics)


def _batch(observations: list[ObservationRows], ids: list[Any], models: list[Any],
           statics: list[dict[str, Any] | None]) -> dict[str, Any]:
    """What `parse_json` gives for the batch, with each patient's rows as columns (a
    field null or left out is left out)."""
    out: list[dict[str, Any]] = []
    for rows, patient_id, model, static in zip(observations, ids, models, statics,
                                               strict=True):
        patient: dict[str, Any] = {"observations": rows}
        if patient_id is not None:
            patient["patient_id"] = patient_id
        if model is not None:
            patient["model"] = model
        if static is not None:
            patient["static"] = static
        out.append(patient)
    return {"patients": out}


# The column form (module docstring): simdjson parses the body in one pass (~2 ms for a
# 256-patient batch), and the walk reads it patient by patient, holding the GIL. One
# thread reads every column-form body over _SMALL_BODY_BYTES: the walk gains nothing from
# running beside another, the parser it reuses (its buffers sized by the largest body
# read, ~3.5 bytes per body byte) is only ever touched there, and what the walk allocates
# comes from that thread's malloc arena alone (read in the event loop's pool threads, each
# of which grows an arena of its own, the server held ~15 MiB more after bulk scoring).
# A body over _SHARED_PARSER_BYTES gets a parser of its own, freed after it, so that one
# large batch does not leave a large parser behind; a small one (a few patients, which
# the event loop decodes itself) is read where it is, with a parser of its own.
_COLUMN_READER = ThreadPoolExecutor(1, thread_name_prefix="vitalcast-columns")
_parsers = [simdjson.Parser()]  # the reader thread's (replaced if it is ever left in use)
_SHARED_PARSER_BYTES = 4 << 20
_SMALL_BODY_BYTES = OFF_LOOP_BYTES  # app.jsonbody decodes bodies up to this on the event loop
_PATIENT_KEYS = frozenset(("patient_id", "model", "static", "observations"))
_STATIC_KEYS = frozenset(("age", "sex", "weight", "height"))
_COLUMN_KEYS = frozenset(("time", "variable", "value"))
_QUOTE = ord('"')


def _decode_columns(body: bytes) -> dict[str, Any] | None:
    """A batch whose first patient sends the column form (every patient must): read in
    the reader thread, or, for a small body (a few patients, which the event loop decodes
    itself), right here with a parser of its own, so that it never waits behind a large
    body the reader thread is reading."""
    if len(body) <= _SMALL_BODY_BYTES:
        return _read_columns(body, simdjson.Parser())
    return _COLUMN_READER.submit(_read_columns, body).result()


def _read_columns(body: bytes, parser: simdjson.Parser | None = None) -> dict[str, Any] | None:
    """The batch, read with `parser`, else (in the reader thread) the shared parser, or a
    parser of its own for a body over _SHARED_PARSER_BYTES."""
    try:
        if parser is None and len(body) > _SHARED_PARSER_BYTES:
            parser = simdjson.Parser()
        if parser is not None:
            return _walk(parser.parse(body), body)
        try:
            document = _parsers[0].parse(body)
        except RuntimeError as e:  # nesting too deep, or the parser still in use (a proxy
            if "re-use a parser" not in str(e):  # of an earlier body outlived its call)
                raise
            _parsers[0] = simdjson.Parser()
            document = _parsers[0].parse(body)
        return _walk(document, body)  # its proxies end with it, before the next parse
    except (ValueError, TypeError, RuntimeError):  # not JSON or not UTF-8 (ValueError or
        return None  # RuntimeError by the error), a value of another JSON type (TypeError)


def _walk(document: Any, body: bytes) -> dict[str, Any] | None:
    """The batch from a parsed column-form body, None unless every patient is plain.

    simdjson has checked the JSON and its UTF-8, and refuses what orjson refuses (NaN,
    trailing content); the walk checks what Arrow's schema did: the keys (none repeated:
    simdjson keeps both, orjson the last), the JSON type of every value, and lists of
    numbers and of strings that hold nothing else."""
    if not isinstance(document, simdjson.Object) or list(document.keys()) != ["patients"]:
        return None
    patients = document["patients"]
    if not isinstance(patients, simdjson.Array) or not len(patients):
        return None
    ids: list[str | None] = []
    models: list[str | None] = []
    statics: list[dict[str, Any] | None] = []
    times: list[bytes] = []
    values: list[bytes] = []
    names: list[bytes] = []
    counts: list[int] = []
    for patient in patients:
        if not isinstance(patient, simdjson.Object):
            return None
        keys = list(patient.keys())  # (items() would convert the lists to Python objects)
        if (len(set(keys)) != len(keys) or not _PATIENT_KEYS.issuperset(keys)
                or "observations" not in keys):
            return None
        # (get() of a key not there costs a raised and caught error: read only those given)
        patient_id = patient["patient_id"] if "patient_id" in keys else None
        model = patient["model"] if "model" in keys else None
        static = _static(patient["static"]) if "static" in keys else None
        columns = patient["observations"]
        if not (_is_text(patient_id) and _is_text(model)):
            return None
        if (not isinstance(columns, simdjson.Object) or len(columns) != 3
                or set(columns.keys()) != _COLUMN_KEYS):
            return None
        time, variable, value = columns["time"], columns["variable"], columns["value"]
        if not (isinstance(time, simdjson.Array) and isinstance(variable, simdjson.Array)
                and isinstance(value, simdjson.Array)):
            return None
        n = len(time)
        if not n or len(variable) != n or len(value) != n:
            return None
        # Every number, as a double (TypeError for anything else); a list nested in the
        # list is flattened into it, which the count of "[" in the body rules out below.
        times.append(time.as_buffer(of_type="d"))
        values.append(value.as_buffer(of_type="d"))
        names.append(variable.mini)  # type: ignore[arg-type]  # bytes, whatever the stub says
        ids.append(patient_id)
        models.append(model)
        statics.append(static)
        counts.append(n)
    hours = np.frombuffer(b"".join(times), dtype=np.float64)
    numbers = np.frombuffer(b"".join(values), dtype=np.float64)
    total = sum(counts)
    if len(hours) != total or len(numbers) != total:
        return None
    listed = b"".join(names)
    code = _name_codes(listed, total, len(counts))
    if code is None:
        return None
    # Each "[" of the body opens the patients' list or one of a patient's three lists, or
    # sits in a string (no escapes: each is itself); any other opens a nested list. (The
    # names are catalogue names by now: none holds one.)
    in_strings = (sum(text.count("[") for text in (*ids, *models) if text is not None)
                  + sum(s["sex"].count("[") for s in statics
                        if s is not None and isinstance(s.get("sex"), str)))
    if body.count(b"[") != 1 + 3 * len(counts) + in_strings:
        return None
    observations = _rows(code, hours, numbers, np.asarray(counts))
    if observations is None:
        return None
    return _batch(observations, ids, models, statics)


def _is_text(value: object) -> TypeGuard[str | None]:
    return value is None or isinstance(value, str)


class _NotPlain(ValueError):
    """A value of a type the general path decides about (the reader returns None)."""


def _static(given: object) -> dict[str, Any] | None:
    """A patient's static descriptors as `_statics` gives them (numbers as floats, nulls
    left out); raises _NotPlain when they are not plain."""
    if given is None:
        return None
    if not isinstance(given, simdjson.Object):
        raise _NotPlain
    fields = dict(given.items())  # (its values as Python objects: numbers, strings, null)
    if len(fields) != len(given) or not _STATIC_KEYS.issuperset(fields):
        raise _NotPlain
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if key == "sex" and isinstance(value, str):
            out[key] = value
        elif key != "sex" and isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
        else:
            raise _NotPlain
    return out


def _name_codes(listed: bytes, total: int, lists: int) -> np.ndarray | None:
    """The catalogue number of each name in `lists` minified JSON lists of names
    (concatenated, `total` names in all), None unless every entry of every list is a
    catalogue name.

    Without escapes each string is the bytes between a pair of quotes. The lists hold
    nothing but strings exactly when the bytes outside the strings are one "[", one "]"
    and the commas between entries per list: total + lists of them (a number, true or a
    nested list in a list adds more)."""
    data = np.frombuffer(listed, dtype=np.uint8)
    quotes = np.flatnonzero(data == _QUOTE)
    if len(quotes) != 2 * total:
        return None
    opens, closes = quotes[0::2], quotes[1::2]
    if len(data) - int((closes - opens).sum()) - total != total + lists:
        return None
    # One Arrow string array over the bytes as they are: the names at even positions,
    # the '","' (or '"],["') between two names at odd ones.
    bounds = np.empty(2 * total, dtype=np.int32)
    bounds[0::2], bounds[1::2] = opens + 1, closes
    return _codes(pa.Array.from_buffers(pa.string(), 2 * total - 1,
                                        [None, pa.py_buffer(bounds), pa.py_buffer(listed)]),
                  step=2)


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


def _codes(variable: pa.Array, step: int = 1) -> np.ndarray | None:
    """The catalogue number (position in `_NAMES`) of every `step`-th string of `variable`,
    None when one is null or not a catalogue name."""
    code = pc.index_in(variable, value_set=_name_set())[::step]  # null: not a catalogue name
    if variable.null_count or code.null_count:
        return None
    return _view(code, np.int32).astype(np.int64)


def _rows(code: np.ndarray, hours: np.ndarray, values: np.ndarray, counts: np.ndarray
          ) -> list[ObservationRows] | None:
    """Each patient's rows as columns when every row of the batch is plain, else None.

    The checks of `schemas._plain_columns` (the decoder has checked the types), once over
    the whole batch; each patient's distinct names in order of first appearance."""
    if not plain_values(hours, values, _LOW[code], _HIGH[code], _STATE[code]):
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
    own = position.reshape(-1)[key]  # position[patient, code]
    bounds = np.cumsum(np.r_[0, counts]).tolist()
    name_bounds = np.cumsum(np.r_[0, sizes]).tolist()
    all_names = [_NAMES[c] for c in own_codes.tolist()]
    catalogue = _CATALOGUE_NUMBER[code]
    return [ObservationRows(all_names[a:b], own[start:end], values[start:end],
                            hours[start:end], catalogue=catalogue[start:end])
            for (start, end), (a, b) in zip(pairwise(bounds), pairwise(name_bounds),
                                            strict=True)]
