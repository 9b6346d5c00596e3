"""Forward latency (1 patient) and throughput (256 patients) of every network, 48 hourly steps.

    .venv/bin/python -m benchmarks.models [--threads 1] [--repeats 50] [--hidden 64]

Inputs have the real width (every catalogue measurement x 3 channels, every static x 2), a
few leading empty bins per stay, and run in eval mode under torch.inference_mode, as the
service runs them. Latency is the median of `repeats` calls; the Jordan network's ratio to
the Elman network (same run, same settings) is printed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from models.catalogue import MEASUREMENTS, STATICS
from models.networks import ModelConfig, build_model, variants

T = 48


def inputs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, T, 3 * len(MEASUREMENTS), generator=g)
    static = torch.randn(n, 2 * len(STATICS), generator=g)
    first = torch.randint(0, 4, (n, 1), generator=g)
    step_mask = torch.arange(T)[None, :] >= first
    return x, static, step_mask


def timed(model: torch.nn.Module, args: tuple[torch.Tensor, ...], repeats: int) -> float:
    """Median seconds per forward call."""
    times = []
    with torch.inference_mode():
        for _ in range(3):
            model(*args)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(*args)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--repeats", type=int, default=50, help="timed calls per measurement")
    ap.add_argument("--hidden", type=int, default=64, help="recurrent state size")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    one, many = inputs(1), inputs(256)
    print(f"torch {torch.__version__}, {args.threads} thread(s), T={T}, "
          f"inputs={one[0].shape[2]}, static={one[1].shape[1]}, hidden={args.hidden}")
    print(f"{'architecture':<14}{'latency 1 pt (ms)':>20}{'256 pts (ms)':>15}"
          f"{'throughput (pt/s)':>20}")
    latency: dict[str, float] = {}
    for arch, bi in variants():
        extra = {"horizon": 6, "n_targets": 4} if arch == "seq2seq" else {}
        cfg = ModelConfig(arch, one[0].shape[2], one[1].shape[1], hidden=args.hidden,
                          bidirectional=bi, **extra)
        model = build_model(cfg).eval()
        label = f"{arch}{'-bi' if bi else ''}"
        latency[label] = timed(model, one, args.repeats)
        batch = timed(model, many, max(5, args.repeats // 5))
        print(f"{label:<14}{latency[label] * 1e3:>20.3f}{batch * 1e3:>15.1f}"
              f"{256 / batch:>20.0f}")
    ratio = latency["jordan"] / latency["elman"]
    print(f"jordan / elman latency: {ratio:.2f}x (target < 3x)")


if __name__ == "__main__":
    main()
