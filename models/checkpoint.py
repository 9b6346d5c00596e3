"""Checkpoints: `<model_dir>/<name>/<version>/model.safetensors` + `model.json`.

A checkpoint is data: the weights (safetensors, which cannot execute code) and a JSON file
holding everything needed to rebuild the model and to apply exactly the preprocessing it
was trained with. A version is the UTC creation time `YYYYMMDDTHHMMSSZ`, so versions sort
by age. A version directory is written under a temporary name inside `<model_dir>/<name>/`
and renamed into place, so a crash never leaves half a checkpoint where a reader looks.

Loading never unpickles and trusts nothing: every problem (missing or truncated file,
checksum mismatch, a pickle where the weights should be, unknown format version, missing
key, feature list or shapes that do not match) raises `CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil

# Reason for the nosec: only `git describe` runs, with a fixed argv and no shell (below).
import subprocess  # nosec B404
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from models.features import Grid, Normalizer
from models.networks import ModelConfig, build_model

__all__ = [
    "FORMAT_VERSION",
    "TASKS",
    "Checkpoint",
    "CheckpointError",
    "latest_version_dir",
    "list_names",
    "list_versions",
    "load_checkpoint",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TASKS = ("risk", "forecast", "effect")
WEIGHTS, META = "model.safetensors", "model.json"
_VERSION_RE = re.compile(r"^\d{8}T\d{6}Z$")
_VERSION_FMT = "%Y%m%dT%H%M%SZ"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_EXTRA_PREFIX = "extra::"  # safetensors key prefix of named tensors saved beside the weights
_REQUIRED = ("format_version", "task", "architecture", "features", "normalization", "grid",
             "temperature", "metrics", "fingerprint", "created", "code_version", "extra",
             "weights_sha256")

_TYPES: dict[str, type | tuple[type, ...]] = {
    "task": str, "architecture": dict, "features": list, "normalization": dict, "grid": dict,
    "temperature": (int, float), "metrics": dict, "fingerprint": str, "created": str,
    "code_version": str, "extra": dict, "weights_sha256": str,
}


class CheckpointError(Exception):
    """A checkpoint that cannot be trusted; the message names the file and the problem."""


@dataclass
class Checkpoint:
    name: str
    version: str  # YYYYMMDDTHHMMSSZ, UTC creation time
    path: Path  # the version directory
    model: nn.Module  # in eval mode
    config: ModelConfig
    normalizer: Normalizer
    grid: Grid
    temperature: float  # calibration: probability = sigmoid(logit / temperature)
    task: str  # "risk" | "forecast" | "effect"
    metrics: dict[str, Any]
    fingerprint: str  # training data fingerprint
    created: str  # ISO-8601 UTC
    code_version: str
    extra: dict[str, Any]  # task-specific JSON (forecast targets, effect model info)
    tensors: dict[str, Tensor] = field(default_factory=dict)  # named tensors saved beside


def _code_version() -> str:
    try:
        version = metadata.version("vitalcast")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    git = shutil.which("git")
    if git is None:
        return version
    try:
        # Fixed argv, no shell, no user input.
        described = subprocess.run(  # noqa: S603  # nosec B603
            [git, "describe", "--always", "--dirty", "--tags"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        described = ""
    return f"{version}+{described}" if described else version


def _jsonable(obj: Any) -> Any:
    """Metrics and extras as strict JSON: numpy scalars unwrapped, NaN/inf -> null."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    raise TypeError(f"not JSON-serialisable in a checkpoint: {type(obj).__name__}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '.', '_', '-'")


