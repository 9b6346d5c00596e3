"""Interrupted training: the published checkpoint survives a SIGKILL and --resume finishes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import latest_version_dir, list_versions, load_checkpoint
from training.config import TrainConfig
from training.loop import Distributed, fit
from training.runstate import RunStore
from training.train import main, resume_message

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--arch", "gru", "--hidden", "8", "--attn-dim", "8", "--batch-size", "32",
        "--patience", "0", "--threads", "1", "--seed", "4"]


def cli(cohort, model_dir, *extra):
    return [sys.executable, "-m", "training.train", "--data", str(cohort), "--name", "m",
            "--model-dir", str(model_dir), *ARGS, *extra]


@pytest.mark.slow
def test_sigkill_keeps_the_published_checkpoint_and_resume_completes_the_run(cohort,
                                                                              tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.run(cli(cohort, tmp_path, "--epochs", "1"), cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    published = latest_version_dir(tmp_path, "m")

    state = tmp_path / ".runs" / "m" / "state.json"
    proc = subprocess.Popen(cli(cohort, tmp_path, "--epochs", "60"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = json.loads(state.read_text())
    assert 0 <= saved["epoch"] < 59  # killed mid-run, with state on disk
    assert list_versions(tmp_path, "m") == [published.name]
    load_checkpoint(published)  # intact and loadable

    resumed = subprocess.run(cli(cohort, tmp_path, "--epochs", "60", "--resume"), cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    versions = list_versions(tmp_path, "m")
    assert len(versions) == 2 and versions[0] == published.name
    ckpt = load_checkpoint(latest_version_dir(tmp_path, "m"))
    history = ckpt.extra["history"]
    assert [int(h["epoch"]) for h in history] == list(range(60))
    kept = saved["history"]
    assert history[: len(kept)] == kept  # the epochs before the kill were not redone
    assert not state.parent.exists()


def test_resume_refuses_state_from_another_data_set(cohort, tmp_path):
    cfg = TrainConfig(data=str(cohort), model_dir=str(tmp_path), name="r", arch="gru",
                      hidden=8, attn_dim=8, epochs=1, patience=0, threads=1)
    store = RunStore(tmp_path / ".runs" / "r")
    model = torch.nn.Linear(2, 1)

    class Task:
        n_train = 4

        def batch_loss(self, m, idx, rng):
            return m(torch.ones(len(idx), 2)).pow(2).mean()

        def validate(self, m):
            return {"loss": float(m(torch.ones(1, 2)).pow(2).mean())}

    fit(model, Task(), cfg, Distributed(), store, {"fingerprint": "aaa"})
    assert store.exists()
    assert resume_message(cfg).endswith("continuing the saved run in "
                                        f"{store.dir} after epoch 1")
    with pytest.raises(ValueError, match="fingerprint"):
        fit(model, Task(), cfg, Distributed(), store, {"fingerprint": "bbb"}, resume=True)


def test_resumed_fit_repeats_the_uninterrupted_run_exactly(tmp_path):
    """Every random draw is seeded by (seed, epoch): 3 + 3 epochs == 6 epochs."""
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(64)

    class Task:
        n_train = 64

        def batch_loss(self, m, idx, rng):
            noise = torch.from_numpy(rng.normal(0, 0.1, (len(idx), 3))).float()
            return ((m(x[idx] + noise).squeeze(1) - y[idx]) ** 2).mean()

        def validate(self, m):
            return {"loss": float(((m(x).squeeze(1) - y) ** 2).mean())}

    def run(epochs, store, resume, init):
        model = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(3, 1))
        model.load_state_dict(init)
        cfg = TrainConfig(data="d", epochs=epochs, patience=0, batch_size=16, lr=0.05)
        return fit(model, Task(), cfg, Distributed(), store, {}, resume=resume)

    init = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(3, 1)).state_dict()
    whole = run(6, RunStore(tmp_path / "a"), False, init)
    run(3, RunStore(tmp_path / "b"), False, init)
    resumed = run(6, RunStore(tmp_path / "b"), True, init)
    assert resumed.resumed_from == 3
    np.testing.assert_allclose([h["val_loss"] for h in resumed.history],
                               [h["val_loss"] for h in whole.history], rtol=1e-6)


def test_resume_without_a_saved_run_says_so_and_trains_from_scratch(cohort, tmp_path,
                                                                     capsys):
    code = main(["--data", str(cohort), "--name", "fresh", "--model-dir", str(tmp_path),
                 *ARGS, "--epochs", "1", "--resume"])
    assert code == 0
    err = capsys.readouterr().err
    assert "no saved run of 'fresh'" in err and "training from scratch" in err
    assert latest_version_dir(tmp_path, "fresh") is not None
