"""Soak: a real uvicorn server on 127.0.0.1 under mixed valid and invalid traffic.

    python -m benchmarks.soak [--seconds 60] [--concurrency 32] [--reload-during]
                              [--model-dir DIR] [--max-requests N] [--seed S] [--no-cache]

Starts `python -m app` on a free loopback port with a tiny model in a temporary model dir
(or a copy-free `--model-dir` of your own), warms it up, then keeps `--concurrency`
connections busy for `--seconds` with a seeded mix of requests: valid single and batch
predictions and the classes of bad input a client sends by mistake (unknown variable,
impossible value, NaN, no key, wrong key, body over the limit, duplicate key, absurd
nesting). Every response is checked against the status its kind must get; anything else,
any 5xx and any connection error counts as a failure.

Prints requests, responses by status, failures, connection errors and the server's
resident memory (VmRSS from /proc/<pid>/status) when ready, after warm-up and at the end,
with the growth from warm-up to end, plus samples through the run. Warm-up (`--warmup`
seconds of the same mix) is start-up cost, not a leak: torch's first forward passes, one
allocator arena per worker thread, each grown to the largest request it has held.

With `--reload-during`, halfway through it publishes a new version of the model and calls
POST /v1/models/reload with the admin key, then reports failed requests and whether every
prediction that started after the reload answered on the new version.

The valid requests repeat a few bodies, which the service's prediction cache answers after
the first time; `--no-cache` (VITALCAST_CACHE_ENTRIES=0) makes every one of them run the
network and its integrated gradients.

Bounded in time (`--seconds`) and count (`--max-requests`); loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.app.support import ADMIN, ADMIN_KEY, USER, USER_KEY, make_checkpoint, request_body

__all__ = ["KINDS", "Server", "SoakResult", "free_port", "run_soak", "serve"]

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
BODY_LIMIT = 64 * 1024  # the server's VITALCAST_MAX_BODY_BYTES: "too large" stays cheap
JSON = {"Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path  # the server's stdout and stderr

    def rss_kib(self) -> int:
        """Resident memory of the server process (VmRSS), KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("VmRSS not found")


@contextmanager
def serve(model_dir: Path, log_path: Path, *, argv: Sequence[str] | None = None,
          env: dict[str, str] | None = None, ready_timeout: float = 90.0) -> Iterator[Server]:
    """A real server process on a free loopback port (default `python -m app`), with the
    test keys; yields once /healthz answers, terminates it on exit."""
    port = free_port()
    full_env = {**os.environ, "VITALCAST_MODEL_DIR": str(model_dir),
                "VITALCAST_API_KEYS": USER_KEY, "VITALCAST_ADMIN_KEYS": ADMIN_KEY,
                "VITALCAST_HOST": HOST, "VITALCAST_PORT": str(port),
                "VITALCAST_MAX_BODY_BYTES": str(BODY_LIMIT), **(env or {})}
    cmd = [sys.executable, *(argv or ["-m", "app"])]
    cmd = [c.replace("{port}", str(port)) for c in cmd]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT)
        server = Server(proc, f"http://{HOST}:{port}", log_path)
        try:
            deadline = time.monotonic() + ready_timeout
            with httpx.Client(base_url=server.base_url, timeout=5) as client:
                while True:
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if proc.poll() is not None:
                        raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
                    if time.monotonic() > deadline:
                        raise RuntimeError("server did not start in time")
                    time.sleep(0.2)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- the request mix ------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    name: str
    weight: int  # relative frequency in the mix
    path: str
    headers: dict[str, str]
    content: bytes
    expect: int  # the status this kind must get


def _body(**overrides: object) -> bytes:
    return json.dumps(request_body(**overrides)).encode()


