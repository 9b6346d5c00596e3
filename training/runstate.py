"""Per-epoch training state on disk, so `--resume` continues an interrupted run.

Layout, in `<model_dir>/.runs/<name>/`:
    epoch-0007.safetensors   model, optimizer and best-so-far tensors after epoch 7
    state.json               the epoch, early-stopping counters, history, config, and
                             which .safetensors file belongs to it

No pickle anywhere: tensors go through safetensors and everything else is JSON. The JSON is
written last, by atomic rename, and names its tensor file, so a kill at any instant leaves
either the previous complete state or the new one — never a mix.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "RunState",
    "RunStore",
    "load_optimizer_state",
    "optimizer_tensors",
    "split_prefixed",
]

log = logging.getLogger(__name__)

RunState = dict[str, Any]  # JSON part of a saved state (see RunStore.save)


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor],
                                                             dict[str, Any]]:
    """An optimizer's state dict split into tensors (for safetensors) and JSON."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, extra in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(extra)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunStore:
    """Saves and loads the resumable state of one named run."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    def exists(self) -> bool:
        return self.state_path.is_file()

    def save(self, state: RunState, model: nn.Module, opt: torch.optim.Optimizer,
             best: dict[str, torch.Tensor]) -> None:
        """Write the tensors of epoch `state["epoch"]`, then point state.json at them."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v.detach().cpu().contiguous()
                   for k, v in model.state_dict().items()}
        tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best.items()})
        opt_tensors, opt_meta = optimizer_tensors(opt)
        tensors.update(opt_tensors)
        name = f"epoch-{int(state['epoch']):04d}.safetensors"
        tmp = self.dir / f".{name}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, self.dir / name)
        doc = dict(state, tensors=name, optimizer=opt_meta)
        _write_atomic(self.state_path, json.dumps(doc, indent=1).encode())
        for old in self.dir.glob("epoch-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def load(self) -> tuple[RunState, dict[str, torch.Tensor]]:
        """The last complete state and its tensors (CPU). Raises ValueError if unreadable."""
        try:
            doc = json.loads(self.state_path.read_text())
            tensors = load_file(str(self.dir / doc["tensors"]))
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot resume from {self.dir}: {exc}") from exc
        return doc, tensors

    def clear(self) -> None:
        """Remove the run's state once its checkpoint is published."""
        if not self.dir.is_dir():
            return
        for f in self.dir.iterdir():
            if f.is_file():
                f.unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:
            log.warning("run directory %s not empty after clean-up", self.dir)


def split_prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of `tensors` under `prefix.`, with the prefix removed."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
