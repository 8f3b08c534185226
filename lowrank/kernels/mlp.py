"""The Factorizer's MLP branch ``x + W2 gelu(W1 x̂ + b1) + b2`` (LayerNorm without affine: folded
into W1, b1), dispatched: ``cpu`` the chunked node of :mod:`.cpu.mlp` (float32/64, no autocast),
else ``reference``."""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from ._switch import backend_for
from .cpu import mlp as _cpu

__all__ = ["fused_mlp"]


def fused_mlp(
    x: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    eps: float,
    approximate: str = "none",
    chunk_elements: int | None = None,
) -> Tensor:
    """``x + W2 gelu(W1 x̂ + b1) + b2`` with ``x̂`` the channel-standardized ``x: (B, C, *S)``.

    Args:
        x: ``(B, C, *S)``.
        w1: ``(H, C)``; b1: ``(H,)``; w2: ``(C, H)``; b2: ``(C,)``.
        eps: the LayerNorm's eps.
        approximate: GELU's ``approximate``.
        chunk_elements: hidden elements per chunk on ``cpu`` (default :data:`.cpu.mlp.CHUNK_ELEMENTS`).

    Returns:
        ``(B, C, *S)``.
    """
    cpu_ok = x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled("cpu")
    if backend_for(x.device, cpu_ok=cpu_ok, triton_ok=False) == "cpu":
        return _cpu.fused_mlp(x, w1, b1, w2, b2, eps, approximate, chunk_elements)
    return reference.fused_mlp(x, w1, b1, w2, b2, eps, approximate)
