"""The epoch loop: shuffling, optimisation, early stopping, resumable state, data parallelism.

Task-agnostic: a `Task` says how to turn a batch of training indices into a loss and how to
score the model on validation; this module does the rest. Every random draw of an epoch
(shuffling, prefix lengths, dropout) is seeded from (seed, epoch[, rank]), so a resumed run
repeats exactly the epochs an uninterrupted one would have run.

Data parallel (`torchrun --nproc_per_node=N`): every process holds all stays in memory,
takes an equal-sized shard of each epoch's permutation and DDP averages the gradients.
Validation runs on the full validation split in every process (the weights are identical,
so are the results); rank 0 alone writes run state and the checkpoint, and broadcasts the
stop decision so no process waits on a collective the others skipped.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from training.config import TrainConfig
from training.runstate import RunState, RunStore, load_optimizer_state, split_prefixed

__all__ = ["Distributed", "FitResult", "Task", "fit", "setup_distributed", "teardown"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0  # this process
    world: int = 1  # processes in the job
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup_distributed(device: str = "auto") -> Distributed:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPUs), or run alone."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but no CUDA device is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    dev = torch.device("cuda", local % torch.cuda.device_count()) if use_cuda \
        else torch.device("cpu")
    return Distributed(dist.get_rank(), dist.get_world_size(), dev)


def teardown(d: Distributed) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()


class Task(Protocol):
    """What the loop needs from a task (risk, forecast, ...)."""

    n_train: int  # training stays; the loop permutes range(n_train)

    def batch_loss(self, model: nn.Module, idx: Tensor, rng: np.random.Generator) -> Tensor:
        """Mean loss over the training stays `idx` (prefixes drawn from `rng`)."""
        ...

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Validation figures; must hold "loss" (lower is better, drives early stopping)."""
        ...


@dataclass
class FitResult:
    best_state: dict[str, Tensor]  # weights of the epoch with the lowest validation loss
    history: list[dict[str, float]]  # per epoch: train_loss and the validation figures
    best_epoch: int  # 0-based
    epochs_run: int  # epochs completed, including any before a resume
    resumed_from: int  # epochs already done when this process started (0 = fresh)


def _state_copy(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _set_lr(opt: torch.optim.Optimizer, cfg: TrainConfig, progress: float) -> None:
    """The learning rate at `progress` (0..1) through the planned epochs.

    Cosine (Loshchilov & Hutter, 2017) decays it to 0 by the last planned epoch, so the last
    epochs take small steps that settle into a minimum instead of hopping around it with the
    minibatch noise, and the result depends less on which epoch early stopping picks.
    A pure function of the step, so a resumed run follows the same schedule.
    """
    scale = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1.0
    for group in opt.param_groups:
        group["lr"] = cfg.lr * scale


def fit(model: nn.Module, task: Task, cfg: TrainConfig, d: Distributed,
        store: RunStore | None = None, run_meta: dict[str, Any] | None = None,
        resume: bool = False) -> FitResult:
    """Train `model` in place and return the best weights (early stopping on val loss).

    store: where per-epoch state goes (rank 0 writes it); with `resume` and a saved state,
    training continues after its last complete epoch. run_meta: JSON that must match the
    saved state for a resume to be allowed (data fingerprint, configuration).
    """
    run_meta = run_meta or {}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_state = _state_copy(model)
    best_loss, best_epoch, bad, start = math.inf, -1, 0, 0
    history: list[dict[str, float]] = []

    if resume and store is not None and store.exists():
        saved, tensors = store.load()
        mismatch = [k for k, v in run_meta.items() if saved.get("meta", {}).get(k) != v]
        if mismatch:
            raise ValueError(f"cannot resume {store.dir}: the saved run differs in "
                             f"{', '.join(mismatch)}; start afresh without --resume")
        dev = next(model.parameters()).device
        model.load_state_dict({k: v.to(dev) for k, v in split_prefixed(tensors, "model").items()})
        best_state = {k: v.to(dev) for k, v in split_prefixed(tensors, "best").items()}
        load_optimizer_state(opt, {k: v.to(dev) for k, v in tensors.items()},
                             saved["optimizer"])
        best_loss, best_epoch = float(saved["best_loss"]), int(saved["best_epoch"])
        bad, start, history = int(saved["bad_epochs"]), int(saved["epoch"]) + 1, \
            list(saved["history"])
        log.info("resuming %s after epoch %d", store.dir, start)
    resumed_from = start

    net: nn.Module = model
    if d.active:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None)

    done = start >= cfg.epochs or (0 < cfg.patience <= bad)
    bar = tqdm(total=cfg.epochs, initial=start, disable=not d.is_main or done,
               desc="epochs", unit="ep", dynamic_ncols=True)
    epoch = start
    while not done:
        perm = np.random.default_rng([cfg.seed, epoch]).permutation(task.n_train)
        per_rank = task.n_train // d.world
        shard = torch.from_numpy(perm[d.rank::d.world][:per_rank]).to(d.device)
        prefix_rng = np.random.default_rng([cfg.seed, epoch, 1 + d.rank])
        torch.manual_seed(cfg.seed * 100_003 + epoch * 101 + d.rank)  # dropout
        net.train()
        total, count = 0.0, 0
        n_batches = math.ceil(per_rank / cfg.batch_size)
        for b, start_i in enumerate(range(0, per_rank, cfg.batch_size)):
            _set_lr(opt, cfg, (epoch * n_batches + b) / (cfg.epochs * n_batches))
            idx = shard[start_i:start_i + cfg.batch_size]
            loss = task.batch_loss(net, idx, prefix_rng)
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            # Recurrent nets unrolled over 48 steps can produce exploding gradients (Pascanu
            # et al., 2013); clipping the global norm keeps one bad batch from wrecking
            # the weights without changing the direction of ordinary updates.
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        model.eval()
        with torch.no_grad():
            val = task.validate(model)
        row = {"epoch": float(epoch), "train_loss": total / max(count, 1)}
        row.update({f"val_{k}": float(v) for k, v in val.items()})
        history.append(row)
        if val["loss"] < best_loss - 1e-5:
            best_loss, best_epoch, bad = float(val["loss"]), epoch, 0
            best_state = _state_copy(model)
        else:
            bad += 1
        stop = epoch + 1 >= cfg.epochs or (0 < cfg.patience <= bad)
        if d.active:  # rank 0 decides, so every process leaves the loop together
            flag = torch.tensor([1 if stop else 0], device=d.device)
            dist.broadcast(flag, src=0)
            stop = bool(flag.item())
        if d.is_main and store is not None:
            state: RunState = {"epoch": epoch, "best_loss": best_loss, "best_epoch": best_epoch,
                               "bad_epochs": bad, "history": history, "meta": run_meta}
            store.save(state, model, opt, best_state)
        if d.active:
            dist.barrier()
        postfix = {"loss": f"{row['train_loss']:.4f}", "val_loss": f"{val['loss']:.4f}"}
        if "auroc" in val:
            postfix["val_auroc"] = f"{val['auroc']:.4f}"
        bar.set_postfix(postfix)
        bar.update(1)
        log.info("epoch %d: %s", epoch, postfix)
        epoch += 1
        done = stop
    bar.close()
    return FitResult(best_state=best_state, history=history, best_epoch=best_epoch,
                     epochs_run=epoch, resumed_from=resumed_from)
