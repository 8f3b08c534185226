"""Factorizer block: wiring against an independent einops/functional reference, shapes, controls."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lowrank import build_block
from lowrank.blocks._layers import ChannelLayerNorm, PointwiseConv, make_norm
from lowrank.blocks.factorizer import Factorizer


class SVDRank1(nn.Module):
    """Best rank-1 approximation of each matrix (an independent, deterministic mixer)."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def forward(self, x, mask=None):
        self.masks.append(mask)
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        return (u[..., :, :1] * s[..., None, :1]) @ vh[..., :1, :]


def _ln(x, norm):
    return F.layer_norm(x.movedim(1, -1), (x.shape[1],), norm.weight, norm.bias, norm.eps).movedim(-1, 1)


def _pw(x, conv):
    out = torch.einsum("oc,bc...->bo...", conv.weight, x)
    if conv.bias is not None:
        out = out + conv.bias.view(1, -1, *([1] * (x.ndim - 2)))
    return out


def _randomize(block):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)


def test_block_matches_reference_formula():
    """x + out_proj(demat(svd1(relu(mat(in_proj(ln(x))))))) then + mlp(ln(.)), local windows."""
    torch.manual_seed(0)
    block = build_block(
        "factorizer(matricize=local(patch=4, head_dim=4), mlp_ratio=2)", 8, spatial_dims=2, mixer=SVDRank1()
    ).double()
    _randomize(block)
    x = torch.randn(2, 8, 8, 12, dtype=torch.float64)

    h = torch.relu(_pw(_ln(x, block.norm1), block.in_proj))
    z = rearrange(h, "b (g e) (gh ph) (gw pw) -> (b g gh gw) e (ph pw)", e=4, ph=4, pw=4)
    u, s, vh = torch.linalg.svd(z, full_matrices=False)
    z = (u[..., :1] * s[..., None, :1]) @ vh[..., :1, :]
    h = rearrange(z, "(b g gh gw) e (ph pw) -> b (g e) (gh ph) (gw pw)", b=2, g=2, gh=2, ph=4)
    x1 = x + _pw(h, block.out_proj)
    m = _pw(F.gelu(_pw(_ln(x1, block.norm2), block.mlp.fc1)), block.mlp.fc2)
    expected = x1 + m

    torch.testing.assert_close(block(x), expected)
    assert block.mixer.masks == [None]


def test_mask_reaches_the_mixer_when_windows_are_padded():
    block = build_block(
        "factorizer(matricize=local(patch=4, head_dim=4))", 8, spatial_dims=2, mixer=SVDRank1()
    )
    out = block(torch.randn(1, 8, 6, 5))
    assert out.shape == (1, 8, 6, 5)
    (mask,) = block.mixer.masks
    assert mask is not None and mask.dtype == torch.bool
    assert mask.float().mean() == pytest.approx(30 / 64)  # 6·5 valid voxels of the 8·8 padded ones


def test_parameter_count_formula():
    for c, ratio in [(32, 2.0), (64, 4.0), (16, 2.0)]:
        block = build_block(f"factorizer(mlp_ratio={ratio}, matricize=swin(patch=4, head_dim=8))", c)
        r = int(ratio)
        expected = 2 * c * c + c + 2 * r * c * c + r * c + c + 4 * c
        assert sum(p.numel() for p in block.parameters()) == expected


def test_no_mlp_and_skip_mixer():
    block = build_block("factorizer(mlp_ratio=0, matricize=global(head_dim=4))", 8, spatial_dims=1)
    assert block.mlp is None and block.norm2 is None
    x = torch.randn(2, 8, 10)
    block.skip_mixer = True
    assert torch.equal(block(x), x)  # nothing left: identity
    block2 = build_block("factorizer(matricize=global(head_dim=4))", 8, spatial_dims=1)
    block2.skip_mixer = True
    torch.testing.assert_close(block2(x), x + block2.mlp(block2.norm2(x)))
    assert "skip_mixer=True" in repr(block2)


def test_dropout_reaches_both_branches():
    block = build_block("factorizer(dropout=0.5, matricize=global(head_dim=4))", 8, spatial_dims=1)
    rates = [m.p for m in block.modules() if isinstance(m, nn.Dropout)]
    assert rates == [0.5, 0.5, 0.5]  # mixer output, MLP hidden, MLP output
    x = torch.randn(2, 8, 32)
    block.train()
    assert not torch.allclose(block(x), block(x))
    block.eval()
    torch.testing.assert_close(block(x), block(x))


