"""The channel LayerNorm's Triton kernels as ``torch.library`` custom ops (with fake implementations).

``lowrank::channel_standardize`` maps ``x (B, C, V)`` to ``(x̂, rstd (B, 1, V))`` (the statistics
over C; ``x̂`` in float32 for half-precision ``x``, else in ``x``'s dtype) and
``lowrank::channel_standardize_backward`` maps the gradient of ``w ⊙ x̂`` to ``dx``. The autograd
function around them is :class:`lowrank.norm_act._ChannelLayerNormFn`; the dispatcher is
:mod:`lowrank.kernels.norm`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MAX_CHANNELS", "channel_standardize", "channel_standardize_backward", "supports_norm"]

#: the most channels one program holds (all of a voxel's channels are reduced in registers)
MAX_CHANNELS = 1024


def supports_norm(x: Tensor) -> bool:
    """Whether the kernels cover ``x: (B, C, *S)``."""
    return x.ndim >= 2 and 1 <= x.shape[1] <= MAX_CHANNELS and x.numel() > 0


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _blocks(c: int) -> tuple[int, int]:
    bc = max(1, 1 << (c - 1).bit_length())
    return bc, max(16, min(256, 4096 // bc))


@torch.library.custom_op("lowrank::channel_standardize", mutates_args=())
def _fwd(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    from . import _norm_kernels as k

    b, c, v = x.shape
    xhat = torch.empty(x.shape, dtype=_compute_dtype(x.dtype), device=x.device)
    rstd = torch.empty(b, 1, v, dtype=xhat.dtype, device=x.device)
    bc, bv = _blocks(c)
    k.standardize_fwd[(_cdiv(v, bv), b)](x, xhat, rstd, c, v, eps, BC=bc, BV=bv)
    return xhat, rstd


@_fwd.register_fake
def _(x, eps):
    dtype = _compute_dtype(x.dtype)
    return x.new_empty(x.shape, dtype=dtype), x.new_empty((x.shape[0], 1, x.shape[2]), dtype=dtype)


@torch.library.custom_op("lowrank::channel_standardize_backward", mutates_args=())
def _bwd(g: Tensor, xhat: Tensor, rstd: Tensor, weight: Tensor | None) -> Tensor:
    from . import _norm_kernels as k

    b, c, v = xhat.shape
    dx = torch.empty_like(xhat)
    bc, bv = _blocks(c)
    w = xhat if weight is None else weight  # any pointer when there is no weight
    k.standardize_bwd[(_cdiv(v, bv), b)](g, xhat, rstd, w, dx, c, v, HAS_W=weight is not None, BC=bc, BV=bv)
    return dx


@_bwd.register_fake
def _(g, xhat, rstd, weight):
    return torch.empty_like(xhat)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def channel_standardize(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``x (B, C, *S) -> (x̂ (B, C, *S), rstd (B, 1, *S))``; no autograd (the caller's function)."""
    b, c = x.shape[:2]
    xhat, rstd = _fwd(x.contiguous().view(b, c, -1), float(eps))
    return xhat.view(x.shape), rstd.view(b, 1, *x.shape[2:])


def channel_standardize_backward(g: Tensor, xhat: Tensor, rstd: Tensor, weight: Tensor | None) -> Tensor:
    """``dx`` (x̂'s dtype, shape) from the gradient ``g`` of ``weight ⊙ x̂`` (or of ``x̂``)."""
    b, c = xhat.shape[:2]
    w = None if weight is None else weight.contiguous()
    dx = _bwd(
        g.contiguous().view(b, c, -1),
        xhat.contiguous().view(b, c, -1),
        rstd.reshape(b, 1, -1).contiguous(),
        w,
    )
    return dx.view(xhat.shape)
