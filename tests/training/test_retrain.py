"""scripts/retrain, the README's one retraining command, end to end on tiny cohorts: data,
training, evaluation reports and publication into the model directory the service reads."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from models.checkpoint import latest_version_dir, load_checkpoint
from tests.app.support import USER, settings_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--patients", "240", "--test-patients", "160", "--epochs", "1"]


def _retrain(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VITALCAST_", "RETRAIN_"))}
    return subprocess.run(
        [str(ROOT / "scripts" / "retrain"), "--work", str(tmp_path / "work"),
         "--model-dir", str(tmp_path / "models"), "--reports", str(tmp_path / "reports"),
         *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_retrain_evaluates_and_publishes_every_model(tmp_path: Path) -> None:
    # --small first: the explicit sizes and epochs after it still win
    run = _retrain(tmp_path, "--small", *SMALL, "--models", "default,jordan,forecast")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "240 training patients (seed 7), 160 test patients" in run.stdout
    for name, arch in [("default", "lstm"), ("jordan", "jordan"), ("forecast", None)]:
        version = latest_version_dir(tmp_path / "models", name)
        assert version is not None, f"{name} not published"
        ckpt = load_checkpoint(version)  # the service's own loader accepts it
        if arch is not None:
            assert ckpt.config.arch == arch
        report = tmp_path / "reports" / name
        assert (report / "metrics.json").is_file(), sorted(report.iterdir())
        assert list(report.glob("*.png")), f"{name}: no plots"
    metrics = json.loads((tmp_path / "reports" / "default" / "metrics.json").read_text())
    # scored on the separately seeded test cohort, with the baselines beside the model
    assert metrics["n"] == 160
    assert 0.0 <= metrics["auroc"] <= 1.0 and metrics["news2_auroc"] is not None
    assert ckpt_names(tmp_path / "models") == {"default", "forecast", "jordan"}
    assert "pehe" in metrics  # scored against the treated test cohort's counterfactuals

    # The published default answers the README's what-if request once the service loads it.
    example = json.loads((ROOT / "examples" / "whatif.json").read_text())
    with TestClient(create_app(settings_for(tmp_path / "models"))) as client:
        r = client.post("/v1/predict", json=example, headers=USER)
    assert r.status_code == 200, r.text
    answers = r.json()["what_if"]
    assert [a["label"] for a in answers] == [p["label"] for p in example["what_if"]]
    assert all(0.0 <= a["risk"]["probability"] <= 1.0 for a in answers)

    # A second run publishes a new version beside the first; nothing half-written is left.
    first = latest_version_dir(tmp_path / "models", "jordan")
    run = _retrain(tmp_path, *SMALL, "--small", "--models", "jordan")  # --small last
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads((tmp_path / "reports" / "jordan" / "metrics.json").read_text())["n"] == 160
    second = latest_version_dir(tmp_path / "models", "jordan")
    assert first is not None and second is not None and second.name > first.name
    assert first.is_dir() and (first / "model.safetensors").is_file()
    assert not list((tmp_path / "models").glob("*/.tmp-*"))


def test_retrain_refuses_an_unknown_model_before_touching_anything(tmp_path: Path) -> None:
    run = _retrain(tmp_path, *SMALL, "--models", "default,transformer")
    assert run.returncode == 2
    assert "unknown model 'transformer'" in run.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_retrain_help_prints_the_usage_comment_only(tmp_path: Path) -> None:
    run = _retrain(tmp_path, "--help")
    assert run.returncode == 0
    assert run.stdout.startswith("One command: data -> train")
    assert "--physionet-src" in run.stdout and "POST /v1/models/reload" in run.stdout
    assert "set -euo" not in run.stdout and "cd " not in run.stdout
    assert not any(line.startswith("#") for line in run.stdout.splitlines())


def ckpt_names(model_dir: Path) -> set[str]:
    return {p.name for p in model_dir.iterdir() if p.is_dir()}
