"""Import the PhysioNet/Computing in Cardiology Challenge 2012 data into the vitalcast format.

    python -m training.import_physionet --src set-a.tar.gz --outcomes Outcomes-a.txt --out DIR

Reads the challenge's original files unchanged: a directory or tar archive of
`<RecordID>.txt` files (lines `Time,Parameter,Value`, Time as HH:MM since ICU
admission) and an `Outcomes-*.txt` table. Writes `observations.parquet` (long
format, catalogue names and units) and `patients.parquet` (static descriptors and
outcomes), the data directory `training.data` loads.

Every parameter is either mapped to the variable catalogue or dropped on purpose:
the tables below are the code's half of `docs/physionet.md`. Every input row ends
with exactly one fate (kept, to the patient table, or dropped for a named reason)
and the printed summary counts them, so nothing disappears silently.

Parsing is done in bulk: the member texts are concatenated and read by a single
`pd.read_csv`, with the record id attached by repeating each file's id over its
line count; every later step is a vectorised column operation.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from models.catalogue import CATALOGUE

__all__ = [
    "DESCRIPTORS",
    "DROPPED",
    "ICU_TYPES",
    "OUTCOMES",
    "TIME_SERIES",
    "ImportResult",
    "ImportSummary",
    "import_physionet",
    "main",
    "read_records",
    "write_dataset",
]

# Time-series parameter -> catalogue variable. Invasive (arterial line) and non-invasive
# (cuff) pressures share one variable; where both exist at the same minute the invasive
# reading is kept (the reference standard) so a stay is not counted twice.
TIME_SERIES: dict[str, str] = {
    "HR": "heart_rate",
    "RespRate": "resp_rate",
    "Temp": "temperature",
    "SysABP": "sbp",
    "NISysABP": "sbp",
    "DiasABP": "dbp",
    "NIDiasABP": "dbp",
    "MAP": "map",
    "NIMAP": "map",
    "GCS": "gcs",
    "FiO2": "fio2",
    "Urine": "urine_output",
    "Lactate": "lactate",
    "Creatinine": "creatinine",
    "BUN": "bun",
    "WBC": "wbc",
    "Platelets": "platelets",
    "HCT": "hct",
    "K": "potassium",
    "Na": "sodium",
    "Glucose": "glucose",
    "HCO3": "bicarbonate",
    "Bilirubin": "bilirubin",
    "pH": "ph",
    "SaO2": "sao2",
    "PaO2": "pao2",
    "PaCO2": "paco2",
    "Albumin": "albumin",
    "ALP": "alp",
    "ALT": "alt",
    "AST": "ast",
    "Cholesterol": "cholesterol",
    "Mg": "magnesium",
    "TroponinI": "troponin_i",
    "TroponinT": "troponin_t",
    # An intervention of mode "state": PhysioNet only ever records 1 (ventilated at
    # that time); the grid carries the state forward.
    "MechVent": "mech_vent",
}
_INVASIVE_OF = {"NISysABP": "SysABP", "NIDiasABP": "DiasABP", "NIMAP": "MAP"}

# Static descriptors (recorded at 00:00) -> column of patients.parquet. Weight is also
# recorded later in the stay: see `_statics` for how those rows are used.
DESCRIPTORS: dict[str, str] = {
    "Age": "age",
    "Gender": "sex",
    "Height": "height",
    "Weight": "weight",
    "ICUType": "icu_type",
}
# The challenge's ICU codes, written as the usual unit abbreviations.
ICU_TYPES: dict[int, str] = {1: "CCU", 2: "CSRU", 3: "MICU", 4: "SICU"}
_SEXES: dict[int, str] = {0: "female", 1: "male"}

# Outcomes-*.txt column -> patients.parquet column (-1 = missing).
OUTCOMES: dict[str, str] = {
    "In-hospital_death": "died",
    "Length_of_stay": "los_days",
    "SAPS-I": "saps_i",
    "SOFA": "sofa",
}

# Parameters and outcome columns deliberately not carried over, with the reason.
DROPPED: dict[str, str] = {
    "RecordID": "the record's identifier, not a measurement: becomes patient_id "
                "(checked against the file name)",
    "Survival": "days from admission to death (outcome column): it encodes the label and "
                "is not needed beyond `died`",
}

_HEADER = b"Time,Parameter,Value"
_RECORD_FILE = re.compile(r"\d+\.txt")
# Magnesium: the challenge documents mmol/L but the values are mg/dL (median 2.0, as in
# MIMIC-II); 1 mg/dL = 10 mg/L / 24.305 g/mol = 0.4114 mmol/L.
_MG_MGDL_TO_MMOLL = 10.0 / 24.305

# The fates a row can meet, in the order the summary prints them.
KEPT = "kept"
TO_PATIENTS = "static descriptor (to patients table)"
LATER_WEIGHT = "later weight (static weight only)"
FATES_DROPPED: tuple[str, ...] = (
    "blank line",
    "empty parameter",
    "unparseable time",
    "unparseable value",
    "record id",
    "missing (-1)",
    "unknown parameter",
    "out of possible range",
    "non-invasive duplicate of invasive",
)
FATES: tuple[str, ...] = (KEPT, TO_PATIENTS, LATER_WEIGHT, *FATES_DROPPED)
# Column headings of the per-parameter table.
_SHORT = dict(zip(FATES, ("kept", "patients", "later_wt", "blank", "empty", "bad_time",
                          "bad_value", "record_id", "missing", "unknown", "out_of_range",
                          "ni_dup"), strict=True))


@dataclass
class ImportSummary:
    """What the import did, for the printed report (no patient values or identifiers)."""

    records: int = 0  # record files read
    deaths: int = 0  # in-hospital deaths among them
    without_series: int = 0  # stays with only descriptor rows: excluded
    without_valid: int = 0  # stays with series rows but none kept: excluded
    patients: int = 0  # stays written to patients.parquet
    rows_read: int = 0  # data lines over all files (headers excluded)
    fates: dict[str, int] = field(default_factory=dict)  # rows per fate
    unknown: dict[str, int] = field(default_factory=dict)  # unknown parameter -> rows
    per_parameter: pd.DataFrame = field(default_factory=pd.DataFrame)  # parameter x fate
    conversions: dict[str, int] = field(default_factory=dict)  # unit fix -> rows
    weight_from_later_row: int = 0  # stays whose weight came from a row after 00:00
    outcome_rows_unused: int = 0  # outcome rows whose record is not in --src

    def format(self) -> str:
        kept = self.fates.get(KEPT, 0)
        pct = 100.0 * self.deaths / self.records if self.records else 0.0
        lines = [
            f"records read:                 {self.records}",
            f"in-hospital deaths:           {self.deaths} ({pct:.2f} %)",
            f"stays without time series:    {self.without_series} (excluded)",
            f"stays with no valid row:      {self.without_valid} (excluded)",
            f"patients written:             {self.patients}",
            f"rows read:                    {self.rows_read}",
            f"rows kept (observations):     {kept}",
            f"rows to the patients table:   {self.fates.get(TO_PATIENTS, 0)}",
            f"later weight rows:            {self.fates.get(LATER_WEIGHT, 0)}"
            f" (weight taken from one for {self.weight_from_later_row} stays)",
            "rows dropped by reason:",
        ]
        lines += [f"  {fate:<36}{self.fates.get(fate, 0)}" for fate in FATES_DROPPED]
        if self.unknown:
            shown = ", ".join(f"{k!r}: {v}" for k, v in sorted(self.unknown.items())[:20])
            lines.append(f"unknown parameters: {shown}")
        lines.append("unit conversions:")
        lines += [f"  {k:<36}{v}" for k, v in self.conversions.items()]
        if self.outcome_rows_unused:
            lines.append(f"outcome rows without a record: {self.outcome_rows_unused}")
        lines.append("per parameter (rows):")
        lines.append(self.per_parameter.to_string())
        return "\n".join(lines)


@dataclass
class ImportResult:
    observations: pd.DataFrame  # patient_id, time_hours, variable, value
    patients: pd.DataFrame  # patient_id, age, sex, weight, height, icu_type, outcomes
    summary: ImportSummary


# --- reading -----------------------------------------------------------------------------


def _members(src: Path) -> list[tuple[str, bytes]]:
    """(record id, file bytes) for every `<RecordID>.txt` under src, sorted by id."""
    found: list[tuple[str, str, bytes]] = []  # (record id, where, bytes)
    if src.is_dir():
        for path in sorted(src.rglob("*.txt")):
            if _RECORD_FILE.fullmatch(path.name):
                found.append((path.stem, str(path), path.read_bytes()))
    elif src.is_file() and tarfile.is_tarfile(src):
        with tarfile.open(src, "r:*") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and _RECORD_FILE.fullmatch(name):
                    handle = tar.extractfile(member)
                    if handle is None:  # pragma: no cover - isfile() members always have one
                        raise ValueError(f"{src}: cannot read member {member.name}")
                    found.append((name[:-4], f"{src}:{member.name}", handle.read()))
    elif src.exists():
        raise ValueError(f"--src {src} is neither a directory nor a tar archive")
    else:
        raise FileNotFoundError(f"--src {src} does not exist")
    if not found:
        raise ValueError(f"--src {src} holds no <RecordID>.txt files")
    found.sort(key=lambda f: (f[0], f[1]))
    ids = [f[0] for f in found]
    dupes = sorted({i for i, j in zip(ids, ids[1:], strict=False) if i == j})
    if dupes:
        raise ValueError(f"--src {src} holds {len(dupes)} record ids in more than one file")
    return [(rid, raw) for rid, _, raw in found]


def read_records(src: Path) -> pd.DataFrame:
    """All record files as one raw frame: record (categorical id), hh, mm (float),
    parameter (categorical, as written), value (float; NaN where empty or not a number).

    One `pd.read_csv` over the concatenated bodies; each file's id is repeated over its
    line count, so blank lines are kept as rows (all empty) to keep the count aligned.
    """
    members = _members(src)
    bodies: list[bytes] = []
    counts = np.zeros(len(members), dtype=np.int64)
    for i, (rid, raw) in enumerate(members):
        text = raw.replace(b"\r\n", b"\n")
        header, _, body = text.partition(b"\n")
        if header.strip().lstrip(b"\xef\xbb\xbf") != _HEADER:
            raise ValueError(f"record {rid} in {src}: first line is not "
                             f"{_HEADER.decode()!r}")
        if body and not body.endswith(b"\n"):
            body += b"\n"
        bodies.append(body)
        counts[i] = body.count(b"\n")
    # The only colon in a well-formed line is the one in HH:MM: turning it into a comma
    # lets the C parser read hours and minutes as numbers (no per-row Python work).
    joined = b"".join(bodies).replace(b":", b",")
    try:
        raw_rows = pd.read_csv(
            io.BytesIO(joined), header=None, names=["hh", "mm", "parameter", "value"],
            dtype={"parameter": "category"}, skip_blank_lines=False, keep_default_na=False,
            na_values=[""], quoting=csv.QUOTE_NONE, engine="c",
        )
    except pd.errors.ParserError as exc:
        raise ValueError(f"{src}: malformed record line ({exc})") from None
    if len(raw_rows) != int(counts.sum()):  # e.g. a stray carriage return inside a line
        raise ValueError(f"{src}: parsed {len(raw_rows)} rows from {int(counts.sum())} lines")
    for col in ("hh", "mm", "value"):  # a bad entry leaves a text column: coerce it
        if not pd.api.types.is_float_dtype(raw_rows[col]):
            raw_rows[col] = pd.to_numeric(raw_rows[col], errors="coerce").astype(np.float64)
    ids = np.array([rid for rid, _ in members], dtype=object)
    raw_rows.insert(0, "record", pd.Categorical.from_codes(
        np.repeat(np.arange(len(members)), counts), categories=pd.Index(ids)))
    return raw_rows


def _read_outcomes(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"--outcomes {path} does not exist")
    table = pd.read_csv(path, dtype=str, na_filter=False)
    table.columns = [c.strip() for c in table.columns]
    needed = ["RecordID", *OUTCOMES]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"--outcomes {path}: missing columns {missing}")
    out = pd.DataFrame({"patient_id": table["RecordID"].str.strip()})
    if out["patient_id"].duplicated().any():
        raise ValueError(f"--outcomes {path}: {int(out['patient_id'].duplicated().sum())} "
                         "duplicated RecordIDs")
    for src_col, col in OUTCOMES.items():
        values = pd.to_numeric(table[src_col].str.strip(), errors="coerce")
        bad = int((values.isna() & (table[src_col].str.strip() != "")).sum())
        if bad:
            raise ValueError(f"--outcomes {path}: {bad} non-numeric values in {src_col}")
        out[col] = values.where(values != -1).astype(np.float64)
    died = out["died"]
    if not died.isin([0.0, 1.0]).all():
        raise ValueError(f"--outcomes {path}: In-hospital_death must be 0 or 1 on every row")
    out["died"] = died.astype(np.int64)
    return out.set_index("patient_id")


# --- mapping -----------------------------------------------------------------------------


def _to_catalogue_units(name: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Values in the catalogue's canonical unit (name: per-row parameter), with fix counts."""
    value = value.copy()
    # FiO2 is a fraction in the challenge; a value in (1, 100] is a percentage.
    fio2 = (name == "FiO2") & (value > 1.0) & (value <= 100.0)
    value[fio2] /= 100.0
    # Temp is Celsius; 77-113 is impossible in Celsius and a plausible 25-45 C in Fahrenheit.
    temp_f = (name == "Temp") & (value >= 77.0) & (value <= 113.0)
    value[temp_f] = (value[temp_f] - 32.0) * 5.0 / 9.0
    mg = name == "Mg"
    value[mg] *= _MG_MGDL_TO_MMOLL
    return value, {
        "FiO2 percent -> fraction": int(fio2.sum()),
        "Temp Fahrenheit -> Celsius": int(temp_f.sum()),
        "Mg mg/dL -> mmol/L": int(mg.sum()),
    }


