"""Checkpoints: round trip, versions, atomic publishing, and refusal of anything untrusted."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import models.checkpoint as ckpt_mod
from models.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    latest_version_dir,
    list_names,
    list_versions,
    load_checkpoint,
    save_checkpoint,
)
from models.features import Grid, Normalizer
from models.networks import ModelConfig, build_model, variants

torch.set_num_threads(1)
FEATURES = ("heart_rate", "sbp", "lactate")
F = len(FEATURES)


def normalizer() -> Normalizer:
    return Normalizer(FEATURES, np.array([80.0, 120.0, 0.8]), np.array([15.0, 20.0, 0.5]))


def config(arch: str = "gru", bi: bool = False, **kw) -> ModelConfig:
    extra = {"horizon": 2, "n_targets": 2} if arch == "seq2seq" else {}
    return ModelConfig(arch, 3 * F, normalizer().n_static_inputs, hidden=8, attn_dim=4,
                       bidirectional=bi, **extra, **kw)


def save(tmp_path: Path, arch: str = "gru", bi: bool = False, name: str = "m", **kw) -> Path:
    torch.manual_seed(0)
    cfg = config(arch, bi)
    return save_checkpoint(tmp_path, name, build_model(cfg), cfg, normalizer(), Grid(1.0, 10),
                           temperature=1.5, metrics={"auroc": np.float64(0.8), "x": float("nan")},
                           fingerprint="abc", extra={"targets": ["heart_rate", "sbp"]}, **kw)


def inputs(n_static: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    step_mask = torch.ones(3, 10, dtype=torch.bool)
    step_mask[0, :4] = False
    return torch.randn(3, 10, 3 * F, generator=g), torch.randn(3, n_static, generator=g), step_mask


@pytest.mark.parametrize(("arch", "bi"), [pytest.param(a, b, id=f"{a}{'-bi' if b else ''}")
                                          for a, b in variants()])
def test_save_load_gives_identical_outputs(tmp_path: Path, arch: str, bi: bool) -> None:
    torch.manual_seed(0)
    cfg = config(arch, bi)
    model = build_model(cfg).eval()
    path = save_checkpoint(tmp_path, "m", model, cfg, normalizer(), Grid(1.0, 10))
    loaded = load_checkpoint(path)
    assert not loaded.model.training
    args = inputs(cfg.n_static)
    with torch.no_grad():
        a, b = model(*args), loaded.model(*args)
    assert torch.equal(a.risk_logit, b.risk_logit)
    assert torch.equal(a.los, b.los)
    assert torch.equal(a.attention, b.attention)
    if a.forecast is not None:
        assert torch.equal(a.forecast, b.forecast)


def test_metadata_round_trips(tmp_path: Path) -> None:
    path = save(tmp_path, tensors={"propensity.w": torch.arange(4.0)})
    ck = load_checkpoint(path)
    assert (ck.name, ck.version, ck.path) == ("m", path.name, path)
    assert ck.config == config()
    assert ck.normalizer.features == FEATURES
    np.testing.assert_allclose(ck.normalizer.std, normalizer().std)
    assert ck.grid == Grid(1.0, 10)
    assert ck.temperature == 1.5 and ck.task == "risk" and ck.fingerprint == "abc"
    assert ck.metrics == {"auroc": 0.8, "x": None}  # NaN is stored as null
    assert ck.extra == {"targets": ["heart_rate", "sbp"]}
    assert torch.equal(ck.tensors["propensity.w"], torch.arange(4.0))
    assert ck.code_version.startswith("0.1.0") or ck.code_version
    meta = json.loads((path / "model.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["features"] == list(FEATURES)
    assert re.fullmatch(r"\d{8}T\d{6}Z", path.name)


def test_versions_are_unique_sorted_and_listed(tmp_path: Path) -> None:
    paths = [save(tmp_path) for _ in range(3)]  # same second: bumped by one second each
    assert [p.name for p in paths] == sorted({p.name for p in paths})
    assert list_versions(tmp_path, "m") == [p.name for p in paths]
    assert latest_version_dir(tmp_path, "m") == paths[-1]
    save(tmp_path, name="other")
    (tmp_path / "m" / ".tmp-crashed").mkdir()  # a crashed save's leftovers are not versions
    (tmp_path / "empty").mkdir()
    assert list_names(tmp_path) == ["m", "other"]
    assert list_versions(tmp_path, "m") == [p.name for p in paths]
    assert latest_version_dir(tmp_path, "missing") is None
    assert list_names(tmp_path / "nowhere") == []


def test_a_failed_save_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.os, "rename", crash)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path)
    assert list(os.listdir(tmp_path / "m")) == []


def test_save_refuses_a_bad_name_or_mismatched_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        save(tmp_path, name="../escape")
    cfg = ModelConfig("gru", 3 * (F + 1), 8, hidden=8)
    with pytest.raises(ValueError, match="n_inputs"):
        save_checkpoint(tmp_path, "m", build_model(cfg), cfg, normalizer(), Grid())


# --- refusal of untrusted checkpoints -------------------------------------------------------

def edit_meta(path: Path, change) -> None:
    meta = json.loads((path / "model.json").read_text())
    change(meta)
    (path / "model.json").write_text(json.dumps(meta))


def refused(path: Path, file: str, problem: str) -> None:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path / file) in str(err.value)
    assert re.search(problem, str(err.value)), str(err.value)


def test_truncated_weights_are_refused(tmp_path: Path) -> None:
    path = save(tmp_path)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    refused(path, "model.safetensors", "truncated")
    weights.write_bytes(data[:5])
    refused(path, "model.safetensors", "truncated")


def test_corrupted_weights_are_refused(tmp_path: Path) -> None:
    path = save(tmp_path)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10:] = b"\xff" * 10  # flipped data bytes: structurally valid, numerically wrong
    weights.write_bytes(bytes(data))
    refused(path, "model.safetensors", "checksum mismatch")
    data[20:40] = b"#" * 20  # garbage inside the header
    weights.write_bytes(bytes(data))
    refused(path, "model.safetensors", "corrupted safetensors header|cannot read")


def test_missing_files_are_refused(tmp_path: Path) -> None:
    path = save(tmp_path)
    (path / "model.safetensors").unlink()
    refused(path, "model.safetensors", "missing")
    (path / "model.json").unlink()
    refused(path, "model.json", "missing")


@pytest.mark.parametrize("key", ["architecture", "normalization", "temperature",
                                 "weights_sha256", "format_version"])
def test_missing_key_in_model_json_is_refused(tmp_path: Path, key: str) -> None:
    path = save(tmp_path)
    edit_meta(path, lambda m: m.pop(key))
    refused(path, "model.json", f"missing key.*'{key}'")


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path)
    edit_meta(path, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    refused(path, "model.json", "unknown format_version 2")


def test_invalid_json_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path)
    (path / "model.json").write_text("{not json")
    refused(path, "model.json", "not valid JSON")


def test_feature_list_mismatch_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path)
    edit_meta(path, lambda m: m.update(features=["heart_rate", "lactate", "sbp"]))
    refused(path, "model.json", "feature list does not match")


def test_unknown_feature_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path)
    edit_meta(path, lambda m: m["normalization"].update(features=["heart_rate", "sbp", "mood"]))
    refused(path, "model.json", "unknown variables")


def test_weights_of_another_shape_are_refused(tmp_path: Path) -> None:
    path = save(tmp_path)
    edit_meta(path, lambda m: m["architecture"].update(hidden=12))
    refused(path, "model.safetensors", "shape of .* the architecture needs")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickle_as_weights_is_refused_and_never_runs(tmp_path: Path, protocol: int) -> None:
    path = save(tmp_path)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(marker), protocol=protocol)
    (path / "model.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path / "model.safetensors") in str(err.value)
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: loading it the unsafe way would run it
    assert marker.exists()


def test_torch_save_file_as_weights_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path)
    torch.save({"w": torch.zeros(2)}, path / "model.safetensors")
    refused(path, "model.safetensors", "pickle / torch.save")


@pytest.mark.parametrize("file", ["model.json", "model.safetensors"])
def test_random_damage_always_gives_a_checkpoint_error(tmp_path: Path, file: str) -> None:
    """Whatever bytes end up in the files, loading either works or says which file is bad."""
    path = save(tmp_path)
    original = (path / file).read_bytes()
    rng = np.random.default_rng(0)
    for _ in range(40):
        data = bytearray(original)
        kind = rng.integers(3)
        at = int(rng.integers(len(data)))
        if kind == 0:  # overwrite a few bytes
            data[at:at + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        elif kind == 1:  # cut the file short
            data = data[:at]
        else:  # insert bytes
            data[at:at] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        (path / file).write_bytes(bytes(data))
        try:
            load_checkpoint(path)
        except CheckpointError as e:
            assert str(path) in str(e)
