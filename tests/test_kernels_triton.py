"""The Triton NMF kernels, run by Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``),
against the ``reference`` backend: outputs and gradients (full unroll and ``grad_steps=k``),
float64 and float32, zero / tiny / huge inputs, masks and the factors through the NMF layer,
and the custom ops on the ``meta`` device and under ``torch.compile``."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lowrank
from lowrank import build_solver, kernels
from lowrank.kernels import reference

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="CPU tensors need the Triton interpreter (conftest)"
)
from lowrank.kernels import triton as tk  # noqa: E402


def _close(got, want, rtol, floor=1e-300):
    """Relative to the largest entry of ``want`` (entries near 0 are compared at that scale), or
    to ``floor`` where that is larger."""
    scale = want.abs().max().item() if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * max(scale, floor))


def _data(batch, m, n, scale, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, m, n, generator=g, dtype=torch.float64)
    x = torch.where(x > 0.2, x, 0.0)  # some exact zeros (dead rows/columns at small sizes)
    return (x * scale).to(dtype)


def _check(run_t, run_r, x, u0, rtol, n_out):
    """Outputs equal, and gradients of a random probe of every output w.r.t. X and U0."""
    x, u0 = x.clone().requires_grad_(), u0.clone().requires_grad_()
    got, want = run_t(x, u0), run_r(x, u0)
    g = torch.Generator().manual_seed(1)
    loss_t = loss_r = 0
    for a, b in zip(got[:n_out], want[:n_out]):
        _close(a, b, rtol)
        assert torch.isfinite(a).all()
        probe = torch.randn(b.shape, generator=g, dtype=b.dtype)
        loss_t, loss_r = loss_t + (a * probe).sum(), loss_r + (b * probe).sum()
    gt = torch.autograd.grad(loss_t, (x, u0), allow_unused=True)
    gr = torch.autograd.grad(loss_r, (x, u0), allow_unused=True)
    # dX is O(1) whatever X's scale (the layer is 1-homogeneous): an absolute floor of 1, so that
    # rounding of an all-but-zero gradient is no mismatch; dU0 is a difference of O(max|X|) terms
    # (its rounding noise is max|X|·eps in both backends), so its floor grows with max|X|. The
    # terms that cancel carry the factors: the output's adjoint w.r.t. U0 is max|X| times a sum of
    # O(|V|) terms (V of X / max|X|) that is exactly 0 where the fit is exact (a 1×1 matrix at rank
    # 3: out = X whatever U0), so each backend rounds it to max|X|·eps·|V| (≈ 2 at X = 1e15, |V|
    # ≈ 7), differently (the kernel and autograd sum the adjoint's terms in different orders)
    kappa = 1.0 + (want[2].detach().abs().max().item() if len(want) > 2 and want[2].numel() else 0.0)
    noise = kappa * x.detach().abs().max().item() * torch.finfo(x.dtype).eps / (rtol * 10)
    for a, b, floor in zip(gt, gr, (1.0, max(1.0, 10 * noise))):
        b = torch.zeros_like(a) if b is None else b
        assert torch.isfinite(a).all()
        _close(a, b, rtol * 10, floor=floor)


shapes = st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 40))
scales = st.sampled_from([1.0, 0.0, 1e-30, 1e15])


def _rank1_case(shape, iters, back, scale, seed):
    diff = max(1, iters - back)  # differentiated iterations (grad_steps)
    x = _data(*shape, scale, torch.float64, seed)
    u0 = _data(shape[0], shape[1], 1, 1.0, torch.float64, seed + 1)[..., 0] + 0.1
    _check(
        lambda x, u: tk.nmf_rank1(x, u, iters, diff, 1e-12),
        lambda x, u: reference.nmf_rank1(x, u, iters, diff, 1e-12),
        x, u0, 1e-9, 2,
    )  # fmt: skip


def _iterations_case(shape, rank, update, iters, back, scale, seed):
    diff = max(1, iters - back)
    x = _data(*shape, scale, torch.float64, seed)
    u0 = _data(shape[0], shape[1], rank, 1.0, torch.float64, seed + 1) + 0.1
    _check(
        lambda x, u: tk.nmf_iterations(x, u, iters, diff, 1e-12, update),
        lambda x, u: reference.nmf_iterations(x, u, iters, diff, 1e-12, update),
        x, u0, 1e-9, 3,
    )  # fmt: skip


rank1_cases = given(
    shape=shapes, iters=st.integers(1, 4), back=st.integers(0, 3), scale=scales, seed=st.integers(0, 99)
)
iterations_cases = given(
    shape=shapes,
    rank=st.sampled_from([2, 3, 5, 16]),
    update=st.sampled_from(["mu", "hals"]),
    iters=st.integers(1, 3),
    back=st.integers(0, 3),
    scale=scales,
    seed=st.integers(0, 99),
)


@settings(max_examples=12)
@rank1_cases
def test_rank1_matches_reference_float64(**case):
    _rank1_case(**case)


@settings(max_examples=8)
@iterations_cases
@example(shape=(2, 5, 9), rank=3, update="hals", iters=3, back=0, scale=1.0, seed=0).via("full unroll")
@example(shape=(2, 5, 9), rank=3, update="mu", iters=3, back=0, scale=1.0, seed=0).via("full unroll")
@example(shape=(1, 1, 1), rank=3, update="hals", iters=2, back=0, scale=1e15, seed=0).via("1×1 at 1e15")
def test_iterations_match_reference_float64(**case):
    _iterations_case(**case)


@pytest.mark.slow
@settings(max_examples=100)
@rank1_cases
def test_rank1_matches_reference_float64_many(**case):
    _rank1_case(**case)


@pytest.mark.slow
@settings(max_examples=100)
@iterations_cases
def test_iterations_match_reference_float64_many(**case):
    _iterations_case(**case)


@pytest.mark.parametrize(
    ("rank", "update", "scale"),
    [(r, u, s) for r, u in [(1, "mu"), (4, "hals")] for s in (1.0, 0.0, 1e-30, 1e15)]
    + [(4, "mu", 1.0), (8, "hals", 1.0)],
)
def test_float32_matches_reference(rank, update, scale):
    x = _data(2, 8, 24, scale, torch.float32, 3)
    u0 = _data(2, 8, rank, 1.0, torch.float32, 4) + 0.1
    eps = torch.finfo(torch.float32).eps
    if rank == 1:
        run_t = lambda x, u: tk.nmf_rank1(x, u[..., 0], 3, 3, eps)  # noqa: E731
        run_r = lambda x, u: reference.nmf_rank1(x, u[..., 0], 3, 3, eps)  # noqa: E731
    else:
        run_t = lambda x, u: tk.nmf_iterations(x, u, 3, 2, eps, update)  # noqa: E731
        run_r = lambda x, u: reference.nmf_iterations(x, u, 3, 2, eps, update)  # noqa: E731
    _check(run_t, run_r, x, u0, 1e-4, 2)


@pytest.mark.parametrize(
    "spec",
    [
        "nmf(rank=1, iters=3)",
        "nmf(rank=1, iters=3, grad_steps=1)",
        "nmf(rank=4, iters=3, update=hals)",
        "nmf(rank=4, iters=3, update=mu, grad_steps=2)",
        "nmf(rank=3, iters=2, update=hals, return_factors=true)",
    ],
)
def test_layer_with_masks_under_autocast(spec):
    """The layer on the triton backend equals it on reference: masks, factors, bf16 autocast
    (the factorization runs in float32 either way)."""
    layer = build_solver(spec)
    x = _data(3, 6, 20, 1.0, torch.float32, 5).requires_grad_()
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[0, 13:] = False

    def run(backend):
        with lowrank.use_kernels(backend), torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x.to(torch.bfloat16), mask=mask)
        parts = [out[0], *out[1]] if isinstance(out, tuple) else [out]  # return_factors: out, (U, V)
        return torch.cat([t.float().flatten() for t in parts])

    got, want = run("triton"), run("reference")
    _close(got, want, 2e-2)  # bf16 output rounding
    gt = torch.autograd.grad(got.square().sum(), x)[0]
    gr = torch.autograd.grad(want.square().sum(), x)[0]
    _close(gt, gr, 5e-2)
    assert (gt[0, :, 13:] == 0).all()


def test_layer_dispatches_to_the_kernel(monkeypatch):
    calls = []
    real = tk.nmf_iterations
    monkeypatch.setattr(tk, "nmf_iterations", lambda *a, **k: calls.append(1) or real(*a, **k))
    with lowrank.use_kernels("triton"):
        build_solver("nmf(rank=2, iters=2, update=hals)")(torch.rand(2, 4, 8))
        assert kernels.nmf_backend(torch.rand(2, 200, 8), 2, "hals") == "reference"  # M > 128
        assert kernels.nmf_backend(torch.rand(2, 4, 8), 17, "hals") == "reference"  # rank > 16
    assert calls == [1]


@pytest.mark.parametrize("rank", [1, 8])
def test_custom_ops_on_meta_and_opcheck(rank):
    x = torch.empty(4, 8, 64, device="meta", requires_grad=True)
    with lowrank.use_kernels("triton"):
        out = build_solver(f"nmf(rank={rank}, update=hals)")(x)
    out.sum().backward()
    assert out.shape == x.shape and x.grad.shape == x.shape
    xs = _data(2, 5, 9, 1.0, torch.float64, 0).requires_grad_()
    if rank == 1:
        args = (xs, torch.rand(2, 5, dtype=torch.float64), 2, 2, 1e-12)
        op = torch.ops.lowrank.nmf_rank1.default
    else:
        args = (xs, torch.rand(2, 5, 3, dtype=torch.float64), 2, 2, 1e-12, "hals", True)
        op = torch.ops.lowrank.nmf_iterations.default
    torch.library.opcheck(
        op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration")
    )


def test_compiles_without_graph_breaks():
    layer = build_solver("nmf(rank=4, iters=2, update=hals)")
    x = _data(2, 6, 16, 1.0, torch.float32, 0)
    with lowrank.use_kernels("triton"):
        want = layer(x)
        got = torch.compile(layer, backend="eager", fullgraph=True)(x)
    _close(got, want, 1e-6)
