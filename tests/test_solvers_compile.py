"""``torch.compile``: zero graph breaks for every layer and gradient mode (``torch._dynamo.explain``)."""

from __future__ import annotations

import pytest
import torch

from lowrank import build_solver

dynamo = pytest.importorskip("torch._dynamo")

QUICK = ["nmf(rank=1)", "nmf(rank=3, update=hals, grad_steps=1)", "semi_nmf(rank=2, init=random)"]
FULL = [
    f"{layer}(rank={rank}, grad_steps={gs}, init={init})"
    for layer in ("nmf", "semi_nmf", "weak_nmf")
    for rank in (1, 3)
    for gs in ("none", 1, 2)
    for init in ("uniform", "random", "online", "nndsvd")
] + [f"nmf(rank=3, update=hals, grad_steps={gs}, init=svd)" for gs in ("none", 1)]


def _explain(spec):
    layer = build_solver(spec)
    x = torch.rand(2, 6, 20)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, -3:] = False
    layer(x, mask)  # materialize the lazy tables outside the trace
    dynamo.reset()
    explanation = dynamo.explain(layer)(x.requires_grad_(), mask)
    dynamo.reset()
    return explanation


@pytest.mark.parametrize("spec", QUICK)
def test_no_graph_breaks(spec):
    explanation = _explain(spec)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("spec", FULL)
def test_no_graph_breaks_every_layer_mode_and_init(spec):
    explanation = _explain(spec)
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize("spec", ["nmf(rank=1)", "nmf(rank=1, grad_steps=2)"])
def test_compiled_rank1_custom_backward_matches_eager(spec):
    layer = build_solver(spec)
    x = torch.rand(2, 6, 20, requires_grad=True)
    weight = torch.randn(2, 6, 20)
    (g_eager,) = torch.autograd.grad((layer(x) * weight).sum(), x)
    dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    (g_compiled,) = torch.autograd.grad((y * weight).sum(), x)
    dynamo.reset()
    torch.testing.assert_close(y, layer(x))
    torch.testing.assert_close(g_compiled, g_eager)
