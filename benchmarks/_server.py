"""Shared by the HTTP and scoring benchmarks: the default model set, the payload, a server.

`publish_default_set(dir)` writes what a retrain publishes (default bi-LSTM, gru, elman,
jordan, a seq2seq forecaster), randomly initialised at the default sizes (hidden 64,
attention 32) with a normaliser fitted on a small synthetic cohort: speed and memory
depend on the shapes, not on trained weights. `payload()` is one patient, 48 h, 15
variables, ~700 observations. `serve(...)` runs `python -m app` (real uvicorn, one
worker) on a free loopback port and yields once /healthz answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import torch

from models.catalogue import CATALOGUE, MEASUREMENTS
from models.checkpoint import save_checkpoint
from models.features import Grid, Normalizer
from models.networks import ModelConfig, build_model
from training.synthesize import write_cohort

__all__ = ["API_KEY", "HOST", "Server", "payload", "publish_default_set", "serve",
           "synthetic_cohort"]

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
API_KEY = "bench-key-0123456789"
# Hourly vitals and a few labs: the 15 variables of the benchmark payload.
PAYLOAD_VARIABLES = ("heart_rate", "resp_rate", "spo2", "temperature", "sbp", "dbp", "map",
                     "fio2", "urine_output", "gcs", "lactate", "creatinine", "potassium",
                     "glucose", "wbc")
# (name, arch, bidirectional): the set a retrain publishes; the first is the default.
DEFAULT_SET = (("default", "lstm", True), ("gru", "gru", False), ("elman", "elman", False),
               ("jordan", "jordan", False))


def synthetic_cohort(n_patients: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(observations, patients) of a synthetic cohort (training.synthesize)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_cohort(n_patients, seed, Path(tmp))
        return (pd.read_parquet(Path(tmp) / "observations.parquet"),
                pd.read_parquet(Path(tmp) / "patients.parquet"))


def publish_default_set(model_dir: Path, seed: int = 0) -> list[str]:
    """Publish the default model set into `model_dir`; returns the names."""
    obs, patients = synthetic_cohort(200, seed + 7)
    present = set(obs["variable"].unique())
    norm = Normalizer.fit(obs, patients, [v for v in MEASUREMENTS if v in present])
    n_in, n_static = 3 * len(norm.features), norm.n_static_inputs
    torch.manual_seed(seed)
    names = []
    for name, arch, bi in DEFAULT_SET:
        cfg = ModelConfig(arch=arch, n_inputs=n_in, n_static=n_static, bidirectional=bi)
        save_checkpoint(model_dir, name, build_model(cfg).eval(), cfg, norm, Grid(),
                        temperature=1.3, metrics={}, fingerprint="benchmark")
        names.append(name)
    targets = [v for v in ("heart_rate", "sbp", "map", "resp_rate", "spo2", "temperature",
                           "lactate") if v in norm.features]
    cfg = ModelConfig(arch="seq2seq", n_inputs=n_in, n_static=n_static, horizon=6,
                      n_targets=len(targets))
    save_checkpoint(model_dir, "forecast", build_model(cfg).eval(), cfg, norm, Grid(),
                    task="forecast", metrics={}, fingerprint="benchmark",
                    extra={"targets": targets, "horizon": 6})
    names.append("forecast")
    return names


def payload(seed: int = 0, hours: int = 48, variables: tuple[str, ...] = PAYLOAD_VARIABLES,
            patient_id: str = "bench-1") -> dict[str, Any]:
    """One patient: each variable about once an hour over `hours` h (15 x 47 = 705 rows),
    values inside the catalogue's typical range, times in hours since admission."""
    rng = np.random.default_rng(seed)
    observations = []
    for h in range(hours - 1):
        for name in variables:
            lo, hi = CATALOGUE[name].typical
            observations.append({"time": round(h + float(rng.uniform(0, 1)), 3),
                                 "variable": name,
                                 "value": round(float(rng.uniform(lo, hi)), 2)})
    observations.sort(key=lambda o: o["time"])
    return {"patient_id": patient_id,
            "static": {"age": int(rng.integers(20, 90)),
                       "sex": "female" if rng.uniform() < 0.5 else "male",
                       "weight": round(float(rng.uniform(50, 110)), 1)},
            "observations": observations}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def rss_mib(self, field: str = "VmRSS") -> float:
        """Resident memory of the server process from /proc/<pid>/status, MiB: VmRSS, or
        another of its fields (VmHWM: the peak so far; RssAnon: its own memory, not pages
        mapped from files)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"{field} not found")


@contextmanager
def serve(model_dir: Path, log_path: Path, env: dict[str, str] | None = None,
          ready_timeout: float = 120.0) -> Iterator[Server]:
    """`python -m app` on a free loopback port, one worker, benchmark routes on."""
    port = _free_port()
    full_env = {**os.environ, "VITALCAST_MODEL_DIR": str(model_dir),
                "VITALCAST_API_KEYS": API_KEY, "VITALCAST_HOST": HOST,
                "VITALCAST_PORT": str(port), "VITALCAST_WORKERS": "1",
                "VITALCAST_LOG_LEVEL": "WARNING", "VITALCAST_BENCHMARK_ROUTES": "1",
                **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=full_env,
                                stdout=log, stderr=subprocess.STDOUT)
        server = Server(proc, f"http://{HOST}:{port}", log_path)
        try:
            deadline = time.monotonic() + ready_timeout
            with httpx.Client(base_url=server.base_url, timeout=5) as client:
                while True:
                    try:
                        if client.get("/readyz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if proc.poll() is not None:
                        raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
                    if time.monotonic() > deadline:
                        raise RuntimeError("server did not become ready in time")
                    time.sleep(0.2)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
