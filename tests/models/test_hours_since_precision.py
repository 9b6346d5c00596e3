"""Hours since the last observation are computed in float32 (models/features.py `_on_grid`):
the grid against a float64 reference written out cell by cell, for stays far from
admission (up to the ten years a request may span), windows that slid (offset > 0), rows
out of order, and rows of interventions and unknown variables mixed in. Values and mask
are exact; hours-since within float32's resolution of the bin end's hour (0.016 h, under a
minute, at 87,600 h; 1e-4 h within the first 1,000 h)."""

from __future__ import annotations

import numpy as np
import pytest

from models.catalogue import CATALOGUE, INTERVENTIONS
from models.features import Grid, Normalizer, tensorise_codes

FEATURES = ("heart_rate", "lactate", "sbp")
NORM = Normalizer(FEATURES, np.array([90.0, 1.0, 120.0]), np.array([15.0, 0.5, 20.0]))
NAMES = [*FEATURES, *INTERVENTIONS[:2], "glucose"]  # glucose: not a feature here


def _reference(patient: np.ndarray, time: np.ndarray, code: np.ndarray, value: np.ndarray,
               n: int, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(values, mask, delta, offset) in float64, one stay, feature and bin at a time."""
    t_steps, step, n_f = grid.n_steps, grid.step_hours, len(FEATURES)
    values = np.zeros((n, t_steps, n_f))
    mask = np.zeros((n, t_steps, n_f))
    delta = np.zeros((n, t_steps, n_f))
    offset = np.zeros(n, dtype=np.int64)
    is_feat = code < n_f
    bins = np.floor(time / step).astype(np.int64)
    for s in range(n):
        mine = is_feat & (patient == s)
        offset[s] = max(int(bins[mine].max()) + 1 - t_steps, 0) if mine.any() else 0
        for f, name in enumerate(FEATURES):
            rows = np.flatnonzero(mine & (code == f))
            for k in range(t_steps):
                b = offset[s] + k
                bin_end = (b + 1) * step
                seen = rows[bins[rows] <= b]
                mask[s, k, f] = float((bins[rows] == b).any())
                if not seen.size:
                    delta[s, k, f] = bin_end
                    continue
                last = seen[np.argmax(time[seen])]  # distinct times: no ties
                raw = value[last]
                x = np.log1p(max(raw, 0.0)) if CATALOGUE[name].log_scale else raw
                values[s, k, f] = (x - NORM.mean[f]) / NORM.std[f]
                delta[s, k, f] = max(bin_end - time[last], 0.0)
    return values, mask, delta, offset


@pytest.mark.parametrize("step", [1.0, 0.25, 1 / 3])
@pytest.mark.parametrize("start", [0.0, 700.0, 9_950.0, 87_400.0])
def test_hours_since_match_a_float64_reference_far_from_admission(step: float,
                                                                   start: float) -> None:
    rng = np.random.default_rng(int(start) + int(step * 100))
    grid, n, n_rows = Grid(step, 24), 4, 300
    patient = rng.integers(0, n, n_rows)
    # stays that span more than the window: it slides (offset > 0), carried values come in
    time = start + rng.uniform(0.0, 60.0 * step, n_rows)
    code = rng.integers(0, len(NAMES), n_rows)
    value = rng.uniform(0.5, 150.0, n_rows)
    # far from admission, rows in no order at all (the sorted path); else stay by stay in
    # time order (the path without a sort)
    order = rng.permutation(n_rows) if start else np.lexsort((time, patient))
    patient, time, code, value = patient[order], time[order], code[order], value[order]
    got = tensorise_codes(patient, time, code, NAMES, value, [{}] * n, NORM, grid)
    values, mask, delta, offset = _reference(patient, time, code, value, n, grid)

    assert got.offset.tolist() == offset.tolist() and (offset > 0).any()
    np.testing.assert_array_equal(got.mask, mask)
    np.testing.assert_allclose(got.values, values, rtol=1e-6, atol=1e-6)
    assert got.delta.dtype == np.float32 and (got.delta >= 0).all()
    # the bin end and the row's hour each rounded to float32 once
    bin_end = ((offset[:, None] + np.arange(1, grid.n_steps + 1)) * step)[:, :, None]
    tolerance = 2 * np.spacing(np.float32(bin_end)) + 1e-6
    error = np.abs(got.delta.astype(np.float64) - delta)
    assert (error <= tolerance).all(), float(error.max())
    # what the network reads of it: log1p(hours) / log1p(48)
    assert np.abs(got.inputs()[:, :, 2 * len(FEATURES):]
                  - np.log1p(delta) / np.log1p(48.0)).max() < 5e-3
    if start < 1_000:
        assert error.max() < 1e-4
