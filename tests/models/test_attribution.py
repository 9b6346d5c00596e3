"""Integrated gradients: completeness, masking, the baseline and the per-variable sums."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from models.attribution import integrated_gradients, unobserved_baseline
from models.features import DELTA_SCALE
from models.networks import ModelConfig, build_model, variants
from models.predict import IG_REFINE_NODES, IG_SPLIT

torch.set_num_threads(1)
B, T, F, S = 3, 10, 4, 2


def setup(arch: str, bi: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    extra = {"horizon": 2, "n_targets": 1} if arch == "seq2seq" else {}
    model = build_model(ModelConfig(arch, 3 * F, 2 * S, hidden=12, attn_dim=6,
                                    bidirectional=bi, **extra)).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 3 * F, generator=g)
    static = torch.randn(B, 2 * S, generator=g)
    step_mask = torch.ones(B, T, dtype=torch.bool)
    step_mask[1, :3] = False
    step_mask[2, 6:] = False
    return model, x, static, step_mask


@pytest.mark.parametrize(("arch", "bi"), [pytest.param(a, b, id=f"{a}{'-bi' if b else ''}")
                                          for a, b in variants()])
def test_attributions_sum_to_the_logit_difference(arch: str, bi: bool) -> None:
    model, x, static, step_mask = setup(arch, bi)
    base = unobserved_baseline(x)
    per_step, per_var = integrated_gradients(model, x, static, step_mask, steps=32)
    with torch.no_grad():
        gap = (model(x, static, step_mask).risk_logit
               - model(base, static, step_mask).risk_logit)
    assert per_step.shape == (B, T, F) and per_var.shape == (B, F)
    torch.testing.assert_close(per_var, per_step.sum(1))
    torch.testing.assert_close(per_var.sum(1), gap, rtol=1e-3, atol=1e-4)


def test_steps_outside_the_stay_get_no_attribution() -> None:
    model, x, static, step_mask = setup("gru")
    per_step, _ = integrated_gradients(model, x, static, step_mask, steps=8)
    assert (per_step[~step_mask] == 0).all()
    assert (per_step[step_mask].abs() > 0).any()


def test_the_baseline_itself_gets_zero_attribution() -> None:
    model, x, static, step_mask = setup("lstm")
    base = unobserved_baseline(x)
    _, per_var = integrated_gradients(model, base, static, step_mask, steps=8)
    assert (per_var == 0).all()


def test_baseline_is_nothing_observed_on_the_grid() -> None:
    x = torch.randn(2, 5, 3 * F)
    base = unobserved_baseline(x, step_hours=2.0, offset=torch.tensor([0, 10]))
    assert (base[:, :, :2 * F] == 0).all()
    assert math.isclose(float(base[0, 0, 2 * F]), math.log1p(2.0) / DELTA_SCALE, rel_tol=1e-6)
    assert math.isclose(float(base[1, 4, 3 * F - 1]), math.log1p(30.0) / DELTA_SCALE,
                        rel_tol=1e-6)


def test_chunking_does_not_change_the_result() -> None:
    model, x, static, step_mask = setup("jordan")
    a, _ = integrated_gradients(model, x, static, step_mask, steps=8)
    b, _ = integrated_gradients(model, x, static, step_mask, steps=8, max_rows=8)  # 1 per pass
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_works_inside_inference_mode_and_refuses_training_mode() -> None:
    model, x, static, step_mask = setup("elman")
    with torch.inference_mode():
        _, per_var = integrated_gradients(model, x, static, step_mask, steps=4)
    assert torch.isfinite(per_var).all()
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        integrated_gradients(model, x, static, step_mask)


class _Switch(torch.nn.Module):
    """A logit that flips sharply part-way along the path, as a trained RNN's state can."""

    def forward(self, x, static, step_mask):
        z = x[:, :, :F].sum((1, 2))
        return SimpleNamespace(risk_logit=3 * torch.tanh(20 * (z - 7.4)))


def test_sharp_transitions_on_the_path_are_refined_until_complete() -> None:
    x = torch.rand(2, T, 3 * F)
    x[:, :, :F] *= 20 / x[:, :, :F].sum((1, 2))[:, None, None]  # the switch at alpha = 0.37
    model = _Switch().eval()
    base = torch.zeros_like(x)
    gap = model(x, None, None).risk_logit - model(base, None, None).risk_logit
    static, step_mask = torch.zeros(2, 0), torch.ones(2, T, dtype=torch.bool)
    _, plain = integrated_gradients(model, x, static, step_mask, baseline=base, rtol=math.inf)
    _, adaptive = integrated_gradients(model, x, static, step_mask, baseline=base)
    assert ((plain.sum(1) - gap).abs() > 0.1).all()  # one 32-node rule misses the switch
    torch.testing.assert_close(adaptive.sum(1), gap, rtol=0.011, atol=1e-3)


@pytest.mark.parametrize(("arch", "bi"), [pytest.param(a, b, id=f"{a}{'-bi' if b else ''}")
                                          for a, b in variants()])
def test_the_services_few_nodes_with_halving_refinement_keep_completeness(arch: str,
                                                                           bi: bool) -> None:
    model, x, static, step_mask = setup(arch, bi, seed=3)
    x = 4 * x  # far from the baseline: a curved path that needs refining
    base = unobserved_baseline(x)
    _, per_var = integrated_gradients(model, x, static, step_mask, steps=2, split=IG_SPLIT,
                                      refine_nodes=IG_REFINE_NODES, rtol=1e-3)
    with torch.no_grad():
        gap = (model(x, static, step_mask).risk_logit
               - model(base, static, step_mask).risk_logit)
    assert (per_var.sum(1) - gap).abs().max() <= 1e-3 + 1e-3 * gap.abs().max() + 1e-4


def test_the_callers_logit_at_x_gives_the_same_attributions() -> None:
    """score_tensors passes the logit of the forward pass it answers with: no second pass."""
    model, x, static, step_mask = setup("lstm", bi=True)
    with torch.inference_mode():  # as score_tensors computes it
        logit = model(x, static, step_mask).risk_logit
    _, own = integrated_gradients(model, x, static, step_mask, steps=4, split=IG_SPLIT)
    _, given = integrated_gradients(model, x, static, step_mask, steps=4, split=IG_SPLIT,
                                    logit_x=logit)
    torch.testing.assert_close(given, own, rtol=1e-4, atol=1e-5)
