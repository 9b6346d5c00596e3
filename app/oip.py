"""Open Inference Protocol (KServe "V2") tensors: metadata, request decoding, response encoding.

A checkpoint takes the tensorisation `models.features.tensorise` produces for it, one
tensor per array (N stays, T = the grid's steps, F = the model's features in
`normalizer.features` order, S = its static descriptors):

- `values` FP32 (N, T, F): normalised values — (x - mean) / std with x = log1p(value) for
  the catalogue's log-scale variables, carried forward, 0 before the first observation;
- `mask` FP32 (N, T, F): 1 where the bin holds an observation, else 0;
- `hours_since` FP32 (N, T, F): raw hours since the last observation at the bin's end
  (`Tensors.delta`; the network's log scaling is applied here, as in training);
- `static` FP32 (N, 2S): normalised descriptors, then one missing-indicator each;
- `step_mask` BOOL (N, T), optional: the bins the model attends to; by default the bins
  from the first to the last one holding an observation, as tensorisation sets it.

The normaliser's statistics and the channel order are in the model metadata `parameters`.
Outputs: `risk` FP32 (N) calibrated probability, `los` FP32 (N) days, `attention` FP32 (N, T).
Data may be flat row-major or nested lists; outputs are sent flat, row-major.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.timebase import MAX_HOURS
from models.catalogue import INTERVENTIONS
from models.checkpoint import Checkpoint
from models.features import Grid, Tensors
from models.predict import Prediction

__all__ = [
    "InferRequest",
    "OIPError",
    "TensorSpec",
    "decode_inputs",
    "encode_outputs",
    "input_specs",
    "model_metadata",
    "output_specs",
]

Datatype = Literal["BOOL", "FP32"]


class OIPError(Exception):
    """A request the protocol answers with `{"error": message}` and this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class TensorSpec:
    name: str  # tensor name in requests and responses
    datatype: Datatype  # OIP datatype
    shape: tuple[int, ...]  # -1 where the size is free (the batch)
    required: bool = True  # inputs only: may the request leave it out
    bound: float = 1e6  # FP32 inputs: largest magnitude accepted; z-scores never get near
    meaning: str = ""  # what the data is, for the message when it is out of bounds


def input_specs(ckpt: Checkpoint) -> tuple[TensorSpec, ...]:
    t, f = ckpt.grid.n_steps, len(ckpt.normalizer.features)
    return (
        TensorSpec("values", "FP32", (-1, t, f),
                   meaning="values are normalised with the model's normaliser"),
        TensorSpec("mask", "FP32", (-1, t, f), meaning="1 where the bin holds an observation"),
        TensorSpec("hours_since", "FP32", (-1, t, f), bound=MAX_HOURS,
                   meaning="hours since the last observation"),
        TensorSpec("static", "FP32", (-1, ckpt.normalizer.n_static_inputs),
                   meaning="descriptors are normalised with the model's normaliser"),
        TensorSpec("step_mask", "BOOL", (-1, t), required=False),
    )


def output_specs(ckpt: Checkpoint) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("risk", "FP32", (-1,)),
        TensorSpec("los", "FP32", (-1,)),
        TensorSpec("attention", "FP32", (-1, ckpt.grid.n_steps)),
    )


def _spec_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def model_metadata(ckpt: Checkpoint, versions: list[str]) -> dict[str, Any]:
    """The OIP model metadata response, with what a client needs to tensorise."""
    return {
        "name": ckpt.name,
        "versions": versions,
        "platform": "pytorch",
        "inputs": [_spec_json(s) for s in input_specs(ckpt)],
        "outputs": [_spec_json(s) for s in output_specs(ckpt)],
        "parameters": {
            "version": ckpt.version,
            "architecture": ckpt.config.arch,
            "grid": ckpt.grid.to_dict(),
            "normalizer": ckpt.normalizer.to_dict(),
            "temperature": ckpt.temperature,
        },
    }


# --- requests ---------------------------------------------------------------------------------


class InferInput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(max_length=64)
    shape: list[int] = Field(max_length=8, description="the tensor's shape, sizes >= 0")
    datatype: str = Field(max_length=16, description="FP32, or BOOL for step_mask")
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(None, description="flat row-major, or nested per `shape`")


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(max_length=64)
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=16)
    outputs: list[RequestedOutput] | None = Field(None, max_length=16)


