"""Dense convolution part: ``torch.nn.ConvNd`` behind the ``conv`` spec interface."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..registry import register

__all__ = ["DenseConv"]

_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
#: PyTorch sends a float32 CPU conv to oneDNN only above this many ``N·C·D·H`` input entries
#: (or for batch > 1, groups > 1, big kernels); below it runs ``slow_conv3d``.
_ONEDNN_MIN_ENTRIES = 20480


def _onednn_skipped(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    """Whether PyTorch would run this 3-D conv with its slow native kernel although oneDNN can.

    A one-sample 3-D volume with few channels (a net's stem at ``1×4×64³``: ``slow_conv3d``,
    149 ms forward vs oneDNN's 58 ms on one thread) falls under PyTorch's size heuristic, which
    was tuned on 2-D images. Only plain float32 CPU convs outside ``torch.compile`` and autocast
    qualify; the result and its gradients are those of ``conv(x)`` (tested).
    """
    if torch.compiler.is_compiling():  # first: the checks below are not traceable
        return False
    k = conv.kernel_size
    return (
        x.dim() == 5
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and conv.weight.dtype == torch.float32
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and conv.groups == 1
        and math.prod(k) > 1
        and not (k[-1] > 3 and k[-2] > 3)
        and x.shape[0] == 1
        and math.prod(x.shape[:4]) <= _ONEDNN_MIN_ENTRIES
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    )


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
        if spatial_dims not in _CONVS:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        self.conv = _CONVS[spatial_dims](
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
        """Apply the convolution to ``x: (B, C_in, *S)``."""
        conv = self.conv
        if isinstance(conv, nn.Conv3d) and _onednn_skipped(conv, x):
            return torch.mkldnn_convolution(
                x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups
            )
        return conv(x)
