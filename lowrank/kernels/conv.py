"""Convolutions, dispatched: on ``cpu``, a small one-sample float32 3-D conv goes straight to oneDNN
(:mod:`.cpu.conv`); otherwise the module runs as is (``reference``)."""

from __future__ import annotations

from torch import Tensor, nn

from ._switch import backend_for
from .cpu.conv import onednn_conv3d, onednn_skipped

__all__ = ["convolution"]


def convolution(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` for a ``torch.nn`` ConvNd ``module``, through oneDNN where PyTorch would skip it."""
    if isinstance(module, nn.Conv3d) and backend_for(x.device) == "cpu" and onednn_skipped(module, x):
        return onednn_conv3d(module, x)
    return module(x)