def _kinds() -> list[Kind]:
    valid = request_body()
    big = request_body(observations=[{"time": 0.001 * i, "variable": "heart_rate", "value": 80}
                                     for i in range(2000)])
    nan = _body().replace(b'"value": 118', b'"value": NaN')
    dup = _body().replace(b'"value": 118', b'"value": 118, "value": 181')
    user, admin = {**USER, **JSON}, {**ADMIN, **JSON}
    return [
        Kind("valid", 30, "/v1/predict", user, _body(), 200),
        Kind("valid_admin_key", 5, "/v1/predict", admin, _body(patient_id="adm"), 200),
        Kind("batch", 10, "/v1/predict/batch", user,
             json.dumps({"patients": [valid] * 4}).encode(), 200),
        Kind("bad_variable", 8, "/v1/predict", user, _body(observations=[
            {"time": 1.0, "variable": "heart_rat", "value": 90}]), 422),
        Kind("impossible_value", 8, "/v1/predict", user, _body(observations=[
            {"time": 1.0, "variable": "temperature", "value": 98.6}]), 422),
        Kind("nan", 8, "/v1/predict", user, nan, 422),
        Kind("no_auth", 8, "/v1/predict", JSON, _body(), 401),
        Kind("wrong_key", 8, "/v1/predict", {"Authorization": "Bearer not-a-key", **JSON},
             _body(), 401),
        Kind("too_large", 5, "/v1/predict", user, json.dumps(big).encode(), 413),
        Kind("duplicate_key", 5, "/v1/predict", user, dup, 422),
        Kind("deep_nesting", 5, "/v1/predict", user, b"[" * 20000 + b"]" * 20000, 422),
    ]


KINDS = _kinds()


# --- the soak -------------------------------------------------------------------------------

@dataclass
class SoakResult:
    seconds: float  # wall time of the loaded phase
    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # "kind: got STATUS" / "kind: Exc"
    connection_errors: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, valid predictions only
    warmup_requests: int = 0  # sent before the measured phase (failures still count)
    rss_ready_kib: int = 0
    rss_warm_kib: int = 0
    rss_end_kib: int = 0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (s into soak, KiB)
    # reload during the soak
    old_version: str | None = None
    new_version: str | None = None
    reload_status: int | None = None
    reload_seconds: float | None = None
    versions_after_reload: Counter[str] = field(default_factory=Counter)
    server_warnings: list[str] = field(default_factory=list)  # WARNING/ERROR lines it logged

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.by_status.items() if s >= 500)

    @property
    def rss_growth(self) -> float:
        return (self.rss_end_kib - self.rss_warm_kib) / self.rss_warm_kib

    def lines(self) -> list[str]:
        lat = sorted(self.latencies) or [float("nan")]
        out = [
            f"requests            {self.requests} in {self.seconds:.1f} s "
            f"({self.requests / self.seconds:.1f}/s), after {self.warmup_requests} warm-up",
            "by status           " + ", ".join(f"{s}: {n}" for s, n in
                                               sorted(self.by_status.items())),
            f"5xx                 {self.server_errors}",
            f"connection errors   {self.connection_errors}",
            f"failed requests     {self.failed}"
            + (" (" + ", ".join(f"{k}: {n}" for k, n in self.failures.items()) + ")"
               if self.failures else ""),
            f"valid latency       p50 {lat[len(lat) // 2] * 1000:.0f} ms, "
            f"p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000:.0f} ms",
            f"server RSS          ready {self.rss_ready_kib / 1024:.1f} MiB, after warm-up "
            f"{self.rss_warm_kib / 1024:.1f} MiB, end {self.rss_end_kib / 1024:.1f} MiB, "
            f"growth {self.rss_growth * 100:+.2f} %",
            "RSS over time       " + ", ".join(f"{t:.0f}s {kib / 1024:.0f}"
                                               for t, kib in self.rss_samples) + " MiB",
        ]
        out += [f"server warning      {line[:200]}" for line in self.server_warnings]
        if self.new_version is not None:
            after = ", ".join(f"{v}: {n}" for v, n in sorted(self.versions_after_reload.items()))
            out += [
                f"reload              {self.old_version} -> {self.new_version}: HTTP "
                f"{self.reload_status} in {self.reload_seconds:.2f} s",
                f"served after reload {after or 'none'}",
                f"version switched    {self.switched}",
            ]
        return out

    @property
    def switched(self) -> bool:
        return (self.new_version is not None and self.new_version != self.old_version
                and set(self.versions_after_reload) == {self.new_version})


