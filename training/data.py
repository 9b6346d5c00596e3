"""Reading a data directory: observations, patients and (for synthetic cohorts) truth.

A data directory holds `observations.parquet` (or `.csv`), `patients.parquet` (or
`.csv`) and optionally `truth.parquet` (or `.csv`) and `counterfactuals.parquet` (treated
synthetic cohorts, issue 11), as `python -m training.synthesize`
and `python -m training.import_physionet` write them. `load_dataset` checks the columns
and types, coerces `patient_id` to str, and fingerprints the directory: a sha256 over
the names and bytes of the files it read, so a checkpoint records exactly which data it
was trained on and `evaluate` can tell the training data from other data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.catalogue import CATALOGUE

__all__ = [
    "DataError",
    "Dataset",
    "fingerprint_files",
    "load_dataset",
]

_TABLES = ("observations", "patients", "truth", "counterfactuals")
_REQUIRED = {
    "observations": ("patient_id", "time_hours", "variable", "value"),
    "patients": ("patient_id", "died", "los_days"),
    "truth": ("patient_id", "true_risk", "onset_hour", "driven"),
    "counterfactuals": ("patient_id", "decision_hour", "plan", "true_risk"),
}
_CHUNK_BYTES = 1 << 20


class DataError(ValueError):
    """A data directory that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Dataset:
    observations: pd.DataFrame  # long format: patient_id str, time_hours, variable, value
    patients: pd.DataFrame  # one row per stay: patient_id str, statics, died, los_days
    truth: pd.DataFrame | None  # synthetic ground truth (true_risk, onset_hour, driven)
    fingerprint: str  # sha256 hex over the files read (names and contents)
    # per (patient, plan): decision_hour, plan, true_risk, map_1..map_6 (issue 11)
    counterfactuals: pd.DataFrame | None = None


def _find(directory: Path, table: str) -> Path | None:
    for suffix in (".parquet", ".csv"):
        p = directory / f"{table}{suffix}"
        if p.is_file():
            return p
    return None


def fingerprint_files(paths: list[Path]) -> str:
    """sha256 over each file's name and bytes, in the given order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(b"\0")
        with p.open("rb") as f:
            while block := f.read(_CHUNK_BYTES):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _read(path: Path, table: str) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype={"patient_id": str, "variable": str, "driven": str},
                             keep_default_na=True)
    except Exception as exc:  # pyarrow/pandas raise many types; name the file either way
        raise DataError(f"{path}: cannot read {table} table: {exc}") from exc
    missing = [c for c in _REQUIRED[table] if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; "
                        f"found {', '.join(map(str, df.columns))}")
    if df["patient_id"].isna().any():
        raise DataError(f"{path}: {int(df['patient_id'].isna().sum())} row(s) without patient_id")
    df["patient_id"] = df["patient_id"].astype(str)
    return df


def _numeric(df: pd.DataFrame, path: Path, cols: tuple[str, ...]) -> None:
    for c in cols:
        try:
            df[c] = pd.to_numeric(df[c]).astype(np.float64)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}: column {c} is not numeric ({exc})") from exc


def load_dataset(directory: str | Path) -> Dataset:
    """Read and check a data directory; DataError (naming the file) when it is unusable."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory")
    paths = {t: _find(directory, t) for t in _TABLES}
    obs_path, pat_path = paths["observations"], paths["patients"]
    if obs_path is None or pat_path is None:
        t = "observations" if obs_path is None else "patients"
        raise DataError(f"{directory}: no {t}.parquet or {t}.csv")

    observations = _read(obs_path, "observations")
    _numeric(observations, obs_path, ("time_hours", "value"))
    observations["variable"] = observations["variable"].astype(str)
    unknown_vars = sorted(set(observations["variable"].unique()) - set(CATALOGUE))
    if unknown_vars:
        raise DataError(f"{obs_path}: unknown variable(s) {', '.join(unknown_vars[:10])}; "
                        "see models/catalogue.py")
    if (observations["time_hours"] < 0).any() or observations["time_hours"].isna().any():
        raise DataError(f"{obs_path}: time_hours must be present and >= 0")

    patients = _read(pat_path, "patients")
    _numeric(patients, pat_path, ("died", "los_days"))
    if patients["patient_id"].duplicated().any():
        dup = int(patients["patient_id"].duplicated().sum())
        raise DataError(f"{pat_path}: {dup} duplicated patient_id(s)")
    if not patients["died"].dropna().isin([0.0, 1.0]).all():
        raise DataError(f"{pat_path}: died must be 0 or 1")
    if patients["died"].notna().all():
        patients["died"] = patients["died"].astype(np.int64)  # else float, NaN = unknown
    unknown = ~observations["patient_id"].isin(patients["patient_id"])
    if unknown.any():
        n_unknown = observations.loc[unknown, "patient_id"].nunique()
        raise DataError(f"{obs_path}: {n_unknown} patient_id(s) not in {pat_path.name}")

    truth = None
    if paths["truth"] is not None:
        truth = _read(paths["truth"], "truth")
        _numeric(truth, paths["truth"], ("true_risk", "onset_hour"))
        truth["driven"] = truth["driven"].fillna("").astype(str)

    counterfactuals = None
    if paths["counterfactuals"] is not None:
        counterfactuals = _read(paths["counterfactuals"], "counterfactuals")
        _numeric(counterfactuals, paths["counterfactuals"], ("decision_hour", "true_risk"))
        counterfactuals["plan"] = counterfactuals["plan"].astype(str)

    read = [p for p in paths.values() if p is not None]
    return Dataset(observations, patients, truth, fingerprint_files(read), counterfactuals)
