"""Direct oneDNN calls for small 3-D convs that PyTorch's size heuristic sends to ``slow_conv3d``."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["onednn_conv3d", "onednn_skipped"]

#: PyTorch sends a float32 CPU conv to oneDNN only above this many ``N·C·D·H`` input entries
#: (or for batch > 1, groups > 1, big kernels); below it runs ``slow_conv3d``.
_ONEDNN_MIN_ENTRIES = 20480


def onednn_skipped(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    """Whether PyTorch would run this 3-D conv with its slow native kernel although oneDNN can.

    A one-sample 3-D volume with few channels (a net's stem at ``1×4×64³`` runs ``slow_conv3d``;
    timed against oneDNN by ``bench/bench_cpu_paths.py``) falls under PyTorch's size heuristic,
    which was tuned on 2-D images. Only plain float32 CPU convs outside ``torch.compile`` and autocast
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


def onednn_conv3d(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` through ``torch.mkldnn_convolution`` (values and gradients of ``conv(x)``)."""
    return torch.mkldnn_convolution(
        x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups
    )