def _version(kind: Kind, response: httpx.Response) -> str | None:
    if kind.expect != 200 or response.status_code != 200:
        return None
    body = response.json()
    first = body["results"][0] if "results" in body else body
    return str(first["model"]["version"])


# Load goes on at least this long after a reload answered, whatever the deadline or budget,
# so that "served after reload" is measured even when publishing is slow or requests fast.
AFTER_RELOAD_SECONDS = 1.0


def _keep_going(deadline: float, budget: list[int], reload_wanted: bool,
                reload_done: list[float]) -> bool:
    now = time.monotonic()
    if reload_wanted and (not reload_done or now < reload_done[0] + AFTER_RELOAD_SECONDS):
        return True
    return now < deadline and budget[0] > 0


async def _worker(client: httpx.AsyncClient, rng: random.Random, deadline: float,
                  budget: list[int], result: SoakResult, reload_done: list[float],
                  reload_wanted: bool = False) -> None:
    weights = [k.weight for k in KINDS]
    while _keep_going(deadline, budget, reload_wanted, reload_done):
        budget[0] -= 1
        kind = rng.choices(KINDS, weights)[0]
        started = time.monotonic()
        try:
            r = await client.post(kind.path, content=kind.content, headers=kind.headers)
        except httpx.TransportError as e:
            result.requests += 1
            result.connection_errors += 1
            result.failures[f"{kind.name}: {type(e).__name__} {e}".strip()] += 1
            continue
        result.requests += 1
        result.by_status[r.status_code] += 1
        result.by_kind[kind.name] += 1
        if r.status_code != kind.expect:
            result.failures[f"{kind.name}: got {r.status_code}"] += 1
            continue
        version = _version(kind, r)
        if version is not None:
            result.latencies.append(time.monotonic() - started)
            if reload_done and started > reload_done[0]:
                result.versions_after_reload[version] += 1


async def _reload(client: httpx.AsyncClient, model_dir: Path, at: float,
                  result: SoakResult, reload_done: list[float]) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    try:
        # Publishing runs torch and file I/O: off the loop so the workers keep sending.
        version_dir = await asyncio.to_thread(make_checkpoint, model_dir, seed=1234)
        result.new_version = version_dir.name
        t0 = time.monotonic()
        r = await client.post("/v1/models/reload", headers=ADMIN)
        result.reload_seconds = time.monotonic() - t0
        result.reload_status = r.status_code
        if r.status_code != 200:
            result.failures[f"reload: got {r.status_code}"] += 1
    finally:
        # Workers wait for this mark (see _keep_going), so it is set whatever happened.
        reload_done.append(time.monotonic())


async def _sample_rss(server: Server, start: float, deadline: float, every: float,
                      result: SoakResult) -> None:
    """RSS through the run: a leak climbs steadily, allocator warm-up levels off."""
    while time.monotonic() < deadline:
        result.rss_samples.append((time.monotonic() - start, server.rss_kib()))
        await asyncio.sleep(min(every, max(0.0, deadline - time.monotonic())))


