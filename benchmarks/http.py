"""HTTP serving speed: /v1/predict against the framework's own limit, in one server process.

    python -m benchmarks.http [--rounds 3] [--seconds 10] [--connections 16]
                              [--model-dir DIR] [--generator wrk|python] [--no-cache]
                              [--no-contributions]

Publishes the default model set (benchmarks._server: default bi-LSTM, gru, elman, jordan,
forecast; default sizes, random weights) into a temporary model dir (or serves
`--model-dir`), starts `python -m app` (real uvicorn, one worker, 127.0.0.1) with
VITALCAST_BENCHMARK_ROUTES=1, and drives, alternately and with the same body (one patient,
48 h, 15 variables, 705 observations):

- `/v1/predict`: risk, prognosis, NEWS2 and the explanation (attention and integrated
  gradients) from the default model;
- `/bench/parse`: the same middleware, API-key check and `PredictRequest` parse and
  validation, then a constant answer: what the framework costs before any scoring.

The same body again is what a monitor polling an unchanged series sends, and the service's
prediction cache answers it after the first time; `--no-cache` switches the cache off
(VITALCAST_CACHE_ENTRIES=0) so that every request is scored: the cost of a new series.
`--no-contributions` asks `/v1/predict?contributions=false`: the same answer without the
integrated-gradients contributions, whose backward passes are most of a scored request.

The load generator is wrk (Debian package `wrk`; a Lua script POSTs the body), which is
written in C and far from the bottleneck; without it, a Python asyncio client (httpx) runs
instead, with a warning, and the figures then understate the server. Prints requests/s,
p50 and p99 per round and route, the medians over rounds, the throughput ratio (targets:
>= 0.7, p99 <= 50 ms) and the server's resident memory (VmRSS, target <= 500 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks._server import API_KEY, payload, publish_default_set, serve

ROUTES = {"predict": "/v1/predict", "bare": "/bench/parse"}
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass(frozen=True)
class Run:
    route: str  # "predict" or "bare"
    rps: float  # completed requests per second
    p50_ms: float  # median latency
    p99_ms: float  # 99th percentile latency
    requests: int  # completed requests
    errors: int  # non-2xx responses and socket errors


def _lua(body: bytes) -> str:
    text = body.decode()
    if "]==]" in text:
        raise ValueError("the body cannot be embedded in a Lua long string")
    return ("wrk.method = \"POST\"\n"
            f"wrk.headers[\"Authorization\"] = \"Bearer {API_KEY}\"\n"
            "wrk.headers[\"Content-Type\"] = \"application/json\"\n"
            f"wrk.body = [==[{text}]==]\n")


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def run_wrk(url: str, route: str, script: Path, seconds: float, connections: int) -> Run:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
         "--timeout", "10s", "-s", str(script), url],
        capture_output=True, text=True, check=True).stdout
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    if set(lat) != {"50", "99"}:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(g) for g in sock.groups()) if sock else 0)
    return Run(route, rps, _ms(lat["50"]), _ms(lat["99"]), requests, errors)


async def _python_load(url: str, body: bytes, seconds: float, connections: int
                       ) -> tuple[list[float], int, float]:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        start = time.perf_counter()
        end = start + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, content=body, headers=headers)
                    ok = r.status_code < 300
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - t0) * 1e3)
                errors += not ok

        await asyncio.gather(*(worker() for _ in range(connections)))
        return latencies, errors, time.perf_counter() - start


def run_python(url: str, route: str, body: bytes, seconds: float, connections: int) -> Run:
    latencies, errors, elapsed = asyncio.run(_python_load(url, body, seconds, connections))
    q = statistics.quantiles(latencies, n=100)
    return Run(route, len(latencies) / elapsed, q[49], q[98], len(latencies), errors)


def _check(base_url: str, body: bytes, paths: dict[str, str]) -> None:
    """Both routes answer 200 to the body before anything is timed."""
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for route, path in paths.items():
            r = client.post(path, content=body, headers=headers)
            if r.status_code != 200:
                raise SystemExit(f"{route} ({path}) answered {r.status_code}: {r.text[:300]}")
        pred = client.post(paths["predict"], content=body, headers=headers).json()
        variables = pred["explanation"]["variables"]
        print(f"model {pred['model']['name']}/{pred['model']['version']} "
              f"({pred['model']['architecture']}, bidirectional="
              f"{pred['model']['bidirectional']}); risk {pred['risk']['probability']:.4f}; "
              f"{len(pred['explanation']['attention'])} attention bins, "
              f"{'no' if variables is None else len(variables)} contributions")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the two routes")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of one timed run")
    ap.add_argument("--warmup", type=float, default=3.0, help="untimed load per route first")
    ap.add_argument("--connections", type=int, default=16, help="concurrent connections")
    ap.add_argument("--model-dir", type=Path, help="serve these checkpoints instead")
    ap.add_argument("--generator", choices=("wrk", "python"), default="wrk")
    ap.add_argument("--no-cache", action="store_true",
                    help="score every request: no prediction cache (a new series each time)")
    ap.add_argument("--no-contributions", action="store_true",
                    help="/v1/predict?contributions=false: no integrated gradients")
    args = ap.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on "
          f"{os.cpu_count()} cores; prediction cache {'off' if args.no_cache else 'on'}; "
          f"contributions {'off' if args.no_contributions else 'on'}")
    paths = dict(ROUTES)
    if args.no_contributions:
        paths["predict"] += "?contributions=false"

    generator = args.generator
    if generator == "wrk" and shutil.which("wrk") is None:
        warnings.warn("wrk not found (apt-get install wrk): falling back to a Python asyncio "
                      "client, which may itself be the bottleneck", stacklevel=1)
        generator = "python"
    body = json.dumps(payload()).encode()
    n_obs = len(json.loads(body)["observations"])
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            model_dir = Path(tmp) / "models"
            names = publish_default_set(model_dir)
            print(f"model set: {', '.join(names)} (default sizes, random weights)")
        script = Path(tmp) / "post.lua"
        script.write_text(_lua(body))
        env = {"VITALCAST_CACHE_ENTRIES": "0"} if args.no_cache else {}
        with serve(model_dir, Path(tmp) / "server.log", env=env) as server:
            rss_ready = server.rss_mib()
            _check(server.base_url, body, paths)
            print(f"generator: {generator}; {args.connections} connections; body "
                  f"{len(body):,} bytes, {n_obs} observations; server pid {server.proc.pid}, "
                  f"one uvicorn worker on {server.base_url}")

            def load(route: str, seconds: float) -> Run:
                url = server.base_url + paths[route]
                if generator == "wrk":
                    return run_wrk(url, route, script, seconds, args.connections)
                return run_python(url, route, body, seconds, args.connections)

            for route in ROUTES:
                load(route, args.warmup)
            runs: list[Run] = []
            print(f"{'round':>5} {'route':<9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
                  f"{'requests':>10}{'errors':>8}")
            for i in range(args.rounds):
                for route in ROUTES:
                    r = load(route, args.seconds)
                    runs.append(r)
                    print(f"{i + 1:>5} {route:<9}{r.rps:>9.1f}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}"
                          f"{r.requests:>10}{r.errors:>8}", flush=True)
            rss_end = server.rss_mib()
            anon_end, file_end = server.rss_mib("RssAnon"), server.rss_mib("RssFile")
    med = {route: Run(route, *(statistics.median(getattr(r, k) for r in runs
                                                 if r.route == route)
                               for k in ("rps", "p50_ms", "p99_ms")),
                      sum(r.requests for r in runs if r.route == route),
                      sum(r.errors for r in runs if r.route == route))
           for route in ROUTES}
    ratio = med["predict"].rps / med["bare"].rps
    print("median over rounds:")
    for route, path in ROUTES.items():
        m = med[route]
        print(f"  {path:<13} {m.rps:8.1f} req/s  p50 {m.p50_ms:6.1f} ms  p99 {m.p99_ms:6.1f} ms"
              f"  ({m.requests} requests, {m.errors} errors)")
    p99 = med["predict"].p99_ms
    print(f"throughput ratio predict / bare: {ratio:.2f} (target >= 0.7: "
          f"{'PASS' if ratio >= 0.7 else 'FAIL'}); predict p99 {p99:.1f} ms (target <= 50 ms: "
          f"{'PASS' if p99 <= 50 else 'FAIL'})")
    print(f"server RSS (VmRSS): {rss_ready:.0f} MiB when ready, {rss_end:.0f} MiB after the "
          f"load (target <= 500 MB: {'PASS' if rss_end * 1.048576 <= 500 else 'FAIL'})")
    # Pages of the shared libraries (libtorch_cpu alone is ~500 MB on disk) count once the
    # process maps them; the kernel maps those in its page cache around each page touched,
    # so a venv installed minutes ago shows tens of MiB more than the same code later on.
    print(f"  after the load: {anon_end:.0f} MiB the process's own (RssAnon), {file_end:.0f} "
          "MiB mapped from files (RssFile: libraries, as many pages as the page cache holds)")
    if any(m.errors for m in med.values()):
        sys.exit("some requests failed")


if __name__ == "__main__":
    main()
