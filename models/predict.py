"""The one scoring path: the service and the evaluation both score through here.

Rows are tensorised with the checkpoint's own normaliser and grid, the model runs in eval
mode under `torch.inference_mode` in batches, and the risk is calibrated by the
checkpoint's temperature: probability = sigmoid(logit / temperature). With `explain`, the
integrated-gradients contribution of each variable to the logit comes along. Scoring is
deterministic: no dropout, no sampling, the same rows give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.attribution import integrated_gradients, unobserved_baseline
from models.checkpoint import Checkpoint
from models.features import Tensors, tensorise
from models.traced import traced_forward

if TYPE_CHECKING:  # imported where a DataFrame is read: the service reads none (~30 MB)
    import pandas as pd

__all__ = ["IG_MAX_ROWS", "IG_REFINE_NODES", "IG_SPLIT", "IG_STEPS", "Prediction", "score",
           "score_tensors"]

# Integrated gradients (models/attribution.py): 4 Gauss-Legendre nodes in a first pass, a
# panel that misses completeness (1e-3 + 1% of |logit(x) - logit(baseline)|) split in two
# with 8 nodes each. On 64 stays of a bi-LSTM trained 25 epochs on 1,500 synthetic stays
# this takes 26 gradient evaluations per stay against 29 for the earlier 8 nodes / split
# in four (a randomly initialised one: 6 against 10; the benchmarks' model), with every
# per-variable contribution within 3.2% (median 0.1%) of |logit(x) - logit(baseline)| of a
# 128-node reference (8 nodes: 1.7%).
IG_STEPS = 4
IG_SPLIT = 2
IG_REFINE_NODES = 8
# Rows of one IG forward/backward pass: bounds the activations kept for the backward
# (~0.1 MB per row for the default bi-LSTM), so a batch of 1,000 stays does not allocate GBs.
IG_MAX_ROWS = 512


@dataclass
class Prediction:
    probability: float  # calibrated (temperature-scaled) risk of in-hospital death
    logit: float  # raw risk logit, before calibration
    los_days: float  # predicted length of stay, days
    attention: np.ndarray  # (T,) over the window grid; 0 outside step_mask
    step_mask: np.ndarray  # (T,) bool, bins from the first to the last observed one
    offset: int  # bins skipped before the window (stays longer than the window)
    contributions: dict[str, float] | None  # per variable, signed IG on the logit, if explain
    forecast: np.ndarray | None = None  # (T_out, K) normalised scale, forecast models only


def score(
    ckpt: Checkpoint,
    observations: pd.DataFrame,
    patients: pd.DataFrame | None = None,
    patient_ids: Sequence[str] | None = None,
    *,
    explain: bool = False,
    batch_size: int = 256,
) -> list[Prediction]:
    """Score long-format rows (patient_id, time_hours, variable, value), one Prediction per
    stay in `patient_ids` order (default: sorted ids in `observations`)."""
    tensors = tensorise(observations, ckpt.normalizer, ckpt.grid, patients=patients,
                        patient_ids=patient_ids)
    return score_tensors(ckpt, tensors, explain=explain, batch_size=batch_size)


def score_tensors(ckpt: Checkpoint, tensors: Tensors, *, explain: bool = False,
                  batch_size: int = 256) -> list[Prediction]:
    """Score stays already tensorised with the checkpoint's normaliser and grid."""
    n_f = len(ckpt.normalizer.features)
    if tensors.values.shape[2] != n_f or tensors.static.shape[1] != ckpt.config.n_static:
        raise ValueError(f"tensors have {tensors.values.shape[2]} features and "
                         f"{tensors.static.shape[1]} static channels; checkpoint "
                         f"{ckpt.name}/{ckpt.version} expects {n_f} and {ckpt.config.n_static}")
    if tensors.grid != ckpt.grid:
        raise ValueError(f"tensors are on {tensors.grid}, checkpoint expects {ckpt.grid}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = ckpt.model.eval()
    graph = traced_forward(model)  # kept by the service for the models it serves
    inputs = tensors.inputs()  # (N, T, 3F)
    results: list[Prediction] = []
    for start in range(0, len(tensors), batch_size):
        sl = slice(start, start + batch_size)
        x = torch.from_numpy(inputs[sl])
        static = torch.from_numpy(tensors.static[sl])
        step_mask = torch.from_numpy(tensors.step_mask[sl])
        offset = tensors.offset[sl]
        with torch.inference_mode():
            if graph is not None:  # the same outputs, bit for bit (models/traced.py)
                risk_logit, los_t, attention_t = graph(x, static, step_mask)
                forecast_t = None
            else:
                out = model(x, static, step_mask)
                risk_logit, los_t, attention_t = out.risk_logit, out.los, out.attention
                forecast_t = out.forecast
            logit = risk_logit.double()
            prob = torch.sigmoid(logit / ckpt.temperature).numpy()
        per_var = None
        if explain:
            base = unobserved_baseline(x, ckpt.grid.step_hours, torch.from_numpy(offset))
            _, per_var_t = integrated_gradients(model, x, static, step_mask, steps=IG_STEPS,
                                                baseline=base, max_rows=IG_MAX_ROWS,
                                                split=IG_SPLIT, refine_nodes=IG_REFINE_NODES,
                                                logit_x=risk_logit)
            per_var = per_var_t.double().numpy()  # (b, F)
        # One conversion per batch; each stay keeps a copy of its row (a cache holding one
        # stay keeps no batch alive).
        attention = attention_t.numpy().astype(np.float64)
        forecast = forecast_t.numpy() if forecast_t is not None else None
        # Per stay from lists and numpy rows: indexing a tensor costs microseconds per
        # element, a numpy scalar a fraction of one.
        masks = tensors.step_mask[sl]
        for j, (p, lg, days, o) in enumerate(zip(prob.tolist(), logit.numpy().tolist(),
                                                 los_t.numpy().tolist(), offset.tolist(),
                                                 strict=True)):
            results.append(Prediction(
                probability=p,
                logit=lg,
                los_days=days,
                attention=attention[j].copy(),
                step_mask=masks[j].copy(),
                offset=o,
                contributions=(None if per_var is None else
                               dict(zip(ckpt.normalizer.features, per_var[j].tolist(),
                                        strict=True))),
                forecast=None if forecast is None else forecast[j].astype(np.float64),
            ))
    return results
