"""Tiny seeded cohorts and a tiny trained checkpoint shared by the training tests."""

from pathlib import Path

import pytest
import torch

from training.synthesize import write_cohort

# Small enough to train in a second or two on one core, large enough for both classes.
TINY = dict(hidden=8, attn_dim=8, batch_size=64, epochs=2, patience=0, threads=1)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(160, seed=11, out=out)
    return out


@pytest.fixture(scope="session")
def other_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("other")
    write_cohort(80, seed=12, out=out)
    return out


@pytest.fixture(scope="session")
def trained(cohort, tmp_path_factory) -> tuple[Path, Path]:
    """(model_dir, version_dir) of a tiny bidirectional LSTM trained on `cohort`."""
    from training.config import TrainConfig
    from training.train import train

    torch.set_num_threads(1)
    model_dir = tmp_path_factory.mktemp("models")
    cfg = TrainConfig(data=str(cohort), name="default", model_dir=str(model_dir),
                      arch="lstm", bidirectional=True, seed=3, **TINY)
    res = train(cfg)
    assert res.version_dir is not None
    return model_dir, res.version_dir
