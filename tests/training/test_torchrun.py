"""Data-parallel training: a 2-process torchrun (gloo on CPU) publishes one loadable checkpoint."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.checkpoint import list_versions, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_torchrun_writes_one_loadable_checkpoint(cohort, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", "-m", "training.train", "--data", str(cohort),
           "--name", "ddp", "--model-dir", str(tmp_path), "--arch", "gru",
           "--hidden", "8", "--attn-dim", "8", "--batch-size", "32", "--epochs", "2",
           "--patience", "0", "--threads", "2", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list_versions(tmp_path, "ddp")) == 1  # rank 0 alone published
    ckpt = load_checkpoint(tmp_path / "ddp" / list_versions(tmp_path, "ddp")[0])
    assert ckpt.metrics["processes"] == 2 and ckpt.metrics["epochs_run"] == 2
    assert ckpt.config.arch == "gru" and 0.05 < ckpt.temperature < 20
    assert not (tmp_path / ".runs" / "ddp").exists()
