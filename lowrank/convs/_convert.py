"""``to_dense`` and ``from_conv`` of the low-rank convolutions (a mixin of their base class)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from monai.networks.layers.factories import Conv
from torch import nn

__all__ = ["ConvertMixin"]


class ConvertMixin:
    """Conversions between a low-rank convolution and a dense ``nn.ConvNd``."""

    if TYPE_CHECKING:  # provided by the convolution class this mixes into (convs/_base.py)
        spatial_dims: int
        in_channels: int
        out_channels: int
        kernel_size: tuple[int, ...]
        stride: tuple[int, ...]
        padding: Any
        dilation: tuple[int, ...]
        groups: int
        bias: torch.Tensor | None

        def __init__(self, *args: Any, **kwargs: Any) -> None: ...
        def reconstruct(self) -> torch.Tensor: ...
        def to(self, *args: Any, **kwargs: Any) -> Any: ...

    def to_dense(self) -> nn.Module:
        """An equivalent ``nn.Conv1d/2d/3d`` holding the reconstructed kernel (same device/dtype)."""
        with torch.no_grad():
            weight = self.reconstruct()
        conv = Conv[Conv.CONV, self.spatial_dims](
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    @classmethod
    def from_conv(cls, conv: nn.Module, rank: Any = "same", *, implementation: str = "auto") -> ConvertMixin:
        """Decompose a trained dense convolution with tensorly.

        tensorly's global backend is left as it was: the decomposition runs on float64 numpy
        arrays inside ``tensorly.backend_context("numpy", local_threadsafe=True)``.

        Args:
            conv: an ``nn.Conv1d/2d/3d`` (zero padding) or a ``dense`` conv part.
            rank: the rank, in any form the constructor accepts.
            implementation: see the class.

        Returns:
            A module with the conv's channels, kernel size, stride, padding, dilation, groups and
            bias, on the conv's device and dtype.

        Raises:
            TypeError: not a (non-transposed) convolution.
            ValueError: a padding mode other than zeros.
        """
        inner = getattr(conv, "conv", conv)
        if not isinstance(inner, nn.modules.conv._ConvNd) or inner.transposed:
            raise TypeError(f"from_conv needs an nn.Conv1d/2d/3d, got {type(conv).__name__}")
        if inner.padding_mode != "zeros":
            raise ValueError(f"from_conv supports padding_mode='zeros' only, got {inner.padding_mode!r}")
        weight = inner.weight.detach()
        with torch.device("cpu"):
            module = cls(
                inner.in_channels,
                inner.out_channels,
                tuple(inner.kernel_size),
                stride=tuple(inner.stride),
                padding=inner.padding if isinstance(inner.padding, str) else tuple(inner.padding),
                dilation=tuple(inner.dilation),
                groups=inner.groups,
                bias=inner.bias is not None,
                spatial_dims=len(inner.kernel_size),
                rank=rank,
                implementation=implementation,
            )
        from ._tensorly import numpy_backend

        module = module.to(dtype=weight.dtype)
        g = inner.groups
        blocks = weight.cpu().double().reshape(g, inner.out_channels // g, *weight.shape[1:]).numpy()
        with numpy_backend():
            per_group = [module._decompose(block) for block in blocks]
        with torch.no_grad():
            for i, param in enumerate(module._factor_list()):
                param.copy_(torch.stack([torch.as_tensor(f[i]) for f in per_group]))
            if inner.bias is not None:
                module.bias.copy_(inner.bias.detach().cpu())
        return module.to(device=weight.device, dtype=weight.dtype)
