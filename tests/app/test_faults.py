"""Faults on disk: damaged checkpoints, inconsistent model.json, an unreadable model dir, a
save that crashes halfway. Each is reported and skipped; what was serving keeps serving.

(SIGKILL in the middle of a save, and training killed then resumed, run as subprocesses in
tests/training/test_checkpoint_crash.py.)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import models.checkpoint as checkpoint
from app import service
from app.main import create_app
from app.registry import ModelRegistry
from models.checkpoint import list_versions
from tests.app.support import ADMIN, USER, make_checkpoint, request_body, settings_for

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _weights(v: Path) -> Path:
    return v / "model.safetensors"


def _meta(v: Path) -> dict[str, object]:
    return dict(json.loads((v / "model.json").read_text()))


def _write_meta(v: Path, meta: dict[str, object]) -> None:
    (v / "model.json").write_text(json.dumps(meta))


def truncate(v: Path) -> None:
    data = _weights(v).read_bytes()
    _weights(v).write_bytes(data[: len(data) - 37])


def truncate_to_header(v: Path) -> None:
    _weights(v).write_bytes(_weights(v).read_bytes()[:6])


def flip_a_weight_bit(v: Path) -> None:
    data = bytearray(_weights(v).read_bytes())
    data[-5] ^= 0x10  # inside the tensor data: same size, valid header, different numbers
    _weights(v).write_bytes(bytes(data))


def empty_weights(v: Path) -> None:
    _weights(v).write_bytes(b"")


def delete_weights(v: Path) -> None:
    _weights(v).unlink()


def meta_missing_keys(v: Path) -> None:
    meta = _meta(v)
    del meta["normalization"], meta["weights_sha256"]
    _write_meta(v, meta)


def meta_other_feature_list(v: Path) -> None:
    meta = _meta(v)
    features = list(meta["features"])  # type: ignore[call-overload]
    meta["features"] = features[::-1]  # same names, different order: inputs would be misread
    _write_meta(v, meta)


def meta_fewer_features_consistently(v: Path) -> None:
    """Features and normalisation agree with each other, but not with the weights."""
    meta = _meta(v)
    norm = dict(meta["normalization"])  # type: ignore[call-overload]
    keep = len(meta["features"]) - 1  # type: ignore[arg-type]
    for key, value in norm.items():
        if isinstance(value, list) and len(value) == keep + 1:
            norm[key] = value[:keep]
    meta["normalization"] = norm
    meta["features"] = list(meta["features"])[:keep]  # type: ignore[call-overload]
    arch = dict(meta["architecture"])  # type: ignore[call-overload]
    arch["n_inputs"] = 3 * keep
    meta["architecture"] = arch
    _write_meta(v, meta)


def meta_not_json(v: Path) -> None:
    (v / "model.json").write_bytes(b"\x00\xff{not json")


def meta_is_a_directory(v: Path) -> None:
    (v / "model.json").unlink()
    (v / "model.json").mkdir()


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated weights": (truncate, "model.safetensors"),
    "weights cut inside the header": (truncate_to_header, "model.safetensors"),
    "a flipped bit in the weights": (flip_a_weight_bit, "checksum mismatch"),
    "empty weights": (empty_weights, "model.safetensors"),
    "missing weights": (delete_weights, "model.safetensors: missing"),
    "model.json missing keys": (meta_missing_keys, "missing key"),
    "model.json with another feature list": (meta_other_feature_list, "feature list"),
    "model.json with fewer features": (meta_fewer_features_consistently, "shape of"),
    "model.json not JSON": (meta_not_json, "not valid JSON"),
    "model.json a directory": (meta_is_a_directory, "model.json: missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_new_version_is_skipped_and_the_old_one_keeps_serving(tmp_path: Path,
                                                                      damage: str) -> None:
    harm, expected = DAMAGE[damage]
    first = make_checkpoint(tmp_path).name
    with TestClient(create_app(settings_for(tmp_path))) as c:
        before = c.post("/v1/predict", json=request_body(), headers=USER).json()
        bad = make_checkpoint(tmp_path, seed=5)
        harm(bad)
        r = c.post("/v1/models/reload", headers=ADMIN)
        assert r.status_code == 200
        body = r.json()
        assert [m["version"] for m in body["models"]] == [first]
        (error,) = body["errors"]
        assert error["version"] == bad.name and expected in error["message"], error
        assert str(tmp_path) not in error["message"]
        after = c.post("/v1/predict", json=request_body(), headers=USER)
        assert after.status_code == 200 and after.json() == before
        assert c.get("/readyz").status_code == 200


def test_new_version_that_loads_but_cannot_score_is_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights that give NaN (a diverged training run) load: the warm-up scoring of a
    made-up stay refuses them, so requests keep the old version instead of 500s; the
    refused model is not traced (models/traced.py) either."""
    traced: list[object] = []
    record = service.trace_for_inference
    monkeypatch.setattr(service, "trace_for_inference",
                        lambda model, *a: traced.append(model) or record(model, *a))
    first = make_checkpoint(tmp_path).name
    with TestClient(create_app(settings_for(tmp_path))) as c:
        before = c.post("/v1/predict", json=request_body(), headers=USER).json()
        assert len(traced) == 1
        bad = make_checkpoint(tmp_path, seed=5, fill=float("nan"))
        body = c.post("/v1/models/reload", headers=ADMIN).json()
        assert len(traced) == 1
        assert [m["version"] for m in body["models"]] == [first]
        (error,) = body["errors"]
        assert error["version"] == bad.name, error
        assert "cannot score a made-up stay" in error["message"]
        assert "non-finite outputs" in error["message"]
        after = c.post("/v1/predict", json=request_body(), headers=USER)
        assert after.status_code == 200 and after.json() == before


