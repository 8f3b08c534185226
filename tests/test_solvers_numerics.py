"""The numerics grid: no NaN/Inf in outputs or gradients for zero, tiny and huge inputs, in fp32,
bf16/fp16 autocast and bf16 input, at every rank from 1 to min(M, N), in every gradient mode;
and scale equivariance (``f(cX) = c f(X)``), which makes tiny/huge inputs as accurate as normal ones.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from lowrank import build_solver

M, N = 4, 6
FAMILIES = ["nmf(update=mu)", "nmf(update=hals)", "nmf(update=mu, fast=false)", "semi_nmf", "weak_nmf"]
PRECISIONS = [
    "fp32",
    "bf16_autocast",
    pytest.param("fp16_autocast", marks=pytest.mark.slow),
    pytest.param("bf16_input", marks=pytest.mark.slow),
]
SCALES = {"normal": 1.0, "zero": 0.0, "tiny": 1e-30, "huge": 1e15}


def _context(precision):
    if precision.endswith("autocast"):
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
        return torch.autocast("cpu", dtype=dtype)
    return contextlib.nullcontext()


def _input(scale, precision, signed):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, M, N, generator=g)
    base = base if signed else base.relu()
    base[0, 1] = 0.0  # an all-zero row
    base[1, :, 2] = 0.0  # an all-zero column
    x = base * scale
    return x.to(torch.bfloat16) if precision == "bf16_input" else x


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_finite_outputs_and_gradients(family, precision):
    signed = family.startswith("semi")
    weight = torch.randn(3, M, N, generator=torch.Generator().manual_seed(1))
    for rank in range(1, min(M, N) + 1):
        for grad_steps in (None, 1):
            layer = build_solver(family, rank=rank, iters=4, grad_steps=grad_steps)
            reference = None
            for name, scale in SCALES.items():
                x = _input(scale, precision, signed).requires_grad_()
                with _context(precision):
                    y = layer(x)
                (g,) = torch.autograd.grad((y.float() * weight).sum(), x)
                where = f"{family} {precision} rank={rank} grad_steps={grad_steps} input={name}"
                assert y.dtype == x.dtype, where
                assert bool(torch.isfinite(y).all()), where
                assert bool(torch.isfinite(g).all()), where
                if name == "zero":
                    assert y.abs().max() == 0, where
                if name == "normal":
                    reference = y.float()
                elif name != "zero" and precision != "bf16_input":
                    # scale equivariance: f(c X) = c f(X)
                    torch.testing.assert_close(y / scale, reference, rtol=1e-4, atol=1e-5, msg=where)


def test_hals_rank8_on_relu_gaussian_has_finite_gradients():
    """The textbook HALS gives NaN input gradients here (see bench/bench_solvers.py)."""
    x = torch.randn(64, 8, 128, generator=torch.Generator().manual_seed(2)).relu().requires_grad_()
    y = build_solver("nmf(rank=8, update=hals, iters=5)")(x)
    (g,) = torch.autograd.grad(y.square().sum(), x)
    assert bool(torch.isfinite(g).all())
    assert bool(torch.isfinite(y).all())


@pytest.mark.parametrize("family", ["nmf(rank=2)", "nmf(rank=1)", "semi_nmf(rank=2)"])
def test_float64_and_half_inputs_keep_their_dtype(family):
    x = torch.rand(2, M, N, dtype=torch.float64)
    assert build_solver(family)(x).dtype == torch.float64
    y = build_solver(family)(x.half())
    assert y.dtype == torch.float16 and bool(torch.isfinite(y).all())