def _array(tensor: InferInput, spec: TensorSpec) -> np.ndarray:
    """One input's data as an array of its declared shape; OIPError(400) naming it."""
    name = tensor.name
    if tensor.datatype != spec.datatype:
        raise OIPError(400, f"input '{name}' has datatype {tensor.datatype[:16]}; the model "
                       f"takes {spec.datatype}")
    if any(d < 0 for d in tensor.shape):
        raise OIPError(400, f"input '{name}' has a negative size in shape {tensor.shape}")
    if len(tensor.shape) != len(spec.shape) or any(
            want != -1 and got != want for got, want in zip(tensor.shape, spec.shape, strict=True)):
        raise OIPError(400, f"input '{name}' has shape {tensor.shape}; the model takes "
                       f"{list(spec.shape)} (-1: any size)")
    if tensor.data is None:
        raise OIPError(400, f"input '{name}' has no 'data' (binary tensor data is not "
                       "supported)")
    try:
        typed = np.array(tensor.data)
    except (ValueError, TypeError, OverflowError):
        raise OIPError(400, f"input '{name}': data is not a {spec.datatype} array (ragged "
                       "or non-numeric)") from None
    if spec.datatype == "BOOL" and typed.dtype != np.bool_:
        raise OIPError(400, f"input '{name}': BOOL data must be true/false")
    if spec.datatype == "FP32" and typed.dtype.kind not in "biuf":
        raise OIPError(400, f"input '{name}': FP32 data must be numbers")
    raw = typed.astype(bool if spec.datatype == "BOOL" else np.float64)
    size = math.prod(tensor.shape)
    if raw.size != size:
        raise OIPError(400, f"input '{name}' has {raw.size} elements; shape {tensor.shape} "
                       f"needs {size}")
    out = raw.reshape(tensor.shape)
    if spec.datatype == "FP32":
        if not np.isfinite(out).all():
            raise OIPError(400, f"input '{name}' holds NaN or Infinity")
        if np.abs(out).max(initial=0.0) > spec.bound:
            raise OIPError(400, f"input '{name}' holds values beyond {spec.bound:g}: "
                           f"{spec.meaning}")
    return out


def decode_inputs(request: InferRequest, ckpt: Checkpoint, max_batch: int) -> Tensors:
    """The request's named tensors -> `Tensors` on the checkpoint's grid; OIPError(400)."""
    specs = {s.name: s for s in input_specs(ckpt)}
    outputs = {s.name for s in output_specs(ckpt)}
    for requested in request.outputs or ():
        if requested.name not in outputs:
            raise OIPError(400, f"unknown output '{requested.name[:64]}'; the model gives "
                           f"{', '.join(sorted(outputs))}")
    given: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        spec = specs.get(tensor.name)
        if spec is None:
            raise OIPError(400, f"unknown input '{tensor.name[:64]}'; the model takes "
                           f"{', '.join(specs)}")
        if tensor.name in given:
            raise OIPError(400, f"input '{tensor.name}' is given twice")
        given[tensor.name] = _array(tensor, spec)
    missing = [s.name for s in specs.values() if s.required and s.name not in given]
    if missing:
        raise OIPError(400, f"missing input {', '.join(repr(m) for m in missing)}")
    sizes = {name: a.shape[0] for name, a in given.items()}
    n = sizes["values"]
    if any(s != n for s in sizes.values()):
        raise OIPError(400, f"inputs disagree on the batch size: {sizes}")
    if not 1 <= n <= max_batch:
        raise OIPError(400, f"batch size {n} is outside 1-{max_batch}")
    mask = given["mask"]
    if not np.isin(mask, (0.0, 1.0)).all():
        raise OIPError(400, "input 'mask' must hold only 0 and 1")
    if (given["hours_since"] < 0).any():
        raise OIPError(400, "input 'hours_since' must be >= 0 (hours)")
    if "step_mask" in given:
        step_mask = given["step_mask"]
    else:  # as tensorisation sets it: the first to the last bin holding an observation
        any_obs = mask.any(axis=2)  # (N, T)
        t_steps = any_obs.shape[1]
        first = np.where(any_obs.any(axis=1), any_obs.argmax(axis=1), t_steps)
        last = t_steps - 1 - any_obs[:, ::-1].argmax(axis=1)
        steps = np.arange(t_steps)[None, :]
        step_mask = (steps >= first[:, None]) & (steps <= last[:, None])  # (N, T)
    empty = np.flatnonzero(~step_mask.any(axis=1))
    if len(empty):
        raise OIPError(400, f"stay {int(empty[0])} of the batch has no bin to attend to "
                       "(no observation in 'mask' and no 'step_mask')")
    t, n_i = ckpt.grid.n_steps, len(INTERVENTIONS)
    return Tensors(
        patient_ids=[str(i) for i in range(n)],
        values=given["values"].astype(np.float32),
        mask=mask.astype(np.float32),
        delta=given["hours_since"].astype(np.float32),
        static=given["static"].astype(np.float32),
        step_mask=step_mask.astype(bool),
        offset=np.zeros(n, dtype=np.int64),
        interventions=np.zeros((n, t, n_i), dtype=np.float32),
        grid=Grid(ckpt.grid.step_hours, ckpt.grid.n_steps),
    )


def encode_outputs(request: InferRequest, ckpt: Checkpoint,
                   predictions: list[Prediction]) -> dict[str, Any]:
    """Predictions -> the OIP inference response (only the outputs asked for, if any)."""
    n, t = len(predictions), ckpt.grid.n_steps
    arrays = {
        "risk": np.array([p.probability for p in predictions], dtype=np.float32),
        "los": np.array([p.los_days for p in predictions], dtype=np.float32),
        "attention": np.stack([p.attention for p in predictions]).astype(np.float32)
        if n else np.zeros((0, t), dtype=np.float32),
    }
    wanted = [o.name for o in request.outputs] if request.outputs else list(arrays)
    body: dict[str, Any] = {
        "model_name": ckpt.name,
        "model_version": ckpt.version,
        "outputs": [{"name": w, "datatype": "FP32", "shape": list(arrays[w].shape),
                     "data": arrays[w].reshape(-1).tolist()} for w in wanted],
    }
    if request.id is not None:
        body["id"] = request.id
    return body
