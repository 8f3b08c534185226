"""The channel LayerNorm and the window fold through the kernel layer: the CPU-only cache-sized
chunk loops run on the ``cpu`` backend only (one pass elsewhere, equal results), and the Triton
LayerNorm and two-view fold kernels (``TRITON_INTERPRET=1`` on CPU tensors) against ``reference``:
outputs and gradients, float64 / float32 / bfloat16, zero / tiny / huge inputs, on meta and under
opcheck."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import lowrank
from lowrank import build_matricize
from lowrank.kernels import _switch, norm
from lowrank.kernels.cpu import norm as cpu_norm
from lowrank.matricize import _windows
from lowrank.norm_act import ChannelLayerNorm, channel_standardize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from count_ops import count

interpreted = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or not _switch.triton_available(),
    reason="Triton kernels on CPU tensors need triton and its interpreter (conftest)",
)


def test_mean_square_chunks_on_cpu_only_and_equals_one_pass():
    xhat = torch.randn(2, 3, cpu_norm.CHUNK_ELEMENTS // 5 + 7, dtype=torch.float64)  # uneven chunks
    want = xhat.square().mean(1, keepdim=True)
    torch.testing.assert_close(norm.channel_mean_square(xhat), want)
    assert count(lambda: norm.channel_mean_square(xhat)).ops > 2  # the chunk loop (cpu backend)
    with lowrank.use_kernels("reference"):
        assert count(lambda: norm.channel_mean_square(xhat)).ops == 2  # square, mean
        torch.testing.assert_close(norm.channel_mean_square(xhat), want)
    meta = torch.empty(1, 24, 128, 128, 128, device="meta")
    for backend in ("auto", "cpu", "reference"):  # never the chunks on another device
        with lowrank.use_kernels(backend):
            assert count(lambda: norm.channel_mean_square(meta), meta_as=None).ops == 2


@pytest.mark.parametrize("shape", [(1, 8, 64, 64, 32), (2, 16, 24, 20, 19)])
def test_window_fold_chunks_on_cpu_only_and_equals_one_pass(shape):
    """``from_windows`` (and its adjoint) of a swin view: cache-sized chunks on ``cpu``, one gather
    and one add per later view elsewhere; the same values and gradients."""
    mat = build_matricize("swin(patch=4, head_dim=8)")
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    matrices, ctx = mat(x)
    probe = torch.randn(shape, dtype=torch.float64)
    results = {}
    for backend in ("cpu", "reference"):
        with lowrank.use_kernels(backend):
            y = mat.inverse(matrices * 2, ctx)
            results[backend] = (y, torch.autograd.grad((y * probe).sum(), x)[0])
            c = count(lambda: mat.inverse(matrices.detach(), ctx))
            gathers = c.by_op["gather"]
        assert gathers > 2 if backend == "cpu" and x.numel() > 2 * _windows._CHUNK_ELEMENTS else gathers <= 2
    for a, b in zip(results["cpu"], results["reference"], strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(results["cpu"][0], 2 * x.detach())  # swin's views average back to x


def test_window_fold_is_one_pass_per_view_on_other_devices():
    """At BraTS size on meta, whatever the setting: one gather per view (and one add), each way."""
    mat = build_matricize("swin(patch=4, head_dim=8)")
    x = torch.empty(1, 24, 128, 128, 128, device="meta", requires_grad=True)
    grad = torch.empty(x.shape, device="meta")

    def step():  # x -> windows -> x and back: four folds with two views each
        matrices, ctx = mat(x)
        mat.inverse(matrices, ctx).backward(grad)

    step()  # the cached index tensors are built once
    for backend in ("auto", "cpu", "reference"):  # meta as meta: auto runs reference
        with lowrank.use_kernels(backend):
            c = count(step, meta_as=None)
        assert c.by_op["gather"] == 8 and c.ops <= 20, (backend, c.by_op)
    for backend in ("auto", "triton"):  # auto as on CUDA: the two-view fold is one Triton kernel
        with lowrank.use_kernels(backend):
            c = count(step)
        assert c.by_op["gather"] == 4 and c.by_op["lowrank.window_sum2"] == 2 and c.ops <= 16, c.by_op


@interpreted
@pytest.mark.parametrize("shape", [(1, 8, 16, 16, 16), (2, 16, 9, 13, 7), (1, 24, 6, 5, 11), (2, 4, 3, 3)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_window_fold_matches_reference(shape, dtype):
    """``swin``'s inverse (two views, padded and shifted) and its adjoint through the Triton fold."""
    mat = build_matricize(f"swin(patch=4, head_dim={min(8, shape[1])})")
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    probe = torch.randn(shape, dtype=dtype)
    results = {}
    for backend in ("triton", "reference"):
        with lowrank.use_kernels(backend):
            matrices, ctx = mat(x)
            y = mat.inverse(matrices * 3, ctx)
            results[backend] = (y, torch.autograd.grad((y * probe).sum(), x)[0])
            c = count(lambda: mat.inverse(matrices.detach(), ctx), meta_as=None)  # noqa: B023
        assert c.by_op["lowrank.window_sum2"] == (backend == "triton"), c.by_op
    for got, want in zip(results["triton"], results["reference"], strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(results["triton"][0], 3 * x.detach())  # the views average back to x
    src = torch.randn(2 * 3 * 2 * 5, dtype=torch.float64)
    place = torch.tensor([0, 4, 1, 3], dtype=torch.int64)
    args = (src, place, place.flip(0), [0, 10, 5, 30, 10, 5], 3, 2, 0.5)
    torch.library.opcheck(
        torch.ops.lowrank.window_sum2.default, args, test_utils=("test_schema", "test_faketensor")
    )


@pytest.mark.parametrize(
    ("setting", "meta_as", "want"),
    [
        ("auto", "cuda", "triton"),
        ("auto", "cpu", "reference"),
        ("auto", None, "reference"),
        ("reference", "cuda", "reference"),
        ("cpu", "cuda", "reference"),
    ],
)
def test_meta_as_counts_meta_tensors_as_cuda_under_auto(monkeypatch, setting, meta_as, want):
    monkeypatch.setattr(_switch, "triton_available", lambda: True)
    monkeypatch.setattr(_switch, "_setting", [setting])
    if meta_as is None:
        assert _switch.backend_for(torch.device("meta")) == want
        return
    with _switch.meta_as(meta_as):
        assert _switch.backend_for(torch.device("meta")) == want
        assert _switch.backend_for(torch.device("cpu")) == (
            "cpu" if setting in ("auto", "cpu") else "reference"
        )
    assert _switch.backend_for(torch.device("meta")) == "reference"
    with pytest.raises(ValueError, match="'cuda' or 'cpu'"):
        _switch.meta_as("xla")


def _layer_norm_case(shape, affine, scale, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = ChannelLayerNorm(shape[1], affine=affine).double()
    if affine:
        with torch.no_grad():
            layer.weight.copy_(torch.randn(shape[1], generator=g, dtype=torch.float64))
            layer.bias.copy_(torch.randn(shape[1], generator=g, dtype=torch.float64))
    layer = layer.to(dtype)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale + 3 * scale).to(dtype).requires_grad_()
    probe = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    results = {}
    for backend in ("triton", "reference"):
        with lowrank.use_kernels(backend):
            y = layer(x)
            grads = torch.autograd.grad((y * probe).sum(), [x, *layer.parameters()])
        results[backend] = (y, *grads)
    return results


@interpreted
@pytest.mark.parametrize("shape", [(1, 1, 5), (2, 3, 4, 5, 6), (1, 24, 9, 8, 7), (2, 130, 3, 33)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.0, 1e-30, 1e15])
def test_triton_layer_norm_matches_reference_float64(shape, affine, scale):
    results = _layer_norm_case(shape, affine, scale, torch.float64)
    for got, want in zip(results["triton"], results["reference"], strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * max(1.0, want.abs().max().item()))


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_layer_norm_matches_reference_float32_and_bfloat16(dtype):
    results = _layer_norm_case((2, 24, 6, 7, 5), True, 2.0, dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for got, want in zip(results["triton"], results["reference"], strict=True):
        assert got.dtype == want.dtype == dtype
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(1.0, want.abs().max().item()))


@interpreted
def test_triton_layer_norm_runs_the_kernels_on_meta_and_passes_opcheck():
    x = torch.empty(1, 24, 32, 32, 32, device="meta", requires_grad=True)
    grad = torch.empty(x.shape, device="meta")
    with lowrank.use_kernels("triton"):
        c = count(lambda: channel_standardize(x, 1e-5).backward(grad))
    assert (
        c.by_op["lowrank.channel_standardize"] == 1 and c.by_op["lowrank.channel_standardize_backward"] == 1
    )
    assert c.ops == 2, c.by_op
    xs = torch.randn(2, 5, 7, dtype=torch.float64)
    torch.library.opcheck(torch.ops.lowrank.channel_standardize.default, (xs, 1e-5))
    xhat, rstd = torch.ops.lowrank.channel_standardize(xs, 1e-5)
    for weight in (None, torch.randn(5, dtype=torch.float64)):
        args = (torch.randn_like(xs), xhat, rstd, weight)
        torch.library.opcheck(torch.ops.lowrank.channel_standardize_backward.default, args)


@interpreted
def test_layer_norm_compiles_without_graph_breaks_on_triton():
    layer = ChannelLayerNorm(6)
    x = torch.randn(2, 6, 5, 4)
    with lowrank.use_kernels("triton"):
        want = layer(x)
        got = torch.compile(layer, backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(got, want)
