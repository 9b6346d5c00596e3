"""Tensorisation: long-format rows -> a fixed time grid, the same code for training and serving.

A stay becomes, per grid step and measured variable, the GRU-D input triple
(Che et al., 2018): the last observed value in the bin (normalised, carried
forward from earlier bins when the bin is empty), an observed-mask (1 when the
bin itself holds an observation) and the hours since the last observation.
Statics are normalised with a missing-indicator each. Interventions get their
own channels (events summed per bin, rates and states carried forward) and are
never normalised into a measurement.

The window is `grid.n_steps` bins of `grid.step_hours` hours from admission. A
stay longer than the window is seen through its last `n_steps` bins (the window
slides so the latest observation is always inside it); `Tensors.offset` says
how many bins were skipped. Everything is vectorised over rows: one call
tensorises 10,000 stays or the single stay of an HTTP request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from models.catalogue import CATALOGUE, INTERVENTIONS, STATICS

if TYPE_CHECKING:  # imported where a DataFrame is read: the service reads none (~30 MB)
    import pandas as pd

__all__ = [
    "Grid",
    "Normalizer",
    "Tensors",
    "factorize",
    "tensorise",
    "tensorise_codes",
    "tensorise_rows",
]

# Hours-since-last-observation enter the network as log1p(hours) / DELTA_SCALE so that
# the channel is O(1) across a 48 h window.
DELTA_SCALE = float(np.log1p(48.0))
_SEX_CODES = {"male": 1.0, "m": 1.0, "1": 1.0, "female": 0.0, "f": 0.0, "0": 0.0}


@dataclass(frozen=True)
class Grid:
    step_hours: float = 1.0  # width of one bin, hours
    n_steps: int = 48  # bins in the window the model sees (48 h at the default step)

    def to_dict(self) -> dict[str, Any]:
        return {"step_hours": self.step_hours, "n_steps": self.n_steps}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        return cls(step_hours=float(d["step_hours"]), n_steps=int(d["n_steps"]))


@dataclass
class Normalizer:
    """Per-feature location and scale, fitted on the training split only."""

    features: tuple[str, ...]  # measured variables, in channel order
    mean: np.ndarray  # (F,) on the (possibly log1p) transformed scale
    std: np.ndarray  # (F,)
    static_features: tuple[str, ...] = STATICS
    static_mean: np.ndarray = field(default_factory=lambda: np.zeros(len(STATICS)))
    static_std: np.ndarray = field(default_factory=lambda: np.ones(len(STATICS)))

    @classmethod
    def fit(
        cls,
        observations: pd.DataFrame,
        patients: pd.DataFrame | None,
        features: Sequence[str],
        static_features: Sequence[str] = STATICS,
    ) -> Normalizer:
        """Fit on training rows: `observations` long format, `patients` per-patient table."""
        import pandas as pd
        features = tuple(features)
        obs = observations[observations["variable"].isin(features)]
        vals = _transform(obs["variable"], obs["value"].to_numpy(np.float64))
        grouped = pd.Series(vals, index=obs["variable"].to_numpy()).groupby(level=0)
        mean = grouped.mean().reindex(list(features)).fillna(0.0).to_numpy(np.float64)
        std = grouped.std().reindex(list(features)).fillna(1.0).to_numpy(np.float64)
        std = np.where(std > 1e-6, std, 1.0)
        static = _static_matrix(patients, static_features) if patients is not None else None
        s_mean = np.zeros(len(static_features))
        s_std = np.ones(len(static_features))
        if static is not None:
            for j in range(len(static_features)):  # a column may be entirely missing
                col = static[:, j][~np.isnan(static[:, j])]
                if len(col):
                    s_mean[j] = col.mean()
                    s_std[j] = col.std() if col.std() > 1e-6 else 1.0
        return cls(features, mean, std, tuple(static_features), s_mean, s_std)

    def denormalise(self, z: np.ndarray, feature_idx: Sequence[int]) -> np.ndarray:
        """(..., K) normalised values of the features at `feature_idx` -> canonical units
        (the inverse of tensorisation's scaling, log1p undone for log-scale variables)."""
        idx = np.asarray(feature_idx, dtype=np.int64)
        x = np.asarray(z, dtype=np.float64) * self.std[idx] + self.mean[idx]
        logged = np.array([CATALOGUE[self.features[i]].log_scale for i in idx], dtype=bool)
        return np.where(logged, np.expm1(x), x)

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "mean": [float(x) for x in self.mean],
            "std": [float(x) for x in self.std],
            "static_features": list(self.static_features),
            "static_mean": [float(x) for x in self.static_mean],
            "static_std": [float(x) for x in self.static_std],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        features = tuple(str(f) for f in d["features"])
        statics = tuple(str(f) for f in d["static_features"])
        arrays = {k: np.asarray(d[k], dtype=np.float64) for k in
                  ("mean", "std", "static_mean", "static_std")}
        if arrays["mean"].shape != (len(features),) or arrays["std"].shape != (len(features),):
            raise ValueError("normalisation mean/std do not match the feature list")
        if arrays["static_mean"].shape != (len(statics),):
            raise ValueError("static normalisation does not match the static feature list")
        unknown = [f for f in features + statics if f not in CATALOGUE]
        if unknown:
            raise ValueError(f"unknown variables in feature list: {unknown}")
        return cls(features, arrays["mean"], arrays["std"], statics,
                   arrays["static_mean"], arrays["static_std"])

    @property
    def n_static_inputs(self) -> int:
        """Static channels fed to a network: value and missing-indicator per descriptor."""
        return 2 * len(self.static_features)


@dataclass
class Tensors:
    """A batch of stays on the grid. N stays, T steps, F measured features, I interventions."""

    patient_ids: list[str]
    values: np.ndarray  # (N, T, F) float32, normalised, carried forward, 0 before first obs
    mask: np.ndarray  # (N, T, F) float32, 1 where the bin holds an observation
    delta: np.ndarray  # (N, T, F) float32, hours since the last observation at bin end
    static: np.ndarray  # (N, 2*S) float32, normalised statics then missing indicators
    step_mask: np.ndarray  # (N, T) bool, bins from the first to the last observed bin
    offset: np.ndarray  # (N,) int64, bins skipped before the window (long stays)
    interventions: np.ndarray  # (N, T, I) float32, raw units, see module docstring
    grid: Grid

    def __len__(self) -> int:
        return len(self.patient_ids)

    def inputs(self) -> np.ndarray:
        """The per-step network input (N, T, 3F): values, mask, scaled hours-since."""
        scaled = np.log1p(self.delta) / DELTA_SCALE
        return np.concatenate([self.values, self.mask, scaled.astype(np.float32)], axis=2)

    def select(self, index: np.ndarray | Sequence[int]) -> Tensors:
        idx = np.asarray(index)
        return Tensors(
            [self.patient_ids[i] for i in idx], self.values[idx], self.mask[idx],
            self.delta[idx], self.static[idx], self.step_mask[idx], self.offset[idx],
            self.interventions[idx], self.grid,
        )


def _transform(variables: pd.Series, values: np.ndarray) -> np.ndarray:
    """log1p for right-skewed variables, identity otherwise (vectorised over rows)."""
    import pandas as pd
    logged = np.array([CATALOGUE[v].log_scale if v in CATALOGUE else False
                       for v in pd.unique(variables)], dtype=bool)
    codes, uniques = pd.factorize(variables)
    is_log = logged[codes] if len(uniques) else np.zeros(len(values), dtype=bool)
    out = values.astype(np.float64, copy=True)
    out[is_log] = np.log1p(np.clip(out[is_log], 0.0, None))
    return out


def _codes(column: pd.Series, names: Sequence[str]) -> np.ndarray:
    """Position of each row's value in `names`, -1 where absent; one pass over the rows."""
    import pandas as pd
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = column.cat.codes.to_numpy()
        uniques = column.cat.categories
    else:
        codes, uniques = pd.factorize(column)
    lookup = pd.Index([str(n) for n in names]).get_indexer(pd.Index(uniques).astype(str))
    lookup = np.append(lookup, -1)  # code -1 (missing) maps to -1
    return lookup[codes]


def _static_matrix(patients: pd.DataFrame | None, statics: Sequence[str]) -> np.ndarray:
    """(N, S) raw static values, NaN where missing; sex is coded 1 = male, 0 = female."""
    import pandas as pd
    if patients is None:
        return np.zeros((0, len(statics)))
    cols = []
    for name in statics:
        if name not in patients.columns:
            cols.append(np.full(len(patients), np.nan))
        elif name == "sex":
            col = patients[name]
            coded = col.map(lambda s: _SEX_CODES.get(str(s).strip().lower(), np.nan)
                            if not isinstance(s, int | float) else float(s))
            cols.append(pd.to_numeric(coded, errors="coerce").to_numpy(np.float64))
        else:
            cols.append(pd.to_numeric(patients[name], errors="coerce").to_numpy(np.float64))
    return np.stack(cols, axis=1) if cols else np.zeros((len(patients), 0))


def _ffill_index(valid: np.ndarray) -> np.ndarray:
    """Index along axis 1 of the last valid entry at or before each position, -1 if none."""
    n, t = valid.shape[:2]
    pos = np.arange(t).reshape((1, t) + (1,) * (valid.ndim - 2))
    idx = np.where(valid, pos, -1)
    return np.maximum.accumulate(idx, axis=1)


def tensorise(
    observations: pd.DataFrame,
    normalizer: Normalizer,
    grid: Grid = Grid(),  # noqa: B008 - frozen dataclass, safe as a default
    patients: pd.DataFrame | None = None,
    patient_ids: Sequence[str] | None = None,
    interventions: Sequence[str] = INTERVENTIONS,
    until_hours: np.ndarray | None = None,
) -> Tensors:
    """Long-format rows -> `Tensors` on `grid`, normalised with `normalizer`.

    observations: columns patient_id, time_hours, variable, value. Rows of variables the
        normaliser does not know (and that are not interventions) are ignored.
    patients: optional per-patient table indexed by or holding `patient_id`, for statics.
    patient_ids: the stays to return, in this order (default: sorted ids in
        `observations`); a stay without rows gets an empty window.
    until_hours: optional (N,) cut-off per stay: rows at or after it are ignored (used
        for prefixes in training and for the decision time of a what-if).
    """
    import pandas as pd
    obs = observations
    if patient_ids is None:
        patient_ids = sorted(pd.unique(obs["patient_id"].astype(str)))
    ids = [str(p) for p in patient_ids]
    static_raw = _static_matrix(_align_patients(patients, ids), normalizer.static_features)
    return _on_grid(ids, _codes(obs["patient_id"], ids), obs["time_hours"].to_numpy(np.float64),
                    _codes(obs["variable"], normalizer.features),
                    _codes(obs["variable"], interventions),
                    obs["value"].to_numpy(np.float64), static_raw, normalizer, grid,
                    interventions, until_hours)


def factorize(labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct labels in order of first appearance, and each label's (n,) int64
    position among them: a few names, then one C-level lookup per row."""
    names = list(dict.fromkeys(labels))  # TypeError for an unhashable label
    position = {name: i for i, name in enumerate(names)}
    return names, np.fromiter(map(position.__getitem__, labels), np.int64, len(labels))


def tensorise_rows(
    patient: np.ndarray,
    time_hours: np.ndarray,
    variables: Sequence[str],
    value: np.ndarray,
    statics: Sequence[Mapping[str, float | str | None]],
    normalizer: Normalizer,
    grid: Grid = Grid(),  # noqa: B008 - frozen dataclass, safe as a default
    interventions: Sequence[str] = INTERVENTIONS,
) -> Tensors:
    """`tensorise` for rows already in arrays, without pandas: the service's path.

    patient: (n_rows,) stay index of each row, 0..N-1 with N = len(statics); statics: per
    stay, the descriptors given (by catalogue name; absent or None = missing). Gives the
    same Tensors as `tensorise` on the equivalent DataFrames, patient ids "0".."N-1".
    """
    names, variable = factorize(variables)
    return tensorise_codes(patient, time_hours, variable, names, value, statics, normalizer,
                           grid, interventions)


def tensorise_codes(
    patient: np.ndarray,
    time_hours: np.ndarray,
    code: np.ndarray,
    names: Sequence[str],
    value: np.ndarray,
    statics: Sequence[Mapping[str, float | str | None]],
    normalizer: Normalizer,
    grid: Grid = Grid(),  # noqa: B008 - frozen dataclass, safe as a default
    interventions: Sequence[str] = INTERVENTIONS,
) -> Tensors:
    """`tensorise_rows` with each row's variable given as its position `code` in `names`:
    no per-row name lookups (a 256-patient batch has ~56,000 rows)."""
    n = len(statics)
    feature_index = {name: i for i, name in enumerate(normalizer.features)}
    intervention_index = {name: i for i, name in enumerate(interventions)}
    variable = np.asarray(code, dtype=np.int64)
    feat_code = np.array([feature_index.get(v, -1) for v in names], dtype=np.int64)[variable]
    int_code = np.array([intervention_index.get(v, -1) for v in names],
                        dtype=np.int64)[variable]
    static_raw = np.zeros((n, len(normalizer.static_features)))
    for j, name in enumerate(normalizer.static_features):  # a column at a time
        given = [s.get(name) for s in statics]
        if all(type(v) is float or v is None for v in given):  # as a service request has them
            static_raw[:, j] = [math.nan if v is None else v for v in given]
        else:
            static_raw[:, j] = [_static_value(name, v) for v in given]
    return _on_grid([str(i) for i in range(n)], np.asarray(patient, dtype=np.int64),
                    np.asarray(time_hours, dtype=np.float64), feat_code, int_code,
                    np.asarray(value, dtype=np.float64), static_raw, normalizer, grid,
                    interventions, None)


def _static_value(name: str, value: float | str | None) -> float:
    """One raw static as `_static_matrix` codes it (sex: 1 = male, 0 = female)."""
    if value is None:
        return math.nan
    if name == "sex" and not isinstance(value, int | float):
        return _SEX_CODES.get(str(value).strip().lower(), math.nan)
    try:
        return float(value)
    except ValueError:
        return math.nan


def _on_grid(
    ids: list[str],
    pid_code: np.ndarray,
    time: np.ndarray,
    feat_code: np.ndarray,
    int_code: np.ndarray,
    value: np.ndarray,
    static_raw: np.ndarray,
    normalizer: Normalizer,
    grid: Grid,
    interventions: Sequence[str],
    until_hours: np.ndarray | None,
) -> Tensors:
    """The grid from rows as codes (-1: not this stay / feature / intervention)."""
    n, t_steps, step = len(ids), grid.n_steps, grid.step_hours
    features = normalizer.features
    n_f, n_i = len(features), len(interventions)
    keep = pid_code >= 0
    if until_hours is not None:
        keep &= time < np.asarray(until_hours, dtype=np.float64)[np.clip(pid_code, 0, None)]
    is_feat = keep & (feat_code >= 0)
    is_int = keep & (int_code >= 0)

    # Window: the last n_steps bins up to the stay's last measured bin.
    bins_all = np.floor(time / step).astype(np.int64)
    last_bin = np.full(n, -1, dtype=np.int64)
    np.maximum.at(last_bin, pid_code[is_feat], bins_all[is_feat])
    offset = np.maximum(last_bin + 1 - t_steps, 0)

    # Measurements: last value per (stay, bin, feature); bins before the window fold into
    # slot 0 of a (T + 1)-slot array so they still seed carry-forward and hours-since.
    p, f = pid_code[is_feat], feat_code[is_feat]
    tt, raw = time[is_feat], value[is_feat]
    slot = np.clip(bins_all[is_feat] - offset[p] + 1, 0, None)
    flat = (p * (t_steps + 1) + slot) * n_f + f
    # Rows ordered so that a later observation of a stay's feature has a larger row: as
    # they come when each stay's rows are in time order (the usual request: no sort), else
    # sorted by cell, then time (ties keep their order: the later row is the latest).
    if not _in_time_order(p, tt):
        order = np.lexsort((tt, flat))
        f, tt, raw, flat = f[order], tt[order], raw[order], flat[order]
    logged = np.array([CATALOGUE[name].log_scale for name in features], dtype=bool)
    x = np.where(logged[f], np.log1p(np.clip(raw, 0.0, None)), raw)
    z = (x - normalizer.mean[f]) / normalizer.std[f]
    # Each cell's row: its latest (largest) one, -1 for none or when that row's value is
    # NaN. A later slot of a stay's feature has a larger row, so the running maximum over
    # slots is the latest observation at or before each slot (carry-forward), and one
    # gather from the rows fills the grid: row -1 reads the 0 appended for "none". Rows
    # are int32 (under 2^31 rows) and only the window's slots are gathered (a 256-stay
    # batch has ~280,000 cells: half the bytes through every pass).
    shape = (n, t_steps + 1, n_f)
    row_type = np.int32 if len(z) < np.iinfo(np.int32).max else np.int64
    rows = np.arange(len(z), dtype=row_type)
    cell_row = np.full(shape, -1, dtype=row_type)
    cells = cell_row.reshape(-1)
    np.maximum.at(cells, flat, rows)
    cells[flat[(cells[flat] == rows) & np.isnan(z)]] = -1
    src = np.maximum.accumulate(cell_row, axis=1)[:, 1:].astype(np.intp)  # (N, T, F)
    values = np.append(z, 0.0).astype(np.float32)[src]
    bin_end = (offset[:, None] + np.arange(1, t_steps + 1)[None, :]).astype(np.float32) * step
    delta = np.subtract(bin_end[:, :, None], np.append(tt, 0.0).astype(np.float32)[src])
    np.maximum(delta, 0.0, out=delta)

    mask = cell_row[:, 1:] >= 0
    any_obs = mask.any(axis=2)
    first = np.where(any_obs.any(axis=1), any_obs.argmax(axis=1), t_steps)
    lastb = np.where(any_obs.any(axis=1), t_steps - 1 - any_obs[:, ::-1].argmax(axis=1), -1)
    steps = np.arange(t_steps)[None, :]
    step_mask = (steps >= first[:, None]) & (steps <= lastb[:, None])

    # Interventions: events summed per bin, rates/states carried forward.
    # Rows after the window (past the stay's last measured bin) are not part of it.
    iv = np.zeros((n, t_steps, n_i), dtype=np.float64)
    is_int[is_int] = bins_all[is_int] - offset[pid_code[is_int]] < t_steps
    if n_i and is_int.any():
        ip, ic = pid_code[is_int], int_code[is_int]
        itime = time[is_int]
        ival = value[is_int]
        islot = np.clip(bins_all[is_int] - offset[ip] + 1, 0, None)
        modes = np.array([CATALOGUE[name].mode for name in interventions])
        event = modes[ic] == "event"
        ev = np.zeros((n, t_steps + 1, n_i))
        np.add.at(ev, (ip[event], islot[event], ic[event]), ival[event])
        order = np.lexsort((itime[~event], ic[~event], islot[~event], ip[~event]))
        sp, sc, ss, sv = (a[~event][order] for a in (ip, ic, islot, ival))
        cell = (sp * (t_steps + 1) + ss) * n_i + sc
        latest = np.r_[cell[1:] != cell[:-1], True] if len(cell) else np.zeros(0, dtype=bool)
        held = np.full((n, t_steps + 1, n_i), np.nan)
        held.reshape(-1)[cell[latest]] = sv[latest]
        src_i = _ffill_index(~np.isnan(held))
        carried = np.where(src_i >= 0,
                           np.take_along_axis(held, np.clip(src_i, 0, None), axis=1), 0.0)
        iv = np.where((modes == "event")[None, None, :], ev, carried)[:, 1:]

    missing = np.isnan(static_raw)
    static_z = np.where(missing, 0.0,
                        (static_raw - normalizer.static_mean) / normalizer.static_std)
    static = np.concatenate([static_z, missing.astype(np.float64)], axis=1)

    return Tensors(
        patient_ids=ids,
        values=values,
        mask=mask.astype(np.float32),
        delta=delta,
        static=static.astype(np.float32),
        step_mask=step_mask,
        offset=offset,
        interventions=iv.astype(np.float32),
        grid=grid,
    )


def _in_time_order(stay: np.ndarray, time: np.ndarray) -> bool:
    """Whether the rows come stay after stay, each stay's in time order."""
    later = stay[1:] > stay[:-1]
    return bool(np.all(later | ((stay[1:] == stay[:-1]) & (time[1:] >= time[:-1]))))


def _align_patients(patients: pd.DataFrame | None, ids: list[str]) -> pd.DataFrame:
    """The patient table in the order of `ids` (rows of unknown stays all missing)."""
    import pandas as pd
    if patients is None:
        return pd.DataFrame(index=pd.Index(ids, name="patient_id"))
    table = patients
    if "patient_id" in table.columns:
        table = table.set_index(table["patient_id"].astype(str))
    else:
        table = table.set_axis(table.index.astype(str), axis=0)
    return table.reindex(ids)
