"""NEWS2, the National Early Warning Score 2 (Royal College of Physicians, 2017).

The clinical baseline of every evaluation: the aggregate score from the latest
respiration rate, SpO2 (scale 1), supplemental oxygen, systolic blood pressure,
pulse, consciousness and temperature, band by band as the published chart prints
them:

| parameter | 3 | 2 | 1 | 0 | 1 | 2 | 3 |
|---|---|---|---|---|---|---|---|
| resp_rate (/min) | <=8 | | 9-11 | 12-20 | | 21-24 | >=25 |
| spo2, scale 1 (%) | <=91 | 92-93 | 94-95 | >=96 | | | |
| fio2 (air or oxygen) | | oxygen | | air | | | |
| sbp (mmHg) | <=90 | 91-100 | 101-110 | 111-219 | | | >=220 |
| heart_rate (/min) | <=40 | | 41-50 | 51-90 | 91-110 | 111-130 | >=131 |
| gcs (consciousness) | | | | 15 = alert | | | <15 = new confusion / CVPU |
| temperature (Cel) | <=35.0 | | 35.1-36.0 | 36.1-38.0 | 38.1-39.0 | >=39.1 | |

Band-edge rule for values between the chart's printed numbers. The chart is
printed at a resolution (whole numbers; temperature to 0.1 degC) and a value is
first rounded half up to that resolution, then looked up: a respiration rate of
8.5 is 9 (1 point), a temperature of 35.05 is 35.1 (1 point), 35.04 is 35.0 (3
points), a GCS of 14.5 is 15 (alert). Equivalently, every cut lies half a chart
unit above the printed upper bound. Supplemental oxygen is any fio2 above room
air (0.21) at the recorded resolution of 0.01 (0.214 is air, 0.215 is oxygen);
consciousness is "not alert" for any GCS below 15 after rounding.

A parameter with no value (absent or NaN) scores 0 and is reported as missing,
so a score from incomplete observations is a lower bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where a DataFrame is read: the service reads none (~30 MB)
    import pandas as pd

__all__ = [
    "NEWS2_PARAMETERS",
    "news2",
    "news2_from_observations",
    "news2_missing",
    "news2_points",
]

# The seven parameters, by their catalogue names, in the chart's order.
NEWS2_PARAMETERS: tuple[str, ...] = (
    "resp_rate",
    "spo2",
    "fio2",
    "sbp",
    "heart_rate",
    "gcs",
    "temperature",
)

# Per banded parameter: chart resolution, then (upper bound as printed, points) for each band
# from the lowest up; the last band is open above.
_BANDS: dict[str, tuple[float, tuple[tuple[float, int], ...], int]] = {
    "resp_rate": (1.0, ((8, 3), (11, 1), (20, 0), (24, 2)), 3),
    "spo2": (1.0, ((91, 3), (93, 2), (95, 1)), 0),
    "sbp": (1.0, ((90, 3), (100, 2), (110, 1), (219, 0)), 3),
    "heart_rate": (1.0, ((40, 3), (50, 1), (90, 0), (110, 1), (130, 2)), 3),
    "temperature": (0.1, ((35.0, 3), (36.0, 1), (38.0, 0), (39.0, 1)), 2),
}
# Per banded parameter: resolution, the bands' cuts (upper bound plus a rounding margin,
# ascending) and the points of each band with the open top band's last.
_BAND_LOOKUP = {
    name: (resolution, np.array([upper + resolution * 1e-6 for upper, _ in bands]),
           np.array([points for _, points in bands] + [top], dtype=np.int64))
    for name, (resolution, bands, top) in _BANDS.items()
}
ROOM_AIR_FIO2 = 0.21  # fio2 above this counts as supplemental oxygen (2 points)
OXYGEN_POINTS = 2
NOT_ALERT_POINTS = 3


def _round_half_up(x: np.ndarray, resolution: float) -> np.ndarray:
    """Round to the chart's resolution, halves up; the tiny epsilon absorbs binary error
    (35.05 is stored as 35.04999...)."""
    return np.floor(x / resolution + 0.5 + 1e-9) * resolution


def news2_points(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Points per parameter, vectorised: `values[p]` is a float array (NaN = missing),
    all the same shape; returns int64 arrays of that shape for every NEWS2 parameter
    (0 where missing). Parameters absent from `values` score 0 everywhere."""
    shape = np.shape(next(iter(values.values()))) if values else (0,)
    out: dict[str, np.ndarray] = {}
    for name in NEWS2_PARAMETERS:
        x = np.asarray(values.get(name, np.full(shape, np.nan)), dtype=np.float64)
        if x.shape != shape:
            raise ValueError(f"news2: {name} has shape {x.shape}, expected {shape}")
        present = ~np.isnan(x)
        pts = np.zeros(shape, dtype=np.int64)
        if name in _BANDS:
            resolution, cuts, band_points = _BAND_LOOKUP[name]
            r = _round_half_up(np.where(present, x, 0.0), resolution)
            # The lowest band whose cut r does not exceed: the first cut >= r.
            pts = band_points[np.searchsorted(cuts, r, side="left")]
        elif name == "fio2":
            r = _round_half_up(np.where(present, x, ROOM_AIR_FIO2), 0.01)
            pts = np.where(r > ROOM_AIR_FIO2 + 1e-6, OXYGEN_POINTS, 0)
        elif name == "gcs":
            pts = np.where(_round_half_up(np.where(present, x, 15.0), 1.0) < 15,
                           NOT_ALERT_POINTS, 0)
        out[name] = np.where(present, pts, 0).astype(np.int64)
    return out


