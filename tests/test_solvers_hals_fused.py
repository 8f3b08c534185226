"""The fused HALS node (``nmf(update=hals)``, rank >= 2, CPU) against the general autograd loop.

Every comparison runs the same layer twice, once with the private switch ``_fused_hals = False``
(the general loop, autograd through every update: the reference), and checks that the fused
node really ran (a spy on :func:`hals_fused`), so a test cannot pass by falling back.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank import build_solver
from lowrank.kernels import nmf as kernel_nmf
from lowrank.kernels.cpu import hals as _hals_fused
from lowrank.kernels.cpu.hals import hals_fused


@contextlib.contextmanager
def _spy(monkeypatch):
    """Count the calls of the fused node made by the NMF layer."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        return hals_fused(*args, **kwargs)

    monkeypatch.setattr(kernel_nmf, "hals_fused", wrapped)
    yield calls


def _data(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).relu()


def _run(spec, x, mask=None, fused=True, weight_seed=1):
    """Output, factors and gradients (w.r.t. x and the layer's parameters) of a weighted loss."""
    layer = build_solver(spec, return_factors=True)
    layer._fused_hals = fused
    x = x.clone().requires_grad_()
    out, (u, v) = layer(x, mask)
    g = torch.Generator().manual_seed(weight_seed)
    w = torch.randn(out.shape, generator=g, dtype=out.dtype)
    loss = (out * w).sum() + (u * u.detach().flip(-1)).sum() + v.square().sum()
    params = list(layer.parameters())
    grads = torch.autograd.grad(loss, [x, *params])
    return [out.detach(), u.detach(), v.detach(), *grads]


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(torch.finfo(b.dtype).tiny)).item()


def _compare(spec, x, mask, monkeypatch, tol, grads=True):
    with _spy(monkeypatch) as calls:
        got = _run(spec, x, mask, fused=True)
        assert calls, "the fused node did not run"
        n = len(calls)
        want = _run(spec, x, mask, fused=False)
        assert len(calls) == n, "the reference used the fused node"
    for name, a, b in zip(["out", "U", "V", *(["dX", "dparams"] if grads else [])], got, want):
        assert torch.isfinite(a).all(), name
        assert _rel(a, b) < tol, (name, _rel(a, b))


