"""The Triton kernels of the Factorizer's MLP branch (``lowrank::fused_mlp``) and LayerNorm +
projection (``lowrank::norm_project``), run by Triton's interpreter on CPU tensors against the
``reference`` formulas: outputs and gradients (input, weights, biases), float64 and float32,
zero / tiny / huge inputs, widths that are not powers of two; on meta, under opcheck and
``torch.compile``; and the Factorizer block through them against ``reference`` and ``cpu``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import lowrank
from lowrank import build_block, kernels
from lowrank.kernels import _switch, reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from count_ops import count

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or not _switch.triton_available(),
    reason="Triton kernels on CPU tensors need triton and its interpreter (conftest)",
)


def _inputs(batch, c, h, spatial, scale, dtype, seed, bias=True):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    x = (rand(batch, c, *spatial) * scale + 2 * scale).requires_grad_()
    params = [rand(h, c) / c**0.5, rand(h) if bias else None, rand(c, h) / h**0.5, rand(c)]
    return x, [p.requires_grad_() if p is not None else None for p in params], rand(batch, c, *spatial)


def _compare(run, want_run, inputs, probe, rtol):
    got, want = run(*inputs), want_run(*inputs)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    g_got = torch.autograd.grad((got * probe).sum(), leaves)
    g_want = torch.autograd.grad((want * probe).sum(), leaves)
    for a, b in zip([got, *g_got], [want, *g_want], strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * max(1.0, b.abs().max().item()))


CASES = [
    (1, 32, 64, (5, 6, 7)),
    (2, 3, 6, (40,)),
    (1, 64, 128, (9, 9, 3)),
    (2, 24, 48, (17,)),
    (1, 1, 1, (3, 2)),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("scale", [1.0, 0.0, 1e-30, 1e15])
def test_fused_mlp_matches_reference_float64(case, scale):
    x, (w1, b1, w2, b2), _ = _inputs(*case, scale, torch.float64, 0)
    probe = torch.randn(x.shape, dtype=torch.float64)
    with lowrank.use_kernels("triton"):
        assert kernels.mlp_backend(x, w1) == "triton"
        _compare(
            lambda *a: kernels.fused_mlp(*a, 1e-5),
            lambda *a: reference.fused_mlp(*a, 1e-5, "none"),
            (x, w1, b1, w2, b2), probe, 1e-9,
        )  # fmt: skip


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_norm_project_matches_reference_float64(case, relu, bias):
    x, (w, b, _, _), _ = _inputs(*case, 1.0, torch.float64, 1, bias=bias)
    probe = torch.randn(x.shape[0], w.shape[0], *x.shape[2:], dtype=torch.float64)
    with lowrank.use_kernels("triton"):
        assert kernels.norm_project_backend(x, w) == "triton"
        _compare(
            lambda x, w, b: kernels.norm_project(x, w, b, 1e-5, relu),
            lambda x, w, b: reference.norm_project(x, w, b, 1e-5, relu),
            (x, w, b), probe, 1e-9,
        )  # fmt: skip


@pytest.mark.parametrize("scale", [1.0, 1e15])
def test_float32_matches_reference(scale):
    x, (w1, b1, w2, b2), _ = _inputs(2, 32, 64, (6, 5, 4), scale, torch.float32, 2)
    probe = torch.randn(x.shape)
    with lowrank.use_kernels("triton"):
        _compare(
            lambda *a: kernels.fused_mlp(*a, 1e-5), lambda *a: reference.fused_mlp(*a, 1e-5, "none"),
            (x, w1, b1, w2, b2), probe, 1e-4,
        )  # fmt: skip
        _compare(
            lambda x, w, b: kernels.norm_project(x, w, b, 1e-5, True),
            lambda x, w, b: reference.norm_project(x, w, b, 1e-5, True),
            (x, w1, b1), torch.randn(2, 64, 6, 5, 4), 1e-4,
        )  # fmt: skip


def test_half_input_and_autocast_compute_in_float32():
    """bf16 / fp16 inputs and autocast run the kernels in float32: under autocast the float32
    input gives the float32 reference's values and gradients (the plain ops would round to
    bf16); the output dtypes are the plain ops' (the residual's; a projection's autocast dtype)."""
    x, (w1, b1, w2, b2), _ = _inputs(2, 16, 32, (5, 4, 3), 1.0, torch.float32, 4)
    probe = torch.randn(x.shape)
    with lowrank.use_kernels("triton"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert kernels.mlp_backend(x, w1) == "triton"
            y = kernels.fused_mlp(x, w1, b1, w2, b2, 1e-5)
            p = kernels.norm_project(x, w1, b1, 1e-5, True)
        assert y.dtype == torch.float32 and p.dtype == torch.bfloat16
        want = reference.fused_mlp(x, w1, b1, w2, b2, 1e-5, "none")
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
        g_got = torch.autograd.grad((y * probe).sum(), [x, w1, w2])
        g_want = torch.autograd.grad((want * probe).sum(), [x, w1, w2])
        for a, b in zip(g_got, g_want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
        torch.testing.assert_close(
            p.float(), reference.norm_project(x, w1, b1, 1e-5, True).bfloat16().float(), rtol=1e-2, atol=1e-2
        )
        for half in (torch.bfloat16, torch.float16):
            xh = x.detach().to(half).requires_grad_()
            yh = kernels.fused_mlp(xh, w1, b1, w2, b2, 1e-5)
            assert yh.dtype == half
            ref = reference.fused_mlp(xh.float(), w1, b1, w2, b2, 1e-5, "none")
            torch.testing.assert_close(yh.float(), ref.to(half).float(), rtol=2e-2, atol=2e-2)
            (gx,) = torch.autograd.grad(yh.float().sum(), [xh])
            assert gx.dtype == half and torch.isfinite(gx).all()


def test_factorizer_block_under_autocast_runs_the_kernels():
    """AMP (the default of GPU training): every Triton kernel of the block runs (the window fold of
    bf16 matrices included: it stored garbage before its values were rounded explicitly), and
    the result is the float32 block's up to bf16 rounding; bf16 weights and input likewise."""
    block = build_block("factorizer(mixer=nmf(rank=1, iters=3), matricize=swin(patch=4, head_dim=8))", 16)
    x = torch.randn(1, 16, 8, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    want = block(x)
    with lowrank.use_kernels("triton"), torch.autocast("cpu", dtype=torch.bfloat16):
        c = count(lambda: block(x), meta_as=None)
        got = block(x)
    assert {"lowrank.fused_mlp", "lowrank.norm_project"} <= set(c.by_op), c.by_op
    torch.testing.assert_close(got.float(), want, rtol=5e-2, atol=5e-2)
    (gx,) = torch.autograd.grad(got.float().sum(), [x])
    assert torch.isfinite(gx).all()
    with lowrank.use_kernels("triton"):
        c = count(lambda: block.bfloat16()(x.bfloat16()), meta_as=None)
        half = block(x.detach().bfloat16())
    assert "lowrank.window_sum2" in c.by_op, c.by_op
    torch.testing.assert_close(half.float(), want, rtol=1e-1, atol=1e-1)


def test_outside_the_kernels_reach_the_reference():
    x = torch.randn(1, 65, 4, 4)
    with lowrank.use_kernels("triton"):
        assert kernels.mlp_backend(x, torch.randn(130, 65)) == "reference"  # too wide
        assert kernels.mlp_backend(x[:, :8], torch.randn(16, 8), "tanh") == "reference"  # tanh GELU
        assert kernels.mlp_backend(x[:, :8].half(), torch.randn(16, 8)) == "triton"  # float32 compute
        assert kernels.mlp_backend(x[:, :8].long(), torch.randn(16, 8)) == "reference"
        assert kernels.norm_project_backend(x, torch.randn(8, 65)) == "reference"
        assert kernels.norm_project_backend(x[:, :8], torch.randn(8, 8)) == "triton"
    assert (
        kernels.norm_project_backend(x[:, :8], torch.randn(8, 8)) == "reference"
    )  # auto on CPU: the block's path
    assert kernels.mlp_backend(x[:, :8], torch.randn(16, 8)) == "cpu"


def test_custom_ops_on_meta_opcheck_and_compile():
    x = torch.empty(1, 32, 64, 64, 64, device="meta", requires_grad=True)
    w1, b1 = torch.empty(64, 32, device="meta", requires_grad=True), torch.empty(64, device="meta")
    w2, b2 = torch.empty(32, 64, device="meta", requires_grad=True), torch.empty(32, device="meta")
    grad = torch.empty(x.shape, device="meta")
    hidden = torch.empty(1, 64, 64, 64, 64, device="meta")
    with lowrank.use_kernels("triton"):
        c = count(lambda: torch.autograd.grad(kernels.fused_mlp(x, w1, b1, w2, b2, 1e-5), [x, w1, w2], grad))
        assert c.by_op["lowrank.fused_mlp"] == c.by_op["lowrank.fused_mlp_backward"] == 1, c.by_op
        assert c.ops == 3, c.by_op  # and the sum of the weight gradients' partials
        c = count(lambda: torch.autograd.grad(kernels.norm_project(x, w1, b1, 1e-5, True), [x, w1], hidden))
        assert c.by_op["lowrank.norm_project"] == c.by_op["lowrank.norm_project_backward"] == 1, c.by_op
        assert c.ops == 3, c.by_op
    xs, (v1, c1, v2, c2), _ = _inputs(2, 5, 7, (9,), 1.0, torch.float64, 3)
    xs = xs.detach().view(2, 5, 9).requires_grad_()
    torch.library.opcheck(torch.ops.lowrank.fused_mlp.default, (xs, v1, c1, v2, c2, 1e-5))
    torch.library.opcheck(torch.ops.lowrank.norm_project.default, (xs, v1, c1, 1e-5, True))
    block = build_block("factorizer(mixer=nmf(rank=1, iters=2), matricize=swin(patch=4, head_dim=4))", 8)
    xb = torch.randn(1, 8, 8, 8, 8)
    with lowrank.use_kernels("triton"):
        want = block(xb)
        got = torch.compile(block, backend="eager", fullgraph=True)(xb)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_factorizer_block_through_the_kernels_matches_reference_and_cpu():
    block = build_block(
        "factorizer(mixer=nmf(rank=1, iters=3), matricize=swin(patch=4, head_dim=8))", 16
    ).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(2, 16, 8, 12, 9, generator=g, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(x.shape, generator=g, dtype=torch.float64)
    results = {}
    for backend in ("triton", "reference", "cpu"):
        with lowrank.use_kernels(backend):
            c = count(lambda: block(x), meta_as=None)
            y = block(x)
            results[backend] = (y, *torch.autograd.grad((y * probe).sum(), [x, *block.parameters()]))
        kernels_run = {k for k in c.by_op if k.startswith("lowrank.")}
        assert (kernels_run >= {"lowrank.fused_mlp", "lowrank.norm_project"}) == (backend == "triton"), (
            kernels_run
        )
    for backend in ("triton", "cpu"):
        for a, b in zip(results[backend], results["reference"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * max(1.0, b.abs().max().item()))
