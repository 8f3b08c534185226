"""Range-safe group and instance norms (lowrank/safe_norm.py): correct at any finite magnitude.

References: ``torch.nn.functional.group_norm`` / ``instance_norm`` in float64 (whose squares do
not overflow below 1e154), and the plain PyTorch layers bit for bit below 2**50.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lowrank
from lowrank.norm_act import make_norm
from lowrank.safe_norm import SafeGroupNorm, SafeInstanceNorm1d, SafeInstanceNorm2d, SafeInstanceNorm3d

_SAFE = (SafeGroupNorm, SafeInstanceNorm1d, SafeInstanceNorm2d, SafeInstanceNorm3d)


def _reference(kind: str, x: torch.Tensor, groups: int, norm: nn.Module) -> torch.Tensor:
    x64 = x.double()
    w = norm.weight.detach().double() if norm.weight is not None else None
    b = norm.bias.detach().double() if norm.bias is not None else None
    if kind == "group":
        return F.group_norm(x64, groups, w, b, norm.eps)
    return F.instance_norm(x64, weight=w, bias=b, eps=norm.eps)


@given(
    kind=st.sampled_from(["group", "instance"]),
    dims=st.integers(1, 3),
    batch=st.integers(1, 2),
    groups=st.sampled_from([1, 2, 4]),
    size=st.integers(2, 5),
    exponent=st.integers(-20, 37),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_matches_float64_reference_at_every_magnitude(kind, dims, batch, groups, size, exponent, dtype):
    channels = 4
    spec = ("group", {"num_groups": groups}) if kind == "group" else ("instance", {"affine": True})
    norm = make_norm(spec, channels, dims)
    assert isinstance(norm, _SAFE)
    with torch.no_grad():
        if norm.weight is not None:
            norm.weight.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(1))
            norm.bias.uniform_(-1.0, 1.0, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(exponent + 100)
    unit = torch.rand((batch, channels) + (size,) * dims, generator=gen) * 2 - 1
    x = (unit * 10.0**exponent).to(dtype)
    out = norm.to(dtype)(x).double()
    ref = _reference(kind, x, groups, norm.float())
    assert torch.isfinite(out).all()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    # a group whose spread is below eps·s² is flattened (its eps acts on the original scale)
    assert torch.allclose(out, ref, atol=tol * 10, rtol=tol), (out - ref).abs().max()


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e3, 1e12, 2.0**50])
def test_bit_identical_to_the_plain_layer_below_the_limit(dims, scale):
    x = torch.randn((2, 8) + (5,) * dims, generator=torch.Generator().manual_seed(0))
    x = x / x.abs().max() * scale  # max |x| = scale <= 2**50
    safe_group, plain_group = SafeGroupNorm(4, 8), nn.GroupNorm(4, 8)
    instance = {1: (SafeInstanceNorm1d, nn.InstanceNorm1d), 2: (SafeInstanceNorm2d, nn.InstanceNorm2d)}.get(
        dims, (SafeInstanceNorm3d, nn.InstanceNorm3d)
    )
    safe_inst, plain_inst = instance[0](8, affine=True), instance[1](8, affine=True)
    assert torch.equal(safe_group(x), plain_group(x))
    assert torch.equal(safe_inst(x), plain_inst(x))


def test_plain_layers_fail_where_the_safe_ones_hold():
    """The defect this fixes: PyTorch's GroupNorm gives all zeros or NaN on |x| ~ 1e18-1e20."""
    x = torch.randn(2, 8, 6, 6, 6, generator=torch.Generator().manual_seed(0))
    ref = nn.GroupNorm(4, 8)(x)
    for scale in (1e18, 1e20):
        plain = nn.GroupNorm(4, 8)(x * scale)
        assert not torch.allclose(plain, ref, atol=1e-3)
        assert torch.allclose(SafeGroupNorm(4, 8)(x * scale), ref, atol=1e-4)


def test_state_dict_is_that_of_the_plain_layer():
    plain, safe = nn.GroupNorm(2, 4), SafeGroupNorm(2, 4)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 2.0)
    safe.load_state_dict(plain.state_dict())
    assert safe.state_dict().keys() == plain.state_dict().keys()
    assert torch.equal(safe.weight, plain.weight)
    built = make_norm(("instance", {"affine": True}), 4, 3)
    assert isinstance(built, nn.InstanceNorm3d) and built.state_dict().keys() == {"weight", "bias"}


def test_gradient_of_a_huge_input_is_the_scaled_gradient():
    """d norm(c·x) / d(c·x) = (d norm(x) / dx) / c: finite and exact up to rounding at c = 1e25."""
    x = torch.randn(2, 8, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grad = torch.randn_like(x)
    norm = SafeGroupNorm(4, 8, eps=1e-12).double()  # eps negligible at both scales
    small = x.clone().requires_grad_()
    norm(small).backward(grad)
    huge = (x * 1e25).requires_grad_()
    norm(huge).backward(grad)
    assert torch.isfinite(huge.grad).all()
    assert torch.allclose(huge.grad * 1e25, small.grad, rtol=1e-6, atol=1e-9)


def test_gradcheck_in_float64():
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SafeGroupNorm(2, 4).double(), (x,))
    assert torch.autograd.gradcheck(SafeInstanceNorm2d(4, affine=True).double(), (x,))


@pytest.mark.parametrize("name", ["unet", "pre_unet", "unet_skeleton"])
def test_group_norm_nets_give_finite_output_on_huge_bf16_input(name):
    """The GroupNorm conv nets at |x| = 1e30 in bfloat16 (NaN or zeros before): finite, and the
    (scale-invariant) U-Net gives the output of a moderate input."""
    net = lowrank.build_net(name, 1, 3).eval()
    assert not any(type(m) in (nn.GroupNorm, nn.InstanceNorm3d) for m in net.modules())
    x = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x * 1e30).float()
        moderate = net(x * 1e6).float()
    assert torch.isfinite(out).all()
    if name == "unet":
        assert torch.allclose(out, moderate, atol=5e-2)
