"""The fast batch decoder's per-patient names (app/plainbody.py `_columns`): each patient's
distinct variables in order of first appearance and each row's position among them, as the
general path gives, for batches of many catalogue variables, repeated variables, patients
of one row and of hundreds, as rows and as columns (seeded; the hypothesis test in
test_plainbody.py draws from three names and a few rows)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from app.plainbody import decode_plain_batch
from app.schemas import POSSIBLE, STATES
from tests.app.test_columns import as_columns
from tests.app.test_plainbody import _general, _validated

NAMES = sorted(POSSIBLE)


def _batch(seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    patients = []
    for i in range(int(rng.integers(1, 30))):
        pool = rng.choice(NAMES, size=int(rng.integers(1, len(NAMES) + 1)), replace=False)
        rows = []
        for _ in range(int(rng.choice([1, 1, 2, 7, 40, 150]))):
            name = str(rng.choice(pool))
            lo, hi = POSSIBLE[name]
            value = (int(rng.integers(0, 2)) if name in STATES
                     else round(float(rng.uniform(max(lo, 0.0), min(hi, 500.0))), 3))
            rows.append({"time": round(float(rng.uniform(0, 200)), 2), "variable": name,
                         "value": value})
        patients.append({"patient_id": f"p{i}", "observations": rows})
    return patients


@pytest.mark.parametrize("seed", range(12))
def test_each_patients_names_in_order_of_first_appearance_as_the_general_path(
        seed: int) -> None:
    patients = _batch(seed)
    for form in (patients, [as_columns(p) for p in patients]):
        body = json.dumps({"patients": form}).encode()
        fast = decode_plain_batch(body)
        assert fast is not None
        assert _validated(fast) == _general(body)
        for patient, decoded in zip(patients, fast["patients"], strict=True):
            variables = [row["variable"] for row in patient["observations"]]
            names = decoded["observations"].names
            assert names == list(dict.fromkeys(variables))
            assert [names[c] for c in decoded["observations"].code.tolist()] == variables