async def _soak(server: Server, model_dir: Path, seconds: float, warmup: float,
                concurrency: int,
                max_requests: int, reload_during: bool, seed: int) -> SoakResult:
    # Idle connections are dropped by the client (2 s) before uvicorn's keep-alive timeout
    # (5 s) closes them: with equal timeouts a POST can be sent on a connection the server is
    # closing at that instant, and fail with a ReadError that no server change can prevent.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency,
                          keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits,
                                 timeout=httpx.Timeout(60.0)) as client:
        result = SoakResult(seconds=seconds)
        result.rss_ready_kib = server.rss_kib()
        # Warm-up: every kind, then rounds at full concurrency, so that the worker threads,
        # their allocator arenas and torch's first-call caches exist before RSS is taken.
        full = ([k for k in KINDS if k.expect == 200] * concurrency)[:concurrency]
        for kinds in [KINDS, full, full, full]:
            for kind, r in zip(kinds, await asyncio.gather(*(
                    client.post(k.path, content=k.content, headers=k.headers)
                    for k in kinds)), strict=True):
                if r.status_code != kind.expect:
                    raise RuntimeError(f"warm-up {kind.name}: {r.status_code} {r.text[:300]}")
                result.old_version = _version(kind, r) or result.old_version
        # ... then the mixed load itself until the allocator levels off; its failures count.
        warm = SoakResult(seconds=warmup)
        budget = [max_requests]
        until = time.monotonic() + warmup
        await asyncio.gather(*(_worker(client, random.Random(-1 - i), until, budget, warm, [])
                               for i in range(concurrency)))
        result.warmup_requests = warm.requests
        result.failures.update(warm.failures)
        result.connection_errors += warm.connection_errors
        result.rss_warm_kib = server.rss_kib()

        start = time.monotonic()
        deadline = start + seconds
        budget = [max_requests]
        reload_done: list[float] = []
        tasks = [asyncio.create_task(_worker(client, random.Random(seed * 1000 + i), deadline,
                                             budget, result, reload_done, reload_during))
                 for i in range(concurrency)]
        tasks.append(asyncio.create_task(_sample_rss(server, start, deadline, seconds / 6,
                                                     result)))
        if reload_during:
            tasks.append(asyncio.create_task(
                _reload(client, model_dir, start + seconds / 2, result, reload_done)))
        await asyncio.gather(*tasks)
        result.seconds = time.monotonic() - start
        result.rss_end_kib = server.rss_kib()
        result.rss_samples.append((result.seconds, result.rss_end_kib))
        return result


def run_soak(seconds: float = 60.0, concurrency: int = 32, *, reload_during: bool = False,
             model_dir: Path | None = None, max_requests: int = 1_000_000,
             seed: int = 0, warmup: float = 15.0, cache: bool = True) -> SoakResult:
    """Start a server, warm it up for `warmup` s of the same mix, soak it, stop it."""
    with tempfile.TemporaryDirectory(prefix="vitalcast-soak-") as tmp:
        if model_dir is None:
            model_dir = Path(tmp) / "models"
            make_checkpoint(model_dir)
        log_path = Path(tmp) / "server.log"
        env = {} if cache else {"VITALCAST_CACHE_ENTRIES": "0"}
        with serve(model_dir, log_path, env=env) as server:
            result = asyncio.run(_soak(server, model_dir, seconds, warmup, concurrency,
                                       max_requests, reload_during, seed))
        result.server_warnings = [line for line in log_path.read_text().splitlines()
                                  if '"level":"WARNING"' in line or '"level":"ERROR"' in line
                                  or line.startswith(("WARNING", "ERROR"))][-20:]
        return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the loaded phase")
    ap.add_argument("--concurrency", type=int, default=32, help="concurrent connections")
    ap.add_argument("--reload-during", action="store_true",
                    help="publish a new version and reload halfway through")
    ap.add_argument("--model-dir", type=Path,
                    help="serve this model dir (default: a tiny model in a temp dir); "
                         "--reload-during publishes into it")
    ap.add_argument("--warmup", type=float, default=15.0,
                    help="seconds of the same mix before RSS is taken as the baseline")
    ap.add_argument("--max-requests", type=int, default=1_000_000, help="request cap")
    ap.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    ap.add_argument("--no-cache", action="store_true",
                    help="switch the prediction cache off: every valid request is scored")
    args = ap.parse_args(argv)
    if not 0 < args.seconds <= 3600 or not 1 <= args.concurrency <= 256:
        ap.error("--seconds must be in (0, 3600] and --concurrency in [1, 256]")
    result = run_soak(args.seconds, args.concurrency, reload_during=args.reload_during,
                      model_dir=args.model_dir, max_requests=args.max_requests, seed=args.seed,
                      warmup=args.warmup, cache=not args.no_cache)
    print(f"soak: {args.concurrency} connections, {args.seconds:g} s, loopback"
          + (", reload halfway" if args.reload_during else "")
          + (", prediction cache off" if args.no_cache else ""))
    for line in result.lines():
        print("  " + line)
    ok = (result.server_errors == 0 and result.connection_errors == 0 and result.failed == 0
          and result.rss_growth < 0.10 and (not args.reload_during or result.switched))
    print("targets (0 5xx, 0 connection errors, 0 failed, RSS growth < 10 %"
          + (", version switched" if args.reload_during else "") + "): "
          + ("met" if ok else "NOT met"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