def test_startup_with_only_a_checkpoint_that_cannot_score_is_unready(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, fill=float("nan"))
    with TestClient(create_app(settings_for(tmp_path))) as c:
        assert c.get("/readyz").status_code == 503
        r = c.post("/v1/predict", json=request_body(), headers=USER)
        assert r.status_code == 503 and r.json()["error"]["kind"] == "model_unavailable"
        assert "cannot score a made-up stay" in r.json()["error"]["message"]


@pytest.mark.parametrize("damage", ["truncated weights", "model.json missing keys",
                                    "model.json with another feature list"])
def test_startup_with_only_a_damaged_checkpoint_is_unready_not_crashed(tmp_path: Path,
                                                                       damage: str) -> None:
    DAMAGE[damage][0](make_checkpoint(tmp_path))
    with TestClient(create_app(settings_for(tmp_path))) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503
        r = c.post("/v1/predict", json=request_body(), headers=USER)
        assert r.status_code == 503 and r.json()["error"]["kind"] == "model_unavailable"
        assert "model 'default' failed to load: default/" in r.json()["error"]["message"]
        assert len(c.get("/v1/models", headers=USER).json()["errors"]) == 1


def test_damage_to_the_serving_version_on_disk_does_not_affect_it(tmp_path: Path) -> None:
    """Weights are read once at load; later damage to the files is not seen until a reload,
    and a reload then keeps the copy in memory rather than reloading the damaged one."""
    v = make_checkpoint(tmp_path)
    with TestClient(create_app(settings_for(tmp_path))) as c:
        before = c.post("/v1/predict", json=request_body(), headers=USER).json()
        truncate(v)
        assert c.post("/v1/models/reload", headers=ADMIN).status_code == 200
        assert c.post("/v1/predict", json=request_body(), headers=USER).json() == before


# --- an unreadable model dir ----------------------------------------------------------------

