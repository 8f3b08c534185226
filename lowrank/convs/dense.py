"""Dense convolution part: ``torch.nn.ConvNd`` behind the ``conv`` spec interface."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.layers.factories import Conv
from torch import nn

from ..kernels import convolution
from ..registry import register

__all__ = ["DenseConv"]


@register("conv", "dense", aliases=("conv",))
class DenseConv(nn.Module):
    """Dense convolution (``nn.Conv1d/2d/3d``), the default of every ``conv=`` spec.

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        kernel_size: kernel size, an int or one per axis.
        stride: stride, an int or one per axis.
        padding: padding, an int, one per axis, or ``"same"``.
        dilation: dilation, an int or one per axis.
        groups: blocked connections from input to output channels.
        bias: add a learnable bias.
        spatial_dims: 1, 2 or 3.

    Shapes:
        ``(B, C_in, *S) -> (B, C_out, *S')``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        *,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        spatial_dims: int = 3,
    ):
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        self.conv = Conv[Conv.CONV, spatial_dims](
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )

    @property
    def weight(self):
        """The dense kernel ``(C_out, C_in/groups, *kernel_size)``."""
        return self.conv.weight

    def forward(self, x):
        """Apply the convolution to ``x: (B, C_in, *S)`` (:func:`lowrank.kernels.convolution`)."""
        return convolution(self.conv, x)