@settings(max_examples=12)
@given(
    dims=st.integers(1, 3),
    size=st.lists(st.integers(1, 9), min_size=3, max_size=3),
    patch=st.integers(2, 4),
    variant=st.sampled_from(["swin", "local"]),
)
def test_any_size_preserves_shape(dims, size, patch, variant):
    block = build_block(
        f"factorizer(mixer=nmf(rank=1, iters=2), matricize={variant}(patch={patch}, head_dim=4))",
        8,
        spatial_dims=dims,
    )
    x = torch.randn(1, 8, *size[:dims])
    out = block(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_gradcheck_float64():
    block = build_block(
        "factorizer(mixer=nmf(rank=1, iters=2), matricize=swin(patch=2, head_dim=2), mlp_ratio=1)",
        4,
        spatial_dims=2,
    ).double()
    x = torch.rand(1, 4, 3, 3, dtype=torch.float64, requires_grad=True) + 0.1
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("scale", [0.0, 1e-20, 1e20])
def test_finite_on_extreme_inputs(scale):
    block = build_block(
        "factorizer(mixer=nmf(rank=1, iters=3), matricize=swin(patch=4, head_dim=4))", 8, spatial_dims=2
    )
    x = (torch.randn(1, 8, 6, 7) * scale).requires_grad_()
    out = block(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters() if p.grad is not None)


def test_bf16_autocast_is_finite():
    block = build_block(
        "factorizer(mixer=nmf(rank=1, iters=3), matricize=swin(patch=4, head_dim=4))", 8, spatial_dims=2
    )
    x = torch.randn(1, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    out.float().sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters() if p.grad is not None)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="head_dim"):
        build_block("factorizer(matricize=swin(patch=4, head_dim=8))", 12)
    with pytest.raises(ValueError, match="mlp_ratio"):
        build_block("factorizer(mlp_ratio=-1.0)", 8)
    with pytest.raises(ValueError, match="dropout"):
        build_block("factorizer(dropout=1.0)", 8)
    block = build_block("factorizer(matricize=swin(patch=4, head_dim=4))", 8, spatial_dims=2)
    with pytest.raises(ValueError, match=r"expects \(B, 8, \*S\)"):
        block(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"norm"):
        build_block("factorizer(norm=nonorm)", 8)  # rejected when the spec is validated
    with pytest.raises(ValueError, match=r"cannot build the norm layer"):
        Factorizer(8, norm="nonorm")  # rejected by the norm factory when called directly


def test_state_dict_and_deepcopy():
    spec = "factorizer(mixer=nmf(rank=1, iters=2), matricize=swin(patch=4, head_dim=4))"
    a, b = build_block(spec, 8, spatial_dims=3), build_block(spec, 8, spatial_dims=3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 8, 5, 6, 4)
    torch.testing.assert_close(a(x), b(x))
    torch.testing.assert_close(copy.deepcopy(a)(x), a(x))
    assert str(a.spec) == spec


def test_channel_layer_norm_matches_layer_norm():
    norm = ChannelLayerNorm(6).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 6, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(norm(x), _ln(x, norm))
    assert torch.autograd.gradcheck(norm, (x,))
    half = norm.float()(x.detach().float().to(torch.bfloat16) * 1e3)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()


def test_pointwise_conv_matches_conv():
    pw = PointwiseConv(5, 7)
    x = torch.randn(3, 5, 4, 2, 3)
    expected = F.conv3d(x, pw.weight[:, :, None, None, None], pw.bias)
    torch.testing.assert_close(pw(x), expected)
    a, b = x[:, :2], x[:, 2:]  # pieces of a concatenation: never materialized
    torch.testing.assert_close(pw(a, b), expected)
    with pytest.raises(ValueError, match="channels"):
        pw(a, a)
    nobias = PointwiseConv(5, 7, bias=False)
    torch.testing.assert_close(nobias(x[:, :, 0]), F.conv2d(x[:, :, 0], nobias.weight[:, :, None, None]))


def test_make_norm_group_size_and_errors():
    gn = make_norm(("group", {"group_size": 8}), 64, 3)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 8
    assert make_norm(("group", {"group_size": 8}), 4, 3).num_groups == 1
    with pytest.raises(ValueError, match="divide"):
        make_norm(("group", {"num_groups": 3}), 8, 3)
    assert isinstance(make_norm("layer", 8, 2), ChannelLayerNorm)
    assert isinstance(make_norm(None, 8, 2), nn.Identity)