def test_model_dir_that_is_a_file_starts_unready(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "models"
    not_a_dir.write_text("oops")
    with TestClient(create_app(settings_for(not_a_dir))) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503


def test_model_dir_replaced_by_a_file_on_reload_keeps_serving(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    first = make_checkpoint(model_dir).name
    with TestClient(create_app(settings_for(model_dir))) as c:
        shutil.move(model_dir, tmp_path / "moved")
        model_dir.write_text("not a directory any more")
        r = c.post("/v1/models/reload", headers=ADMIN)
        assert r.status_code == 200
        assert [m["version"] for m in r.json()["models"]] == [first]
        assert r.json()["errors"] and "model dir" in r.json()["errors"][0]["message"]
        assert c.post("/v1/predict", json=request_body(), headers=USER).status_code == 200


def test_model_dir_that_vanishes_on_reload_keeps_serving(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    first = make_checkpoint(model_dir).name
    with TestClient(create_app(settings_for(model_dir))) as c:
        shutil.move(model_dir, tmp_path / "moved")  # an unmounted volume looks like this
        r = c.post("/v1/models/reload", headers=ADMIN)
        assert [m["version"] for m in r.json()["models"]] == [first]
        assert c.get("/readyz").status_code == 200


def test_permission_denied_while_scanning_keeps_serving(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """EACCES simulated at the directory listing (tests may run as root, where chmod 000
    denies nothing); the real chmod variant follows, for non-root runs."""
    first = make_checkpoint(tmp_path).name
    with TestClient(create_app(settings_for(tmp_path))) as c:
        make_checkpoint(tmp_path, seed=3)
        real_iterdir = Path.iterdir

        def denied(self: Path):  # type: ignore[no-untyped-def]
            if self == tmp_path or self.parent == tmp_path:
                raise PermissionError(13, "Permission denied", str(self))
            return real_iterdir(self)

        monkeypatch.setattr(Path, "iterdir", denied)
        r = c.post("/v1/models/reload", headers=ADMIN)
        assert r.status_code == 200
        assert [m["version"] for m in r.json()["models"]] == [first]
        assert "Permission denied" in r.json()["errors"][0]["message"]
        assert c.post("/v1/predict", json=request_body(), headers=USER).status_code == 200
        monkeypatch.undo()
        r = c.post("/v1/models/reload", headers=ADMIN)  # readable again: the new one is served
        assert r.json()["models"][0]["version"] > first


@pytest.mark.skipif(AS_ROOT, reason="running as root: chmod 000 does not deny root reads; "
                                    "test_permission_denied_while_scanning_keeps_serving "
                                    "simulates EACCES instead")
def test_chmod_000_model_dir_keeps_serving(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    first = make_checkpoint(model_dir).name
    with TestClient(create_app(settings_for(model_dir))) as c:
        model_dir.chmod(0)
        try:
            r = c.post("/v1/models/reload", headers=ADMIN)
            assert [m["version"] for m in r.json()["models"]] == [first]
            assert r.json()["errors"]
        finally:
            model_dir.chmod(0o755)


# --- a save that crashes halfway -------------------------------------------------------------

def _explode(*args: object, **kwargs: object) -> None:
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("where", ["save_file", "_fsync", "rename"])
def test_save_that_fails_halfway_leaves_nothing_and_the_old_version_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    first = make_checkpoint(tmp_path).name
    with TestClient(create_app(settings_for(tmp_path))) as c:
        if where == "rename":
            monkeypatch.setattr(os, "rename", _explode)  # what save_checkpoint calls
        else:
            monkeypatch.setattr(checkpoint, where, _explode)
        with pytest.raises(OSError, match="No space left"):
            make_checkpoint(tmp_path, seed=8)
        monkeypatch.undo()
        assert sorted(p.name for p in (tmp_path / "default").iterdir()) == [first]  # no temp
        r = c.post("/v1/models/reload", headers=ADMIN)
        assert [m["version"] for m in r.json()["models"]] == [first]
        assert r.json()["errors"] == []
        out = c.post("/v1/predict", json=request_body(), headers=USER).json()
        assert out["model"]["version"] == first


def test_leftover_temp_dir_of_a_crashed_save_is_ignored(tmp_path: Path) -> None:
    first = make_checkpoint(tmp_path)
    # what a SIGKILL between writing and renaming leaves: a complete copy under a temp name
    shutil.copytree(first, tmp_path / "default" / ".tmp-abc123")
    (tmp_path / "default" / ".tmp-half").mkdir()
    assert list_versions(tmp_path, "default") == [first.name]
    served, failures = ModelRegistry(tmp_path, "default").load()
    assert served["default"].version == first.name and failures == ()
