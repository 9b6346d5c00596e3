"""Fixtures: a model dir holding tiny real checkpoints and a TestClient running the lifespan."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.support import make_checkpoint, settings_for


@pytest.fixture(scope="session")
def shared_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only model dir shared by tests that do not reload."""
    root = tmp_path_factory.mktemp("models")
    make_checkpoint(root, "default")
    make_checkpoint(root, "other", arch="lstm", bidirectional=True, seed=1)
    return root


@pytest.fixture(scope="session")
def client(shared_model_dir: Path) -> Iterator[TestClient]:
    torch.set_num_threads(1)
    with TestClient(create_app(settings_for(shared_model_dir))) as c:
        yield c
