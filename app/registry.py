"""The model registry: what the service scores with, swapped atomically on reload.

`load()` scans the model dir and, per name, serves the newest version that loads. A
checkpoint that fails to load is reported (and logged) and skipped: the version of that
name already serving keeps serving, or the next older version is tried. The served set is
one immutable mapping replaced in a single assignment, so a request that took a
`Checkpoint` at its start finishes on it whatever a concurrent reload does. A new version
is warmed up (`warm_up`, the service's scoring of a made-up stay) before it is swapped in:
the first request does not wait for torch's set-up, and a version that loads but cannot
score counts as one that failed to load.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from app.errors import ModelUnavailable, NoModelLoaded, UnknownModel
from models.checkpoint import (
    Checkpoint,
    CheckpointError,
    list_names,
    list_versions,
    load_checkpoint,
)

__all__ = ["LoadFailure", "ModelRegistry"]

log = logging.getLogger("vitalcast.registry")


@dataclass(frozen=True)
class LoadFailure:
    name: str  # model name (directory under the model dir)
    version: str | None  # version that failed; None when the name itself could not be read
    message: str  # CheckpointError message: names the file and the problem


class ModelRegistry:
    def __init__(self, model_dir: Path, default_model: str,
                 warm_up: Callable[[Checkpoint], None] | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.default_model = default_model
        self.warm_up = warm_up
        self._models: Mapping[str, Checkpoint] = MappingProxyType({})
        self._failures: tuple[LoadFailure, ...] = ()
        self._reload_lock = threading.Lock()  # one scan at a time; readers never wait

    @property
    def models(self) -> Mapping[str, Checkpoint]:
        """The served checkpoints by name (an immutable snapshot)."""
        return self._models

    @property
    def failures(self) -> tuple[LoadFailure, ...]:
        """Checkpoints the last scan could not load."""
        return self._failures

    @property
    def ready(self) -> bool:
        return bool(self._models)

    def check_not_failed(self, name: str) -> None:
        """Raise ModelUnavailable (503) when `name` is not served because its checkpoint
        failed to load in the last scan: the model exists, so "unknown model" (404) would
        send the client looking for a typo while the operator has a checkpoint to fix."""
        if name in self._models:
            return
        failure = next((f for f in self._failures if f.name == name), None)
        if failure is not None:
            raise ModelUnavailable(
                f"model {name[:128]!r} failed to load: {failure.message}; fix or replace its "
                "checkpoint, then POST /v1/models/reload (GET /v1/models lists load errors)")

    def get(self, name: str | None) -> Checkpoint:
        """The checkpoint serving `name` (the default model when None)."""
        wanted = self.default_model if name is None else name
        self.check_not_failed(wanted)
        models = self._models  # one read: the snapshot this request keeps
        if not models:
            raise NoModelLoaded(f"no model is loaded yet (model dir: {self.model_dir.name}/)")
        ckpt = models.get(wanted)
        if ckpt is None:
            if name is None:
                raise NoModelLoaded(
                    f"the default model {wanted!r} is not loaded; loaded: {', '.join(models)}")
            raise UnknownModel(f"unknown model {wanted[:128]!r}; loaded: {', '.join(models)}")
        return ckpt

    def versions(self, name: str) -> list[str]:
        """Versions of `name` on disk; [] when the dir cannot be read (the scan reports why)."""
        try:
            return list_versions(self.model_dir, name)
        except OSError:
            return []

    def load(self) -> tuple[Mapping[str, Checkpoint], tuple[LoadFailure, ...]]:
        """Re-scan the model dir and swap in what it holds; returns (served, failures)."""
        with self._reload_lock:
            current = self._models
            served: dict[str, Checkpoint] = {}
            failures: list[LoadFailure] = []
            try:
                if not self.model_dir.is_dir():  # unmounted, moved, replaced by a file
                    raise NotADirectoryError(f"{self.model_dir.name}/ is not a directory")
                names = list_names(self.model_dir)
            except OSError as e:
                failures.append(LoadFailure("*", None, f"cannot scan the model dir: {e}"))
                names = list(current)  # keep serving what we have
            for name in names:
                ckpt = self._newest_loadable(name, current.get(name), failures)
                if ckpt is not None:
                    served[name] = ckpt
            self._models = MappingProxyType(served)
            self._failures = tuple(failures)
        log.info("models loaded", extra={
            "models": [f"{c.name}/{c.version}" for c in served.values()],
            "errors": len(failures)})
        for failure in failures:
            log.warning("checkpoint skipped: %s", failure.message)
        return self._models, self._failures

    def _newest_loadable(self, name: str, serving: Checkpoint | None,
                         failures: list[LoadFailure]) -> Checkpoint | None:
        """Newest version of `name` that loads; the serving one is reused, not re-read, and
        nothing older than it is tried."""
        try:
            versions = list_versions(self.model_dir, name)
        except OSError as e:
            failures.append(LoadFailure(name, None, f"cannot list versions: {e}"))
            return serving
        for version in reversed(versions):
            if serving is not None and version <= serving.version:
                return serving
            try:
                ckpt = load_checkpoint(self.model_dir / name / version)
            except CheckpointError as e:
                failures.append(LoadFailure(name, version, self._relative(str(e))))
                continue
            except Exception as e:  # a checkpoint must never take the service down
                failures.append(LoadFailure(name, version, f"{name}/{version}: failed to load "
                                            f"({type(e).__name__}: {e})"))
                continue
            try:
                if self.warm_up is not None:
                    self.warm_up(ckpt)
            except Exception as e:
                failures.append(LoadFailure(name, version, f"{name}/{version}: loads but cannot "
                                            f"score a made-up stay ({type(e).__name__}: {e})"))
                continue
            return ckpt
        return serving

    def _relative(self, message: str) -> str:
        """Messages name files relative to the model dir: clients need not see server paths."""
        return message.replace(f"{self.model_dir}/", "")