def _name_code(names: Sequence[str] | np.ndarray, name: str | None) -> int:
    """Position of name in names, -1 when absent or None."""
    hits = [i for i, n in enumerate(names) if n == name] if name is not None else []
    return hits[0] if hits else -1


def _possible(name: str) -> tuple[float, float]:
    """Possible range of a parameter's target; codes for the two coded descriptors."""
    if name == "Gender":
        return min(_SEXES), max(_SEXES)
    if name == "ICUType":
        return min(ICU_TYPES), max(ICU_TYPES)
    target = TIME_SERIES.get(name) or DESCRIPTORS.get(name)
    return CATALOGUE[target].possible if target else (np.nan, np.nan)


def _statics(record: np.ndarray, column: np.ndarray, value: np.ndarray,
             to_patients: np.ndarray, later_weight: np.ndarray,
             n_records: int) -> tuple[pd.DataFrame, int]:
    """Per-record descriptors; the first valid row of each wins.

    Weight: the admission weight (00:00) when recorded, otherwise the first valid weight
    recorded later in the stay (weight changes little over 48 h, and a missing weight
    costs a model more than a slightly late one).
    """
    # record: (n,) index into the records; column: the patients-table column per row.
    frame = pd.DataFrame({"record": record, "column": column, "value": value})
    admission = frame[to_patients].drop_duplicates(["record", "column"])
    wide = admission.pivot(index="record", columns="column", values="value")
    wide = wide.reindex(index=pd.RangeIndex(n_records, name="record"),
                        columns=list(DESCRIPTORS.values()))
    later = frame[later_weight].drop_duplicates("record").set_index("record")["value"]
    fill = wide["weight"].isna() & wide.index.isin(later.index)
    wide.loc[fill, "weight"] = later.reindex(wide.index[fill]).to_numpy()
    out = pd.DataFrame(index=wide.index)
    out["age"] = wide["age"].astype(np.float64)
    out["sex"] = pd.Series(wide["sex"].map(_SEXES), index=wide.index, dtype=object)
    out["weight"] = wide["weight"].astype(np.float64)
    out["height"] = wide["height"].astype(np.float64)
    out["icu_type"] = pd.Series(wide["icu_type"].map(ICU_TYPES), index=wide.index, dtype=object)
    return out, int(fill.sum())


