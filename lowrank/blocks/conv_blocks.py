"""Convolutional blocks of the U-Net family: double conv, residual, pre-activation residual.

Every convolution is built with :func:`lowrank.build_conv` from the ``conv`` spec (``"dense"`` by
default), so ``conv=cp_conv(rank=0.5)`` makes a block low-rank; 1×1 shortcuts stay dense.
These blocks also change the channel count when the U-Net skeleton passes ``in_channels`` (the
first block of a stage after max-pooling, or after concatenating a skip connection).

- ``double_conv`` (U-Net / nnU-Net): ``(conv → norm → act) × 2``;
- ``residual`` (Res-U-Net, thesis ch. 8): ``act(norm(conv(act(norm(conv(x))))) + shortcut(x))``,
  shortcut a 1×1 conv when the channels change, else the identity;
- ``preact_residual`` (Pre-U-Net, thesis ch. 6): ``conv(act(norm(conv(act(norm(x)))))) + shortcut(x)``.

Norm/act specs follow MONAI (``str | (name, {kwargs})``); ``("group", {"group_size": 8})`` is a
GroupNorm with 8 channels per group, the thesis's choice.

Example:
    >>> import torch
    >>> from lowrank import build_block
    >>> build_block("residual", 16, in_channels=8)(torch.randn(1, 8, 6, 6, 6)).shape
    torch.Size([1, 16, 6, 6, 6])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..build import ConvSpec, LayerSpec, build_conv
from ..registry import register
from ._layers import as_tuple, make_act, make_norm

__all__ = ["DoubleConv", "Residual", "PreActResidual", "Identity"]

_GROUP8 = ("group", {"group_size": 8})
_LEAKY = ("leakyrelu", {"negative_slope": 0.01})


def _conv(conv, cin: int, cout: int, kernel_size, spatial_dims: int) -> nn.Module:
    kernel = as_tuple(kernel_size, spatial_dims, "kernel_size")
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"conv blocks need odd kernel sizes (to keep the size), got {kernel}")
    padding = tuple(k // 2 for k in kernel)
    return build_conv(
        conv, cin, cout, kernel, spatial_dims=spatial_dims, padding=padding, stride=1, bias=True
    )


def _shortcut(cin: int, cout: int, spatial_dims: int) -> nn.Module:
    if cin == cout:
        return nn.Identity()
    return build_conv("dense", cin, cout, 1, spatial_dims=spatial_dims, bias=True)


def _check(channels: int, in_channels: int | None, dropout: float, name: str) -> int:
    cin = channels if in_channels is None else in_channels
    if channels < 1 or cin < 1:
        raise ValueError(f"{name} needs positive channels, got channels={channels}, in_channels={cin}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{name} dropout must be in [0, 1), got {dropout}")
    return cin


@register("block", "double_conv", aliases=("unet_block",), test_size=8)
class DoubleConv(nn.Module):
    """U-Net block: ``(conv → norm → act) × 2`` (nnU-Net style).

    Args:
        channels: output channels ``C``.
        spatial_dims: 1, 2 or 3.
        in_channels: input channels (default ``C``).
        conv: convolution spec for both convs (``"dense"``, ``cp_conv(rank=0.5)``, ...).
        kernel_size: odd kernel size, an int or one per axis.
        norm: MONAI norm spec (default GroupNorm, 8 channels per group).
        act: MONAI activation spec (default LeakyReLU(0.01)).
        dropout: dropout after the first activation.

    Shapes:
        ``(B, in_channels, *S) -> (B, C, *S)``.
    """

    def __init__(
        self,
        channels: int,
        *,
        spatial_dims: int = 3,
        in_channels: int | None = None,
        conv: ConvSpec = "dense",
        kernel_size: int | Sequence[int] = 3,
        norm: LayerSpec = _GROUP8,
        act: LayerSpec = _LEAKY,
        dropout: float = 0.0,
    ):
        super().__init__()
        cin = _check(channels, in_channels, dropout, "double_conv")
        self.conv1 = _conv(conv, cin, channels, kernel_size, spatial_dims)
        self.norm1 = make_norm(norm, channels, spatial_dims)
        self.act1 = make_act(act)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _conv(conv, channels, channels, kernel_size, spatial_dims)
        self.norm2 = make_norm(norm, channels, spatial_dims)
        self.act2 = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply to ``x: (B, in_channels, *S)``."""
        x = self.drop(self.act1(self.norm1(self.conv1(x))))
        return self.act2(self.norm2(self.conv2(x)))