def save_checkpoint(
    model_dir: str | Path,
    name: str,
    model: nn.Module,
    config: ModelConfig,
    normalizer: Normalizer,
    grid: Grid,
    *,
    temperature: float = 1.0,
    task: str = "risk",
    metrics: dict[str, Any] | None = None,
    fingerprint: str = "",
    extra: dict[str, Any] | None = None,
    tensors: dict[str, Tensor] | None = None,
) -> Path:
    """Publish a new version of `name`; returns its directory (atomic: temp dir + rename)."""
    _check_name(name)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {TASKS}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    if config.n_inputs != 3 * len(normalizer.features):
        raise ValueError("config.n_inputs does not match the normaliser's feature list")
    if config.n_static != normalizer.n_static_inputs:
        raise ValueError("config.n_static does not match the normaliser's statics")
    root = Path(model_dir) / name
    root.mkdir(parents=True, exist_ok=True)

    # Clone: safetensors refuses tensors that share memory, and a live model may change.
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    for key, value in (tensors or {}).items():
        weights[_EXTRA_PREFIX + key] = value.detach().cpu().contiguous().clone()
    created = datetime.now(UTC).replace(microsecond=0)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "architecture": config.to_dict(),
        "features": list(normalizer.features),
        "normalization": normalizer.to_dict(),
        "grid": grid.to_dict(),
        "temperature": float(temperature),
        "metrics": _jsonable(metrics or {}),
        "fingerprint": fingerprint,
        "code_version": _code_version(),
        "extra": _jsonable(extra or {}),
        "tensors": sorted(tensors or {}),
    }

    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        save_file(weights, str(tmp / WEIGHTS))
        _fsync(tmp / WEIGHTS)
        meta["weights_sha256"] = _sha256(tmp / WEIGHTS)
        existing = list_versions(model_dir, name)
        # Versions stay unique and sorted even when two saves land in the same second.
        stamp = created
        while True:
            version = stamp.strftime(_VERSION_FMT)
            if not existing or version > existing[-1]:
                meta["created"] = stamp.isoformat()
                (tmp / META).write_text(json.dumps(meta, indent=2, allow_nan=False))
                _fsync(tmp / META)
                _fsync(tmp)
                try:
                    os.rename(tmp, root / version)  # fails if a concurrent save took it
                    break
                except OSError:
                    if not (root / version).exists():
                        raise
            stamp += timedelta(seconds=1)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved checkpoint %s/%s (%s, %s)", name, version, config.arch, task)
    return root / version


def list_names(model_dir: str | Path) -> list[str]:
    """Model names under model_dir that hold at least one version, sorted."""
    root = Path(model_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and _NAME_RE.match(p.name) and list_versions(root, p.name))


def list_versions(model_dir: str | Path, name: str) -> list[str]:
    """Published versions of `name`, oldest first (temporary directories are ignored)."""
    root = Path(model_dir) / name
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _VERSION_RE.match(p.name))


def latest_version_dir(model_dir: str | Path, name: str) -> Path | None:
    versions = list_versions(model_dir, name)
    return Path(model_dir) / name / versions[-1] if versions else None


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if "format_version" not in meta:
        raise CheckpointError(f"{path}: missing key 'format_version'")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown format_version {meta['format_version']!r} "
                              f"(this code reads {FORMAT_VERSION})")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {', '.join(repr(k) for k in missing)}")
    for key, kind in _TYPES.items():
        if not isinstance(meta[key], kind):
            raise CheckpointError(f"{path}: {key!r} has the wrong type "
                                  f"({type(meta[key]).__name__})")
    if "tensors" in meta and not (isinstance(meta["tensors"], list)
                                  and all(isinstance(t, str) for t in meta["tensors"])):
        raise CheckpointError(f"{path}: 'tensors' must be a list of names")
    return meta


