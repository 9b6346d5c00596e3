"""Generator throughput: patients per second, simulation alone and with the parquet files.

    python -m benchmarks.synthesize [--patients 100000] [--seed 7]   (from the repo root)

Target (issue 2): 100,000 patients written in under 60 s on the 2-core machine.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from training.synthesize import generate, write_cohort


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    n = args.patients

    t0 = time.perf_counter()
    rows = sum(c.observations.num_rows for c in generate(n, args.seed))
    sim_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = write_cohort(n, args.seed, Path(tmp))
        total_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in paths.values()) / 1e6

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"patients                 {n}")
    print(f"observation rows         {rows}")
    print(f"simulate + tables        {sim_s:.1f} s  ({n / sim_s:,.0f} patients/s)")
    print(f"simulate + write parquet {total_s:.1f} s  ({n / total_s:,.0f} patients/s)"
          f"  target < 60 s: {'ok' if total_s < 60 else 'MISSED'}")
    print(f"files                    {size_mb:.0f} MB")
    print(f"peak memory              {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