@register("block", "residual", aliases=("res_block",), test_size=8)
class Residual(nn.Module):
    """Residual block (Res-U-Net, thesis ch. 8): conv → norm → act → conv → norm, + shortcut, act.

    Args:
        channels: output channels ``C``.
        spatial_dims: 1, 2 or 3.
        in_channels: input channels (default ``C``); when it differs from ``C`` the shortcut is
            a dense 1×1 conv.
        conv: convolution spec for the two convs of the residual mapping.
        kernel_size: odd kernel size.
        norm: MONAI norm spec (default InstanceNorm, as in the thesis).
        act: MONAI activation spec (default LeakyReLU(0.01)).
        dropout: dropout after the first activation.

    Shapes:
        ``(B, in_channels, *S) -> (B, C, *S)``.
    """

    def __init__(
        self,
        channels: int,
        *,
        spatial_dims: int = 3,
        in_channels: int | None = None,
        conv: ConvSpec = "dense",
        kernel_size: int | Sequence[int] = 3,
        norm: LayerSpec = "instance",
        act: LayerSpec = _LEAKY,
        dropout: float = 0.0,
    ):
        super().__init__()
        cin = _check(channels, in_channels, dropout, "residual")
        self.conv1 = _conv(conv, cin, channels, kernel_size, spatial_dims)
        self.norm1 = make_norm(norm, channels, spatial_dims)
        self.act1 = make_act(act)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _conv(conv, channels, channels, kernel_size, spatial_dims)
        self.norm2 = make_norm(norm, channels, spatial_dims)
        self.shortcut = _shortcut(cin, channels, spatial_dims)
        self.act2 = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply to ``x: (B, in_channels, *S)``."""
        h = self.drop(self.act1(self.norm1(self.conv1(x))))
        h = self.norm2(self.conv2(h))
        return self.act2(h + self.shortcut(x))


@register("block", "preact_residual", aliases=("preact_block",), test_size=8)
class PreActResidual(nn.Module):
    """Pre-activation residual block (Pre-U-Net, thesis ch. 6): ``(norm → act → conv) × 2`` + shortcut.

    Args:
        channels: output channels ``C``.
        spatial_dims: 1, 2 or 3.
        in_channels: input channels (default ``C``); when it differs from ``C`` the shortcut is
            a dense 1×1 conv (else the identity).
        conv: convolution spec for the two convs.
        kernel_size: odd kernel size.
        norm: MONAI norm spec (default GroupNorm, 8 channels per group).
        act: MONAI activation spec (default LeakyReLU(0.01)).
        dropout: dropout before the second conv.

    Shapes:
        ``(B, in_channels, *S) -> (B, C, *S)``.
    """

    def __init__(
        self,
        channels: int,
        *,
        spatial_dims: int = 3,
        in_channels: int | None = None,
        conv: ConvSpec = "dense",
        kernel_size: int | Sequence[int] = 3,
        norm: LayerSpec = _GROUP8,
        act: LayerSpec = _LEAKY,
        dropout: float = 0.0,
    ):
        super().__init__()
        cin = _check(channels, in_channels, dropout, "preact_residual")
        self.norm1 = make_norm(norm, cin, spatial_dims)
        self.act1 = make_act(act)
        self.conv1 = _conv(conv, cin, channels, kernel_size, spatial_dims)
        self.norm2 = make_norm(norm, channels, spatial_dims)
        self.act2 = make_act(act)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _conv(conv, channels, channels, kernel_size, spatial_dims)
        self.shortcut = _shortcut(cin, channels, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply to ``x: (B, in_channels, *S)``."""
        h = self.conv1(self.act1(self.norm1(x)))
        h = self.conv2(self.drop(self.act2(self.norm2(h))))
        return h + self.shortcut(x)


@register("block", "identity", aliases=("none_block",))
class Identity(nn.Module):
    """The identity block (for ablations: a stage that does nothing).

    Args:
        channels: ``C`` (unused beyond the contract).
        spatial_dims: 1, 2 or 3.

    Shapes:
        ``(B, C, *S) -> (B, C, *S)``.
    """

    def __init__(self, channels: int, *, spatial_dims: int = 3):
        super().__init__()
        self.channels, self.spatial_dims = channels, spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` unchanged."""
        return x
