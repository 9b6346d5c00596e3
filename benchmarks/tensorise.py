"""Tensorisation speed: N synthetic stays (default 10,000) onto the 48-step hourly grid.

    python -m benchmarks.tensorise [--patients 10000] [--seed 7]

Prints rows, seconds and patients/s for one `tensorise` call over the whole cohort, and
for comparison the single-request path (one stay per call). Target (issue 2): 10,000
patients in under 10 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from models.catalogue import CORE_MEASUREMENTS
from models.features import Grid, Normalizer, tensorise
from training.synthesize import write_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_cohort(args.patients, args.seed, Path(tmp))
        obs = pd.read_parquet(Path(tmp) / "observations.parquet")
        patients = pd.read_parquet(Path(tmp) / "patients.parquet")
    norm = Normalizer.fit(obs, patients, CORE_MEASUREMENTS)
    t0 = time.perf_counter()
    tensors = tensorise(obs, norm, Grid(), patients=patients)
    batch_s = time.perf_counter() - t0
    one = obs[obs.patient_id == tensors.patient_ids[0]]
    t0 = time.perf_counter()
    reps = 200
    for _ in range(reps):
        tensorise(one, norm, Grid(), patients=patients)
    single_ms = (time.perf_counter() - t0) / reps * 1e3
    print(f"rows: {len(obs):,}  stays: {len(tensors):,}  shape: {tensors.values.shape}")
    print(f"batch tensorise: {batch_s:.2f} s  ({len(tensors) / batch_s:,.0f} patients/s)"
          f"  target < 10 s: {'PASS' if batch_s < 10 else 'FAIL'}")
    print(f"single request:  {single_ms:.2f} ms per stay ({len(one)} rows)")


if __name__ == "__main__":
    main()
