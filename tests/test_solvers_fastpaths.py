"""The solvers' fast machinery against plain autograd: the HALS sweep node, CPU cache blocking
and the recomputed tail of ``grad_steps=k``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank import build_solver
from lowrank.solvers._sweep import gauss_seidel_sweep


def _loop_sweep(c, b, inv, slope):
    """The sweep written as a plain autograd loop (the reference)."""
    cols = []
    for r in range(c.shape[-2]):
        num = c[..., r, :]
        for l in range(r):  # noqa: E741
            num = num - b[..., l, r, None] * cols[l]
        cols.append(torch.nn.functional.leaky_relu(num * inv[..., r, :], slope))
    return torch.stack(cols, -2)


def _inputs(batch, rank, p, seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(*batch, rank, p, generator=g, dtype=torch.float64)
    b = torch.randn(*batch, rank, rank, generator=g, dtype=torch.float64)
    inv = torch.rand(*batch, rank, 1, generator=g, dtype=torch.float64) + 0.1
    return c, b, inv


@pytest.mark.parametrize("slope", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("rank", [1, 2, 5])
def test_sweep_gradcheck(slope, rank):
    args = [t.requires_grad_() for t in _inputs((2, 3), rank, 6, seed=rank)]
    assert torch.autograd.gradcheck(lambda c, b, i: gauss_seidel_sweep(c, b, i, slope), args)


@settings(max_examples=25, deadline=None)
@given(
    rank=st.integers(1, 6),
    p=st.integers(1, 9),
    batch=st.lists(st.integers(1, 3), max_size=2),
    slope=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
    dead=st.booleans(),
)
def test_sweep_equals_the_autograd_loop(rank, p, batch, slope, dead):
    c, b, inv = _inputs(tuple(batch), rank, p, seed=rank * 31 + p)
    if dead:  # a collapsed column has a zero reciprocal
        inv[..., 0, :] = 0
    c, b, inv = (t.requires_grad_() for t in (c, b, inv))
    weight = torch.randn(c.shape, dtype=c.dtype, generator=torch.Generator().manual_seed(p))
    out, ref = gauss_seidel_sweep(c, b, inv, slope), _loop_sweep(c, b, inv, slope)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad((out * weight).sum(), (c, b, inv))
    refs = torch.autograd.grad((ref * weight).sum(), (c, b, inv), allow_unused=True, materialize_grads=True)
    for got, want in zip(grads, refs):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "spec",
    [
        "nmf(rank=3, update=hals)",
        "nmf(rank=3, update=hals, grad_steps=1)",
        "nmf(rank=2, grad_steps=2)",
        "semi_nmf(rank=2)",
        "weak_nmf(rank=2)",
        "vq(rank=3, init=seeded)",
    ],
)
@pytest.mark.parametrize("masked", [False, True])
def test_cache_blocking_changes_nothing(spec, masked):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 2, 5, 9, generator=g, dtype=torch.float64)
    x = (x if spec.startswith("semi") else x.relu()).requires_grad_()
    mask = torch.rand(7, 2, 9, generator=g) > 0.3 if masked else None
    whole = build_solver(spec, iters=4, return_factors=True)
    blocked = build_solver(spec, iters=4, return_factors=True)
    blocked.chunk_bytes = 2 * 5 * 9 * 8 * 3  # 3 of the 7 rows per chunk: chunks of 3, 3, 1
    assert blocked._chunk_rows(x, torch.float64, 3) == 3
    weight = torch.randn(x.shape, generator=g, dtype=x.dtype)
    results = []
    for layer in (whole, blocked):
        out, (u, v) = layer(x, mask)
        (grad,) = torch.autograd.grad((out * weight).sum() + u.sum() + v.sum(), x)
        results.append((out, u, v, grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


def test_grad_steps_keeps_no_activation_of_the_size_of_x():
    """With the recomputed tail, autograd holds no tensor of X's size (X itself excepted)."""
    x = torch.rand(4, 64, 256).requires_grad_()
    held = {}

    def pack(t):
        if t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    for spec, limit in (("nmf(rank=8, iters=6, grad_steps=1)", x[0].nbytes), ("nmf(rank=8, iters=6)", None)):
        held.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            build_solver(spec)(x)
        if limit is None:  # the unrolled loop does keep X-sized tensors: the probe can see them
            assert sum(held.values()) > x.nbytes
        else:
            assert sum(held.values()) < limit, held