@settings(max_examples=30, deadline=None)
@given(
    batch=st.sampled_from([(), (3,), (2, 3)]),
    m=st.integers(2, 7),
    n=st.integers(2, 9),
    rank=st.integers(2, 7),
    iters=st.integers(1, 4),
    grad_steps=st.integers(0, 3),
    masked=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_fused_equals_the_autograd_loop(batch, m, n, rank, iters, grad_steps, masked, seed):
    rank = min(rank, m, n)
    gs = "none" if grad_steps == 0 else grad_steps  # k >= iters is the same as none
    spec = f"nmf(rank={rank}, update=hals, iters={iters}, grad_steps={gs})"
    # dense data and more valid columns than the rank: with structural zeros (a ReLU'd input,
    # fewer valid columns than the rank) or an exact fit (rank = min(M, N)) some numerators are
    # exactly 0 in exact arithmetic; rounding puts them on either side of the ReLU's kink in
    # either path (both one-sided derivatives are valid), so there only values are compared
    x = torch.rand(*batch, m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mask = None
    if masked:
        mask = torch.rand(*batch, n, generator=torch.Generator().manual_seed(seed)) > 0.3
        mask[..., : rank + 1] = True
    with pytest.MonkeyPatch.context() as mp:
        _compare(spec, x, mask, mp, tol=1e-10, grads=rank < min(m, n))


@pytest.mark.parametrize("spec", ["nmf(rank=4, update=hals)", "nmf(rank=8, update=hals, grad_steps=2)"])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_equals_the_autograd_loop_fp32(spec, masked, monkeypatch):
    x = _data((6, 8, 40), seed=3, dtype=torch.float32)
    mask = torch.rand(6, 40, generator=torch.Generator().manual_seed(0)) > 0.3 if masked else None
    _compare(spec, x, mask, monkeypatch, tol=1e-5)


def test_learned_init_receives_the_same_gradient(monkeypatch):
    x = _data((4, 5, 7), seed=0)
    spec = "nmf(rank=3, update=hals, iters=3, init=learned(dim=5))"
    with _spy(monkeypatch) as calls:
        got = _run(spec, x)
        assert calls
    want = _run(spec, x, fused=False)
    assert len(got) == 5 and got[4].abs().sum() > 0  # dU0 exists and is not trivially zero
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def _node_inputs(seed, start):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 4, 5, generator=g, dtype=torch.float64)
    u0 = torch.rand(2, 4, 3, generator=g, dtype=torch.float64)
    v0 = torch.rand(2, 5, 3, generator=g, dtype=torch.float64) if start else None
    inv = 1.0 / x.amax((-2, -1), keepdim=True)
    return x, u0, v0, inv


@pytest.mark.parametrize("start", [False, True])
@pytest.mark.parametrize("iters", [1, 3])
def test_node_gradcheck(start, iters):
    """``gradcheck`` of the node in float64, w.r.t. X, U0 and (for a start state) V0."""
    x, u0, v0, inv = _node_inputs(iters, start)
    args = [t.requires_grad_() for t in (x, u0) + ((v0,) if start else ())]

    def f(x, u0, v0=None):
        return hals_fused(x, u0, v0, inv, iters, 1e-12)

    assert torch.autograd.gradcheck(f, args)


def test_layer_gradcheck():
    layer = build_solver("nmf(rank=2, update=hals, iters=2, return_factors=true)")
    x = _data((2, 3, 4), seed=5).add_(0.05).requires_grad_()

    def f(x):
        out, (u, v) = layer(x)
        return out, u, v

    assert torch.autograd.gradcheck(f, [x])


def test_sub_chunks_change_nothing(monkeypatch):
    """Sub-chunks of 2, 2, 1 matrices equal one sub-chunk of 5 (values and gradients)."""
    x = _data((5, 4, 6), seed=2)
    whole = _run("nmf(rank=3, update=hals, iters=3)", x)
    monkeypatch.setattr(_hals_fused, "SUB_BYTES", 2 * 4 * 6 * 8)
    assert _hals_fused.sub_rows(4, 6, 8) == 2
    split = _run("nmf(rank=3, update=hals, iters=3)", x)
    for a, b in zip(split, whole):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_no_grad_path_and_retained_graph(monkeypatch):
    """The graph-free forward equals the saving one; a retained graph backpropagates twice."""
    monkeypatch.setattr(_hals_fused, "SUB_BYTES", 3 * 5 * 7 * 8)  # 3 + 3 + 1 matrices
    layer = build_solver("nmf(rank=3, update=hals, iters=3)")
    x = _data((7, 5, 7), seed=4).requires_grad_()
    with torch.no_grad():
        plain = layer(x)
    out = layer(x)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    first = torch.autograd.grad(out.square().sum(), x, retain_graph=True)[0]
    second = torch.autograd.grad(out.square().sum(), x)[0]
    torch.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e15])
def test_extreme_scales_are_finite_and_equivariant(scale):
    x = _data((3, 6, 10), seed=1, dtype=torch.float32)
    x[0, 2] = 0.0  # an all-zero row
    layer = build_solver("nmf(rank=4, update=hals)")
    xs = (x * scale).requires_grad_()
    out = layer(xs)
    (grad,) = torch.autograd.grad(out.square().sum(), xs)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    if scale > 0:
        ref = layer(x)
        torch.testing.assert_close(out / scale, ref, rtol=1e-5, atol=1e-6)


def test_collapsing_components_are_finite_and_match(monkeypatch):
    """Duplicate and zero rows make components collapse (zero reciprocal): finite, as the loop."""
    x = _data((3, 6, 9), seed=7)
    x[:, 1] = x[:, 0]
    x[:, 2:4] = 0.0
    x[1] = 0.0  # an all-zero matrix
    _compare("nmf(rank=5, update=hals, iters=4)", x, None, monkeypatch, tol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_is_finite_and_runs_in_fp32(dtype, monkeypatch):
    """Under autocast (forward and backward) the node computes in float32, as without it."""
    x = _data((4, 8, 16), seed=0, dtype=torch.float32).requires_grad_()
    x.data[0] = 0.0
    layer = build_solver("nmf(rank=6, update=hals)")
    with _spy(monkeypatch) as calls, torch.autocast("cpu", dtype=dtype):
        out = layer(x)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
    assert calls and out.dtype == torch.float32
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    ref = layer(x)
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)
