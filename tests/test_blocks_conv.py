"""Conv blocks (double conv, residual, pre-activation residual) against functional references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowrank import build_block
from lowrank.blocks.conv_blocks import DoubleConv


class CountingConv(nn.Module):
    """A user conv class: records every construction (to check that blocks use ``conv=``)."""

    calls: list = []

    def __init__(
        self, in_channels, out_channels, kernel_size=3, *, stride=1, padding=0, spatial_dims=3, bias=True
    ):
        super().__init__()
        CountingConv.calls.append((in_channels, out_channels, kernel_size))
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        self.conv = conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)

    def forward(self, x):
        return self.conv(x)


def _conv(x, module):
    conv = module.conv
    return F.conv3d(x, conv.weight, conv.bias, padding=1)


def _lrelu(x):
    return F.leaky_relu(x, 0.01)


def test_double_conv_reference():
    block = build_block("double_conv", 16, in_channels=8)
    x = torch.randn(2, 8, 5, 6, 7)
    h = _lrelu(F.group_norm(_conv(x, block.conv1), 2, block.norm1.weight, block.norm1.bias))
    h = _lrelu(F.group_norm(_conv(h, block.conv2), 2, block.norm2.weight, block.norm2.bias))
    torch.testing.assert_close(block(x), h)
    assert block.norm1.num_groups == 2  # 8 channels per group


def test_residual_reference_with_projection_shortcut():
    block = build_block("residual", 16, in_channels=8)
    x = torch.randn(2, 8, 5, 6, 7)
    h = _lrelu(F.instance_norm(_conv(x, block.conv1)))
    h = F.instance_norm(_conv(h, block.conv2))
    shortcut = F.conv3d(x, block.shortcut.conv.weight, block.shortcut.conv.bias)
    torch.testing.assert_close(block(x), _lrelu(h + shortcut))
    assert block.shortcut.conv.kernel_size == (1, 1, 1)
    same = build_block("residual", 8)
    assert isinstance(same.shortcut, nn.Identity)


def test_preact_residual_reference_identity_shortcut():
    block = build_block("preact_residual", 16)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()
    x = torch.randn(2, 16, 4, 5, 6)
    h = _conv(_lrelu(F.group_norm(x, 2, block.norm1.weight, block.norm1.bias)), block.conv1)
    h = _conv(_lrelu(F.group_norm(h, 2, block.norm2.weight, block.norm2.bias)), block.conv2)
    torch.testing.assert_close(block(x), h + x)
    assert isinstance(block.shortcut, nn.Identity)


@pytest.mark.parametrize("name", ["double_conv", "residual", "preact_residual"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_shapes_and_gradients(name, dims):
    block = build_block(name, 8, spatial_dims=dims, in_channels=4)
    x = torch.randn(2, 4, *[5, 6, 3][:dims], requires_grad=True)
    out = block(x)
    assert out.shape == (2, 8, *x.shape[2:])
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", ["double_conv", "residual", "preact_residual"])
def test_every_3x3_conv_comes_from_the_conv_spec(name):
    CountingConv.calls = []
    block = build_block(name, 16, in_channels=8, conv=CountingConv)
    assert CountingConv.calls == [(8, 16, (3, 3, 3)), (16, 16, (3, 3, 3))]
    assert block(torch.randn(1, 8, 4, 4, 4)).shape == (1, 16, 4, 4, 4)


def test_parameter_counts():
    def conv(ci, co, k):
        return ci * co * k**3 + co

    assert sum(p.numel() for p in build_block("double_conv", 32, in_channels=64).parameters()) == (
        conv(64, 32, 3) + conv(32, 32, 3) + 4 * 32
    )
    assert sum(p.numel() for p in build_block("residual", 60, in_channels=4).parameters()) == (
        conv(4, 60, 3) + conv(60, 60, 3) + conv(4, 60, 1)
    )


def test_options_and_errors():
    block = build_block("residual(norm=batch, act=relu, kernel_size=(3, 3, 1))", 8, spatial_dims=3)
    assert isinstance(block.norm1, nn.BatchNorm3d) and isinstance(block.act1, nn.ReLU)
    assert block.conv1.conv.kernel_size == (3, 3, 1) and block.conv1.conv.padding == (1, 1, 0)
    with pytest.raises(ValueError, match="odd kernel"):
        build_block("double_conv(kernel_size=2)", 8)
    with pytest.raises(ValueError, match="norm"):
        build_block("double_conv(norm=nosuchnorm)", 8)
    with pytest.raises(ValueError, match="act"):
        build_block("double_conv(act=nosuchact)", 8)
    with pytest.raises(ValueError, match="cannot build the activation"):
        DoubleConv(8, act="nosuchact")
    with pytest.raises(ValueError, match="dropout"):
        build_block("preact_residual(dropout=1.5)", 8)
    drop = build_block("double_conv(dropout=0.3)", 8)
    assert drop.drop.p == 0.3


def test_identity_block():
    x = torch.randn(1, 3, 4)
    assert build_block("identity", 3, spatial_dims=1)(x) is x
