"""Reliability at run time: bad tensors get lowrank's own error at the part's entry, and
finite inputs give finite outputs and gradients (signed input to MU, bf16/fp16 extremes).

Walks every registered solver, matricizer, block, conv and net (built with the contract suite's
small specs): an integer tensor is a TypeError naming the part and the dtype, an empty batch or
an empty spatial size a ValueError naming the shape, never an error from deep inside.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_contract import INFOS, _spec, make, make_input, run

from lowrank import build_block, build_solver
from lowrank.solvers.updates import MUUpdate

ENTRY = [i for i in INFOS if i.kind in ("solver", "matricize", "block", "conv", "net")]
_BUILT: dict = {}


def _part(info):
    key = (info.kind, info.name)
    if key not in _BUILT:
        dims = 3 if 3 in info.dims else info.dims[0]
        _BUILT[key] = (make(info, _spec(info), dims), make_input(info, dims, torch.float32))
    return _BUILT[key]


def _id(info) -> str:
    return f"{info.kind}:{info.name}"


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("info", ENTRY, ids=_id)
def test_integer_input_is_a_type_error_at_the_entry(info, dtype):
    module, x = _part(info)
    with pytest.raises(
        TypeError, match=rf"{info.name} expects a floating-point tensor, got {str(dtype)[6:]}"
    ):
        run(info, module, x.to(dtype))


@pytest.mark.parametrize("info", ENTRY, ids=_id)
def test_empty_batch_and_empty_spatial_size_are_clear_errors(info):
    module, x = _part(info)
    with pytest.raises(ValueError, match=rf"{info.name} got (an empty batch|empty matrices)"):
        run(info, module, x[:0])
    last = "empty matrices" if info.kind == "solver" else "an empty spatial size"
    with pytest.raises(ValueError, match=rf"{info.name} got {last}"):
        run(info, module, x[..., :0])


def test_entry_checks_do_not_break_torch_compile():
    block = build_block("factorizer(mixer=nmf(rank=1), matricize=swin(patch=4, head_dim=8))", 16)
    x = torch.randn(1, 16, 8, 8, 8)
    compiled = torch.compile(block, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), block(x))


# ------------------------------------------------------------------------ MU on signed input
@pytest.mark.parametrize(
    "spec",
    [
        "nmf(rank=8, iters=20)",
        "nmf(rank=8, iters=20, fast=false)",
        "ham_nmf(rank=8, iters=20, grad_steps=none)",
        "nmf(rank=4, iters=60)",
    ],
)
def test_mu_on_signed_input_gives_finite_values_and_gradients(spec):
    x = torch.randn(4, 8, 256, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = build_solver(spec)(x)
    out.square().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert out.abs().max() <= 4 * x.abs().max()  # a fit, not a divergence (was up to 1e3 x)


def test_factorizer_without_mixer_activation_has_finite_gradients():
    block = build_block(
        "factorizer(mixer_act=none, matricize=swin(patch=4, head_dim=8), mixer=nmf(rank=8, iters=20))", 16
    )
    x = torch.randn(2, 16, 8, 8, 8, requires_grad=True)
    block(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters() if p.grad is not None)


def test_mu_objective_is_non_increasing_on_signed_input():
    x = torch.randn(3, 8, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    layer = build_solver("nmf(rank=3, fast=false)").eval()
    errors = []
    for iters in range(1, 15):
        layer.eval_iters = iters
        errors.append(torch.linalg.matrix_norm(x - layer(x)).square())
    errors = torch.stack(errors)
    assert bool((errors[1:] <= errors[:-1] * (1 + 1e-10)).all()), errors


def test_mu_is_lee_seung_exactly_on_non_negative_input():
    g = torch.Generator().manual_seed(2)
    x, w, h = (
        torch.rand(5, 7, 30, generator=g),
        torch.rand(5, 7, 3, generator=g),
        torch.rand(5, 30, 3, generator=g),
    )
    reference = w * (x @ h) / (w @ (h.mT @ h) + 1e-7)
    assert torch.equal(MUUpdate()(x, w, h, 1e-7), reference)


# ---------------------------------------------------------------- bf16 / fp16 input extremes
_HALF = [i for i in ENTRY if i.kind != "conv" or i.name == "dense"]


@given(
    index=st.integers(0, len(_HALF) - 1),
    dtype=st.sampled_from([torch.bfloat16, torch.float16]),
    pattern=st.sampled_from(["huge", "mixed", "signed", "tiny"]),
    autocast=st.booleans(),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_half_precision_extremes_give_finite_outputs(index, dtype, pattern, autocast):
    """Inputs at the documented extremes (docs/guides/errors.rst): |x| up to 1e18 in bf16 and
    1e3 in fp16 (a convolution's sums of larger inputs exceed fp16's 6.5e4), mixed with tiny
    values: the output is finite."""
    info = _HALF[index]
    module, x = _part(info)
    big = 1e18 if dtype == torch.bfloat16 else 1e3
    tiny = 1e-30 if dtype == torch.bfloat16 else 1e-6
    unit = x / x.abs().max()
    select = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) > 0.5
    values = {
        "huge": unit * big,
        "mixed": unit * torch.where(select, big, tiny),
        "signed": unit * big * torch.where(select, 1.0, -1.0),
        "tiny": unit * tiny,
    }[pattern]
    if info.kind in ("solver",) and pattern in ("signed", "mixed"):
        values = values.abs()  # non-negative solvers see ReLU'd input in their blocks
    if autocast:
        with torch.autocast("cpu", dtype=dtype):
            out = run(info, module.float(), values)
    else:
        out = run(info, module.to(dtype), values.to(dtype))
        module.float()
    outs = out if isinstance(out, (list, tuple)) else [out]
    assert all(torch.isfinite(o).all() for o in outs if isinstance(o, torch.Tensor)), (info.name, pattern)