def _check_safetensors_header(path: Path) -> None:
    """Refuse anything that is not a whole safetensors file before a parser sees it.

    Layout: 8-byte little-endian header length, a JSON header with each tensor's byte
    offsets, then the raw data; parsing the header needs nothing but `json`.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
        header_len = int.from_bytes(head[:8], "little")
        # Pickle protocol 2+ starts with 0x80, torch.save's zip with "PK"; a safetensors
        # header always opens with "{" at byte 8. (Byte 0 alone proves nothing: it is the
        # low byte of the header length.)
        if head[8:9] != b"{" and (head[:1] == b"\x80" or head[:2] == b"PK"):
            raise CheckpointError(f"{path}: is a pickle / torch.save file, not safetensors; "
                                  "refusing to load it")
        if len(head) < 9:
            raise CheckpointError(f"{path}: truncated ({size} bytes)")
        if head[8:9] != b"{" or 8 + header_len > size:
            raise CheckpointError(f"{path}: not a safetensors file or truncated "
                                  f"(header of {header_len} bytes, file of {size})")
        f.seek(8)
        try:
            header = json.loads(f.read(header_len))
            end = max((int(t["data_offsets"][1]) for k, t in header.items()
                       if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise CheckpointError(f"{path}: corrupted safetensors header ({e})") from None
    if 8 + header_len + end != size:
        raise CheckpointError(f"{path}: truncated or padded: {size} bytes, the header "
                              f"describes {8 + header_len + end}")


def _read_weights(path: Path, sha256: str) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    _check_safetensors_header(path)
    try:
        weights = load_file(str(path))  # parses a header and raw buffers; never unpickles
    except Exception as e:  # safetensors raises its own error type for every bad file
        raise CheckpointError(f"{path}: cannot read safetensors ({e})") from None
    if _sha256(path) != sha256:
        raise CheckpointError(f"{path}: checksum mismatch (corrupted or replaced)")
    return weights


def load_checkpoint(version_dir: str | Path) -> Checkpoint:
    """Load and verify one version directory; raises CheckpointError on any problem."""
    vdir = Path(version_dir)
    meta_path, weights_path = vdir / META, vdir / WEIGHTS
    meta = _read_meta(meta_path)
    try:
        config = ModelConfig.from_dict(meta["architecture"])
        normalizer = Normalizer.from_dict(meta["normalization"])
        grid = Grid.from_dict(meta["grid"])
        temperature = float(meta["temperature"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{meta_path}: invalid architecture/normalisation/grid ({e})"
                              ) from None
    if meta["task"] not in TASKS:
        raise CheckpointError(f"{meta_path}: unknown task {meta['task']!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise CheckpointError(f"{meta_path}: temperature must be positive, got {temperature}")
    if list(meta["features"]) != list(normalizer.features):
        raise CheckpointError(f"{meta_path}: feature list does not match the normalisation")
    if config.n_inputs != 3 * len(normalizer.features):
        raise CheckpointError(f"{meta_path}: architecture expects {config.n_inputs} inputs, "
                              f"the feature list gives {3 * len(normalizer.features)}")
    if config.n_static != normalizer.n_static_inputs:
        raise CheckpointError(f"{meta_path}: architecture expects {config.n_static} static "
                              f"inputs, the normalisation gives {normalizer.n_static_inputs}")

    stored = _read_weights(weights_path, str(meta["weights_sha256"]))
    names = [str(n) for n in meta.get("tensors", [])]
    tensors = {n: stored.pop(_EXTRA_PREFIX + n) for n in names if _EXTRA_PREFIX + n in stored}
    if len(tensors) != len(names):
        raise CheckpointError(f"{weights_path}: named tensors listed in {META} are missing")
    model = build_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights_path}: weights do not match the architecture "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    wrong = [k for k, v in expected.items() if v.shape != stored[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{weights_path}: shape of {k} is {tuple(stored[k].shape)}, "
                              f"the architecture needs {tuple(expected[k].shape)}")
    with torch.no_grad():
        model.load_state_dict(stored, strict=True)
    model.eval()
    return Checkpoint(
        name=vdir.parent.name, version=vdir.name, path=vdir, model=model, config=config,
        normalizer=normalizer, grid=grid, temperature=temperature, task=str(meta["task"]),
        metrics=dict(meta["metrics"]), fingerprint=str(meta["fingerprint"]),
        created=str(meta["created"]), code_version=str(meta["code_version"]),
        extra=dict(meta["extra"]), tensors=tensors,
    )
