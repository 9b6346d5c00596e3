"""scripts/serve, the README's serve command: trains a default model when there is none,
keeps its generated key across restarts, and answers the README's example curl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.app.test_e2e import ROOT, free_port

pytestmark = pytest.mark.slow


def test_serve_trains_a_default_model_and_answers_the_example(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALCAST_")}
    env.update({"VITALCAST_MODEL_DIR": str(tmp_path / "models"), "VITALCAST_PORT": str(port),
                "VITALCAST_KEY_DIR": str(tmp_path / "keys"),
                "VITALCAST_SERVE_DATA": str(tmp_path / "data"),
                "VITALCAST_SERVE_PATIENTS": "200", "VITALCAST_SERVE_EPOCHS": "1"})
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(ROOT / "scripts" / "serve")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 150
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.5)
        key = (tmp_path / "keys" / "api-key").read_text().strip()
        assert oct((tmp_path / "keys" / "api-key").stat().st_mode & 0o777) == "0o600"
        printed = (tmp_path / "serve.log").read_text()
        admin_key = (tmp_path / "keys" / "admin-key").read_text().strip()
        assert key not in printed and admin_key not in printed  # no keys in logs
        key_file = tmp_path / "keys" / "api-key"
        assert f'Bearer $(cat {key_file})"' in printed
        assert "--data @examples/request.json" in printed
        assert "demo model trained on a synthetic cohort" in printed
        assert "not for clinical use" in printed and "scripts/retrain --physionet" in printed
        example = json.loads((ROOT / "examples" / "request.json").read_text())
        r = httpx.post(f"{base}/v1/predict", json=example,
                       headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200, r.text
        out = r.json()
        assert 0 < out["risk"]["probability"] < 1
        assert out["explanation"]["variables"] and out["news2"]["score"] == 9
        # The first-start model answers what-if out of the box (README's what-if curl).
        assert "--data @examples/whatif.json" in printed
        example = json.loads((ROOT / "examples" / "whatif.json").read_text())
        r = httpx.post(f"{base}/v1/predict", json=example,
                       headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200, r.text
        abx, vaso, high = r.json()["what_if"]
        for answer in (abx, vaso):
            lo, hi = answer["effect"]["interval"]
            assert lo <= answer["effect"]["risk_difference"] <= hi
            assert answer["support"]["plan"] is not None
        assert high["support"]["propensity"] == 0.0  # a plan the policy never gives
        assert any("propensity is 0" in w for w in high["warnings"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()