def import_physionet(src: Path, outcomes: Path) -> ImportResult:
    """Read, map, validate and count; see the module docstring and docs/physionet.md."""
    rows = read_records(src)
    records: list[str] = [str(r) for r in rows["record"].cat.categories]
    rec = rows["record"].cat.codes.to_numpy()  # (n,) index into records
    summary = ImportSummary(records=len(records), rows_read=len(rows))

    # Work on the few distinct parameter names, then broadcast to rows through the codes.
    raw_names = rows["parameter"].cat.categories.astype(str)
    names, code_map = np.unique(np.asarray(raw_names.str.strip(), dtype=object),
                                return_inverse=True)
    pcode = rows["parameter"].cat.codes.to_numpy()
    empty_name = pcode < 0  # NaN: nothing between the commas
    pcode = np.where(empty_name, len(names), code_map[np.maximum(pcode, 0)])
    names = np.append(names, "")  # code len(names) = the empty name
    name = names[pcode]  # (n,) object: stripped parameter per row

    def per_name(flags: list[bool]) -> np.ndarray:
        return np.asarray(flags, dtype=bool)[pcode]

    hh = rows["hh"].to_numpy(np.float64)
    mm = rows["mm"].to_numpy(np.float64)
    hours = hh + mm / 60.0
    value = rows["value"].to_numpy(np.float64, copy=True)
    value[~np.isfinite(value)] = np.nan

    blank = empty_name & np.isnan(hh) & np.isnan(mm) & np.isnan(value)
    bad_time = ~((hh >= 0) & (hh == np.floor(hh)) & (mm >= 0) & (mm < 60) & (mm == np.floor(mm)))
    bad_value = np.isnan(value)
    record_id = per_name([n == "RecordID" for n in names])
    descriptor = per_name([n in DESCRIPTORS for n in names])
    series_param = per_name([n in TIME_SERIES for n in names])
    is_weight = per_name([n == "Weight" for n in names])
    at_admission = hours == 0.0

    # The RecordID row must name the file it sits in.
    file_id = pd.to_numeric(pd.Series(records), errors="coerce").to_numpy(np.float64)[rec]
    mismatch = record_id & ~bad_value & (value != file_id)
    if mismatch.any():
        raise ValueError(f"--src {src}: {int(mismatch.sum())} files whose RecordID line "
                         "differs from the file name")

    converted, summary.conversions = _to_catalogue_units(name, value)
    bounds = np.array([_possible(n) for n in names], dtype=np.float64)[pcode]  # (n, 2)
    coded = per_name([n in ("Gender", "ICUType") for n in names])
    in_range = (converted >= bounds[:, 0]) & (converted <= bounds[:, 1])
    in_range &= ~coded | (converted == np.floor(converted))

    # One fate per row, as an index into FATES: np.select takes the first condition that holds.
    static_row = descriptor & (~is_weight | at_admission)
    fate_conditions = [
        (blank, "blank line"),
        (empty_name, "empty parameter"),
        (bad_time, "unparseable time"),
        (bad_value, "unparseable value"),
        (record_id, "record id"),
        (value == -1.0, "missing (-1)"),
        (~descriptor & ~series_param, "unknown parameter"),
        (~in_range, "out of possible range"),
        (static_row, TO_PATIENTS),
        (descriptor, LATER_WEIGHT),
    ]
    fate = np.select([c for c, _ in fate_conditions],
                     [FATES.index(f) for _, f in fate_conditions], default=FATES.index(KEPT))

    # Non-invasive pressure at the same minute as a kept invasive one: drop the cuff row.
    kept = fate == FATES.index(KEPT)
    inv_code = np.array([_name_code(names, _INVASIVE_OF.get(n)) for n in names])[pcode]
    inv = pd.MultiIndex.from_arrays([rec[kept], hours[kept], pcode[kept]])
    ni = kept & (inv_code >= 0)
    ni_rows = np.flatnonzero(ni)[
        pd.MultiIndex.from_arrays([rec[ni], hours[ni], inv_code[ni]]).isin(inv)]
    fate[ni_rows] = FATES.index("non-invasive duplicate of invasive")
    kept = fate == FATES.index(KEPT)

    counts = np.bincount(pcode * len(FATES) + fate, minlength=len(names) * len(FATES))
    counts = counts.reshape(len(names), len(FATES))  # (parameter name, fate)
    summary.fates = dict(zip(FATES, counts.sum(axis=0).tolist(), strict=True))
    summary.unknown = {("(empty)" if n == "" else str(n)): int(c)
                       for n, c in zip(names, counts[:, FATES.index("unknown parameter")],
                                       strict=True) if c}
    known = [i for i, n in enumerate(names)
             if n in TIME_SERIES or n in DESCRIPTORS or n == "RecordID"]
    table = pd.DataFrame(counts[known], columns=list(FATES),
                         index=pd.Index([str(names[i]) for i in known], name="parameter"))
    table = table.loc[:, table.sum(axis=0) > 0].rename(columns=_SHORT)
    table.insert(0, "read", table.sum(axis=1))
    table.insert(0, "->", [TIME_SERIES.get(p) or DESCRIPTORS.get(p) or "patient_id"
                           for p in table.index])
    summary.per_parameter = table.sort_values("read", ascending=False, kind="stable")

    # Stays: without series = nothing but descriptor/RecordID rows; without valid = series
    # rows present but none kept. Both are kept out of the data.
    series_row = ~blank & ~record_id & ~static_row
    has_series = np.bincount(rec[series_row], minlength=len(records)) > 0
    has_kept = np.bincount(rec[kept], minlength=len(records)) > 0
    summary.without_series = int((~has_series).sum())
    summary.without_valid = int((has_series & ~has_kept).sum())

    outcome_table = _read_outcomes(outcomes)
    absent = ~pd.Index(records).isin(outcome_table.index)
    if absent.any():
        raise ValueError(f"--outcomes {outcomes}: no row for {int(absent.sum())} of the "
                         f"{len(records)} records in --src")
    summary.outcome_rows_unused = int((~outcome_table.index.isin(records)).sum())
    summary.deaths = int(outcome_table.loc[records, "died"].sum())

    descriptor_column = np.array([DESCRIPTORS.get(n, "") for n in names], dtype=object)[pcode]
    statics, summary.weight_from_later_row = _statics(
        rec, descriptor_column, converted, fate == FATES.index(TO_PATIENTS),
        fate == FATES.index(LATER_WEIGHT),
        len(records))
    statics.index = pd.Index(records, name="patient_id")
    patients = statics[has_kept].join(outcome_table[list(OUTCOMES.values())])
    patients = patients.reset_index()
    patients["patient_id"] = patients["patient_id"].astype(str)
    summary.patients = len(patients)

    # Sort on integer codes (record ids are already in string order) before any string
    # column exists: patient, then time, then variable name; stable, so ties keep file order.
    targets = sorted(set(TIME_SERIES.values()))
    var_code = np.array([_name_code(targets, TIME_SERIES.get(n)) for n in names])[pcode]
    order = np.flatnonzero(kept)
    order = order[np.lexsort((var_code[order], hours[order], rec[order]))]
    observations = pd.DataFrame({
        "patient_id": pd.array(np.asarray(records, dtype=object)[rec[order]], dtype=str),
        "time_hours": hours[order],
        "variable": pd.array(np.asarray(targets, dtype=object)[var_code[order]], dtype=str),
        "value": converted[order],
    })
    return ImportResult(observations, patients, summary)


def write_dataset(result: ImportResult, out: Path) -> None:
    """observations.parquet and patients.parquet under out (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    result.observations.to_parquet(out / "observations.parquet", index=False)
    result.patients.to_parquet(out / "patients.parquet", index=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.import_physionet",
        description="Import PhysioNet 2012 challenge records into a vitalcast data directory.")
    parser.add_argument("--src", type=Path, required=True,
                        help="directory or .tar.gz of <RecordID>.txt files")
    parser.add_argument("--outcomes", type=Path, required=True, help="Outcomes-*.txt")
    parser.add_argument("--out", type=Path, required=True, help="data directory to write")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        result = import_physionet(args.src, args.outcomes)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_dataset(result, args.out)
    print(result.summary.format())
    print(f"wrote {args.out}/observations.parquet and patients.parquet in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
