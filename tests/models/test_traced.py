"""Traced forward passes (models/traced.py): kept only when they give the module's outputs.

The service scores through the graph of each risk model it serves; a user must get exactly
the answers the module itself gives, for any batch size and any span of observed bins, and
a model whose graph would differ must be scored by the module.
"""

from __future__ import annotations

import gc

import pytest
import torch
from torch import Tensor, nn

from models import traced
from models.layers import ModelOutput
from models.networks import ModelConfig, build_model, variants
from models.traced import _stays, trace_for_inference, traced_forward

T, F, S = 24, 5, 8


def _model(arch: str, bidirectional: bool, layers: int = 1) -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, n_inputs=3 * F, n_static=S, hidden=8, attn_dim=8,
                      layers=layers, bidirectional=bidirectional, horizon=4, n_targets=2)
    return build_model(cfg).eval()


@pytest.mark.parametrize(("arch", "bidirectional"), variants())
def test_each_risk_model_is_traced_and_scores_as_the_module(arch: str,
                                                            bidirectional: bool) -> None:
    model = _model(arch, bidirectional, layers=2 if arch != "jordan" else 1)
    kept = trace_for_inference(model, T, 3 * F, S)
    if arch == "seq2seq":  # a forecaster: its decoder runs in the module
        assert not kept and traced_forward(model) is None
        return
    assert kept
    graph = traced_forward(model)
    assert graph is not None
    for n, seed in ((1, 10), (5, 11), (300, 12)):
        x, static, step_mask = _stays(n, T, 3 * F, S, seed)
        step_mask[0] = False  # an empty stay too
        with torch.inference_mode():
            out = model(x, static, step_mask)
            got = graph(x, static, step_mask)
        for want, have in zip((out.risk_logit, out.los, out.attention), got, strict=True):
            assert torch.equal(want, have)


class _Branchy(nn.Module):
    """Takes a path by the data: a trace records only the path its example took."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(3 * F, 1)

    def forward(self, x: Tensor, static: Tensor, step_mask: Tensor) -> ModelOutput:
        risk = self.w(x).mean(dim=(1, 2))
        if bool(x[0, 0, 0] > 0):
            risk = risk * 2
        attention = step_mask.float() / step_mask.float().sum(1, keepdim=True).clamp(min=1)
        return ModelOutput(risk_logit=risk, los=risk.abs(), attention=attention)


class _Untraceable(_Branchy):
    def forward(self, x: Tensor, static: Tensor, step_mask: Tensor) -> ModelOutput:
        out = super().forward(x, static, step_mask)
        return ModelOutput(risk_logit=out.risk_logit + float(x.sum().item() > 0),
                           los=out.los, attention=out.attention)


@pytest.mark.parametrize("module", [_Branchy, _Untraceable])
def test_a_model_whose_graph_differs_is_scored_by_the_module(module: type[nn.Module]) -> None:
    model = module()
    assert not trace_for_inference(model, T, 3 * F, S)
    assert traced_forward(model) is None


def test_a_graph_goes_with_its_model() -> None:
    """A reload drops the old model: its graph must not keep it (or itself) alive."""
    gc.collect()
    before = len(traced._GRAPHS)
    model = _model("gru", False)
    assert trace_for_inference(model, T, 3 * F, S)
    assert len(traced._GRAPHS) == before + 1
    del model
    gc.collect()
    assert len(traced._GRAPHS) == before


def test_traces_leave_nothing_in_torchs_shared_unit() -> None:
    """Each reload traces the new version's model: the code of models no longer served must
    go with them, not pile up in torch's process-wide compilation unit (MiB per trace)."""
    shared = torch.jit._state._python_cu
    before = len(shared.get_functions())
    for seed in range(3):
        torch.manual_seed(seed)
        assert trace_for_inference(_model("lstm", True), T, 3 * F, S)
    gc.collect()
    assert torch.jit._state._python_cu is shared
    assert len(shared.get_functions()) == before


class _Broken(_Branchy):
    def forward(self, x: Tensor, static: Tensor, step_mask: Tensor) -> ModelOutput:
        if torch.jit.is_tracing():
            raise KeyError("something the tracer does not expect")
        return super().forward(x, static, step_mask)


def test_a_model_that_fails_to_trace_in_any_way_is_scored_by_the_module(
        caplog: pytest.LogCaptureFixture) -> None:
    model = _Broken()
    with caplog.at_level("WARNING", logger="models.traced"):
        assert not trace_for_inference(model, T, 3 * F, S)
    assert "_Broken scores without a traced graph: tracing failed (KeyError)" in caplog.text
    assert "something the tracer" not in caplog.text
    assert traced_forward(model) is None
    assert torch.jit._state._python_cu is not None


class _Scripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.w(x)
        return out * 2


def test_a_module_scripted_during_a_trace_outlives_the_graph(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.jit.script (another thread's) while a trace points torch at its own unit puts
    the scripted class's type there, cached process-wide: the unit must outlive the graph,
    or scripting that class again reads freed code (a segfault)."""
    trace = torch.jit.trace

    def trace_beside_a_script(*args: object, **kwargs: object) -> object:
        torch.jit.script(_Scripted())  # type: ignore[no-untyped-call]
        return trace(*args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(torch.jit, "trace", trace_beside_a_script)
    model = _model("lstm", True)
    assert trace_for_inference(model, T, 3 * F, S)
    monkeypatch.undo()
    del model
    gc.collect()
    again = torch.jit.script(_Scripted())  # type: ignore[no-untyped-call]
    assert again(torch.ones(1, 3)).shape == (1, 3)