def _check_mapping(latest: Mapping[str, float]) -> dict[str, np.ndarray]:
    vals: dict[str, np.ndarray] = {}
    for name in NEWS2_PARAMETERS:
        v = latest.get(name)
        vals[name] = np.array([np.nan if v is None else float(v)], dtype=np.float64)
    return vals


def news2(latest: Mapping[str, float]) -> tuple[int, dict[str, int]]:
    """NEWS2 of one patient from the latest value of each parameter (catalogue names;
    other keys are ignored). Returns (score, points per parameter; 0 where missing)."""
    pts = news2_points(_check_mapping(latest))
    parts = {name: int(p[0]) for name, p in pts.items()}
    return sum(parts.values()), parts


def news2_missing(latest: Mapping[str, float]) -> tuple[str, ...]:
    """The NEWS2 parameters without a value in `latest` (absent, None or NaN)."""
    vals = _check_mapping(latest)
    return tuple(name for name in NEWS2_PARAMETERS if np.isnan(vals[name][0]))


def news2_from_observations(
    observations: pd.DataFrame, cutoff_hour: float | None = None
) -> pd.DataFrame:
    """NEWS2 per patient from long-format observations (patient_id, time_hours, variable,
    value), using the latest value of each parameter at or before `cutoff_hour` (all rows
    when None). Every patient with any row in `observations` gets a row, even with no NEWS2
    parameter at all (score 0, all missing).

    Returns a frame indexed by patient_id (sorted) with columns `score`, `n_missing`,
    `missing` (comma-separated parameter names), and per parameter `latest_<p>` (float,
    NaN when missing) and `points_<p>` (int).
    """
    import pandas as pd
    required = {"patient_id", "time_hours", "variable", "value"}
    absent = required - set(observations.columns)
    if absent:
        raise ValueError(f"news2_from_observations: missing columns {sorted(absent)}")
    pids = pd.Index(pd.unique(observations["patient_id"].astype(str))).sort_values()
    obs = observations
    if cutoff_hour is not None:
        obs = obs[obs["time_hours"] <= cutoff_hour]
    obs = obs[obs["variable"].isin(NEWS2_PARAMETERS) & obs["value"].notna()]
    # Stable sort by time, then the last row per (patient, variable) is the latest value.
    obs = obs.sort_values("time_hours", kind="stable")
    last = obs.groupby([obs["patient_id"].astype(str), "variable"], sort=False)["value"].last()
    wide = last.unstack("variable").reindex(index=pids, columns=list(NEWS2_PARAMETERS))
    wide.index.name = "patient_id"
    values = {p: wide[p].to_numpy(np.float64) for p in NEWS2_PARAMETERS}
    pts = news2_points(values)
    missing_mat = np.column_stack([np.isnan(values[p]) for p in NEWS2_PARAMETERS])
    names = np.array(NEWS2_PARAMETERS, dtype=object)
    missing = [",".join(names[row]) for row in missing_mat]
    out = pd.DataFrame(index=wide.index)
    out["score"] = np.sum([pts[p] for p in NEWS2_PARAMETERS], axis=0).astype(np.int64)
    out["n_missing"] = missing_mat.sum(axis=1).astype(np.int64)
    out["missing"] = missing
    for p in NEWS2_PARAMETERS:
        out[f"latest_{p}"] = values[p]
        out[f"points_{p}"] = pts[p]
    return out
