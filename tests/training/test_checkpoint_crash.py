"""Crashes while writing: a process SIGKILLed in the middle of `save_checkpoint` leaves the
previous version loadable and served; training SIGKILLed mid-run finishes with `--resume`
and publishes exactly the model an uninterrupted run publishes.

SIGKILL cannot be caught, so nothing in-process cleans up: what must hold is that readers
never see half a checkpoint (temporary directories are invisible to `list_versions`) and
that the run state on disk is always a complete epoch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.registry import ModelRegistry
from models.checkpoint import list_versions, load_checkpoint
from tests.app.support import USER, make_checkpoint, request_body, settings_for
from training.train import main as train_main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# A child that publishes a checkpoint and stops, at the named point, until it is killed.
_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import models.checkpoint as ck
    from tests.app.support import make_checkpoint

    model_dir, marker, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def stop_here():
        marker.write_text(point)
        time.sleep(120)

    if point == "weights":  # half the weights file on disk
        real_save = ck.save_file
        def save_file(tensors, path):
            real_save(tensors, path)
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            stop_here()
        ck.save_file = save_file
    elif point == "rename":  # weights and model.json complete, not yet renamed into place
        real_fsync = ck._fsync
        def _fsync(path):
            real_fsync(path)
            if path.name == "model.json":
                stop_here()
        ck._fsync = _fsync
    elif point == "loop":  # publish versions back to back; killed at an arbitrary instant
        marker.write_text(point)
        for seed in range(1000):
            make_checkpoint(model_dir, seed=seed)
    make_checkpoint(model_dir, seed=99)
""")


def _kill_when(proc: subprocess.Popen[bytes], marker: Path, after: float = 0.0) -> None:
    deadline = time.monotonic() + 90
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the child never reached the kill point"
        time.sleep(0.02)
    time.sleep(after)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


@pytest.mark.parametrize("point", ["weights", "rename"])
def test_sigkill_mid_save_leaves_the_previous_version_served(tmp_path: Path,
                                                            point: str) -> None:
    torch.set_num_threads(1)
    first = make_checkpoint(tmp_path).name
    marker = tmp_path.parent / f"{tmp_path.name}-marker"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), str(marker), point],
                            cwd=ROOT, stderr=subprocess.PIPE)
    _kill_when(proc, marker)

    leftovers = [p.name for p in (tmp_path / "default").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers, "the kill should have landed inside save_checkpoint"
    assert list_versions(tmp_path, "default") == [first]  # the half-written one is invisible
    with TestClient(create_app(settings_for(tmp_path))) as c:
        r = c.post("/v1/predict", json=request_body(), headers=USER)
        assert r.status_code == 200 and r.json()["model"]["version"] == first
        second = make_checkpoint(tmp_path, seed=4).name  # publishing still works afterwards
        listed = c.post("/v1/models/reload",
                        headers={"Authorization": "Bearer admin-key-9876543210"}).json()
        assert [m["version"] for m in listed["models"]] == [second]
        assert listed["errors"] == []


def test_sigkill_at_an_arbitrary_instant_of_back_to_back_saves(tmp_path: Path) -> None:
    marker = tmp_path.parent / f"{tmp_path.name}-marker"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), str(marker), "loop"],
                            cwd=ROOT, stderr=subprocess.PIPE)
    _kill_when(proc, marker, after=2.5)
    versions = list_versions(tmp_path, "default")
    assert versions, "no version was published before the kill"
    for version in versions:  # every version a reader can see is complete
        load_checkpoint(tmp_path / "default" / version)
    registry = ModelRegistry(tmp_path, "default")
    served, failures = registry.load()
    assert served["default"].version == versions[-1] and failures == ()


# --- training: SIGKILL, then --resume --------------------------------------------------------

ARGS = ["--name", "crash", "--arch", "gru", "--epochs", "10", "--patience", "0",
        "--hidden", "8", "--attn-dim", "8", "--batch-size", "32", "--threads", "1",
        "--seed", "3", "-v"]


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.synthesize import write_cohort

    out = tmp_path_factory.mktemp("crash-cohort")
    write_cohort(160, seed=11, out=out)
    return out


def _train_cmd(data: Path, model_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training.train", "--data", str(data), "--model-dir",
            str(model_dir), *ARGS, *extra]


def test_training_killed_with_sigkill_resumes_to_the_uninterrupted_model(
        tiny_cohort: Path, tmp_path: Path) -> None:
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    state = killed_dir / ".runs" / "crash" / "state.json"
    proc = subprocess.Popen(_train_cmd(tiny_cohort, killed_dir), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:  # kill once a few epochs are saved, long before the last one
        assert proc.poll() is None, "training finished before it could be killed"
        assert time.monotonic() < deadline
        try:
            if json.loads(state.read_text())["epoch"] >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    killed_at = json.loads(state.read_text())["epoch"]
    assert 2 <= killed_at < 9
    assert list_versions(killed_dir, "crash") == []  # nothing published by the killed run

    resumed = subprocess.run(_train_cmd(tiny_cohort, killed_dir, "--resume"), cwd=ROOT,
                             capture_output=True, text=True, timeout=180, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"after epoch {killed_at + 1}" in resumed.stderr  # continued, did not restart
    # The uninterrupted reference, in-process (same argv, so the same configuration).
    assert train_main(_train_cmd(tiny_cohort, clean_dir)[3:]) == 0

    (a,) = list_versions(killed_dir, "crash")
    (b,) = list_versions(clean_dir, "crash")
    ra, rb = load_checkpoint(killed_dir / "crash" / a), load_checkpoint(clean_dir / "crash" / b)
    assert [h["epoch"] for h in ra.extra["history"]] == list(range(10))
    for row_a, row_b in zip(ra.extra["history"], rb.extra["history"], strict=True):
        assert row_a == pytest.approx(row_b, rel=1e-6)
    sa, sb = ra.model.state_dict(), rb.model.state_dict()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sb)
    assert not (killed_dir / ".runs" / "crash").exists()  # run state cleared once published
