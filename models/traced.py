"""A risk model's forward pass as a TorchScript graph, for serving beside other threads.

An eager forward pass is ~60 torch operators; each lets the GIL go while it computes and
must take it back before the next one starts. In the service the event loop and the other
inference thread hold the GIL for Python work (decoding, checks, answers) in stretches of
up to the switch interval (5 ms), so an eager pass waits at nearly every operator: beside a
thread that runs Python without pause, the default bi-LSTM's pass over 128 stays took
~590 ms against ~11 alone. A traced graph runs its operators in C++ and takes the GIL only
at its start and end (~50 ms beside the same thread), while alone it is exactly as fast:
the forward pass itself is unchanged, only its waits go.

`trace_for_inference` records the graph of a model and keeps it only if it gives exactly
the module's outputs (every bit of the risk logit, length of stay and attention) on made-up
stays of several batch sizes and spans, after the executor's first optimising runs, and
the tracer noted no value that the model's own code took from its inputs (a branch on the
data, which the graph would take for every input); any other model (a forecaster, a model
whose graph differs or cannot be traced) is scored by the module itself. torch.jit is
deprecated in favour of torch.compile and torch.export, whose CPU graphs either need a C++
compiler at start-up or run their operators from Python; should a torch release drop it,
tracing fails and the modules score as before. `traced_forward` gives the kept graph.
Graphs are held per module, weakly: a model that is no longer served takes its graph with
it.
"""

from __future__ import annotations

import logging
import threading
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
import torch.jit._recursive
import torch.jit._state
from torch import Tensor, nn
from torch.jit._trace import TracerWarning

__all__ = ["Forward", "trace_for_inference", "traced_forward"]

Forward = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]

_GRAPHS: weakref.WeakKeyDictionary[nn.Module, torch.jit.ScriptModule] = \
    weakref.WeakKeyDictionary()
log = logging.getLogger(__name__)
_CHECK_RUNS = 3  # the profiling executor optimises a graph after its first runs
_UNIT_SWAP = threading.Lock()  # one trace at a time points torch at its own unit
# Units that something else compiled into while torch pointed at them (torch.jit.script in
# another thread): torch's caches keep those types, whose code must then outlive the graph.
_PINNED: list[torch._C.CompilationUnit] = []


class _Outputs(nn.Module):
    """The model's forward with its outputs as a tuple, which tracing records."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, static: Tensor, step_mask: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model(x, static, step_mask)
        return out.risk_logit, out.los, out.attention


def _stays(n: int, n_steps: int, n_inputs: int, n_static: int, seed: int
           ) -> tuple[Tensor, Tensor, Tensor]:
    """n made-up stays: random inputs and statics, each with a span of observed bins that
    starts at bin 0 or later and ends at the last bin or earlier (some one bin long)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_steps, n_inputs, generator=g)
    static = torch.randn(n, n_static, generator=g)
    first = torch.randint(0, n_steps, (n,), generator=g)
    first[: max(1, n // 3)] = 0  # whole-window stays too
    length = 1 + (torch.rand(n, generator=g) * (n_steps - first)).long()
    steps = torch.arange(n_steps)
    step_mask = (steps >= first[:, None]) & (steps < (first + length)[:, None])
    return x, static, step_mask


def _same(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
        for x, y in zip(a, b, strict=True))


_TORCH_DIR = str(Path(torch.__file__).parent)


def _baked_in(note: warnings.WarningMessage) -> bool:
    """Whether the tracer recorded a value the model's own code computed from its inputs
    as a constant (a branch or a number taken by the data): the graph would take that path
    for every input. torch's own modules note such values for their argument checks only."""
    return (issubclass(note.category, TracerWarning)
            and not str(note.filename).startswith(_TORCH_DIR))


def _trace_in_own_unit(wrapped: nn.Module, example: tuple[Tensor, ...]
                       ) -> torch.jit.ScriptModule:
    """torch.jit.trace with the module types it creates in a compilation unit of their
    own, kept by the graph: torch's global unit would keep every traced model's code and
    executor (several MiB a model, never freed) after the model and its graph are gone."""
    unit = torch._C.CompilationUnit()
    with _UNIT_SWAP:
        shared, cached = torch.jit._state._python_cu, _cached_jit_types()
        try:
            torch.jit._state._python_cu = unit  # read by torch when it creates a module's type
            graph: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
                wrapped, example, check_trace=False)
        finally:
            torch.jit._state._python_cu = shared
            if _cached_jit_types() != cached:
                # A module or class scripted meanwhile (tracing caches none) has its type in
                # this unit, held weakly by torch's process-wide caches: freeing the unit with
                # the graph would leave them pointing at freed code (a crash when that class
                # is scripted again). Keep it: a leak, not a segfault.
                _PINNED.append(unit)
    graph.__dict__["_own_unit"] = unit  # the types' methods live as long as the graph
    return graph


def _cached_jit_types() -> int:
    """How many module and class types torch's scripting has cached process-wide."""
    store = torch.jit._recursive.concrete_type_store.type_store
    return sum(map(len, store.values())) + len(torch.jit._state._script_classes)


def trace_for_inference(model: nn.Module, n_steps: int, n_inputs: int, n_static: int) -> bool:
    """Trace `model` (eval mode, inputs (B, n_steps, n_inputs), statics (B, n_static)) and
    keep the graph for `traced_forward` when it gives exactly the module's outputs; whether
    it was kept. Blocking (torch); call before the model serves."""
    model.eval()
    wrapped = _Outputs(model).eval()
    example = _stays(8, n_steps, n_inputs, n_static, seed=0)
    try:
        with torch.no_grad():
            if model(*example).forecast is not None:
                return False  # a forecaster: its decoder is scored by the module
            with warnings.catch_warnings(record=True) as notes:
                warnings.simplefilter("always")
                graph = _trace_in_own_unit(wrapped, example)
        if any(_baked_in(note) for note in notes):
            return False
        with torch.inference_mode():
            for n, seed in ((8, 1), (1, 2), (37, 3), (3, 4), (16, 5)):
                stays = _stays(n, n_steps, n_inputs, n_static, seed)
                want = wrapped(*stays)
                for _ in range(_CHECK_RUNS):
                    if not _same(graph(*stays), want):
                        return False
    except Exception as e:  # noqa: BLE001 - any failure to record or check: use the module
        # said, as it is slower beside other threads (the message may quote tensor values:
        # only its kind is logged)
        log.warning("%s scores without a traced graph: tracing failed (%s)",
                    type(model).__name__, type(e).__name__)
        return False
    _GRAPHS[model] = graph
    return True


def traced_forward(model: nn.Module) -> Forward | None:
    """The kept graph of `model` (risk logit, los, attention), or None: use the module."""
    graph = _GRAPHS.get(model)
    return None if graph is None else graph
