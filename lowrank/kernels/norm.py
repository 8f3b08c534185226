"""The channel LayerNorm's statistics, dispatched: ``cpu`` the cache-sized chunks of
:mod:`.cpu.norm`, else one pass (``reference``; on a GPU each chunk would be kernel launches)."""

from __future__ import annotations

from torch import Tensor

from ._switch import backend_for
from .cpu import norm as _cpu

__all__ = ["channel_mean_square"]


def channel_mean_square(xhat: Tensor) -> Tensor:
    """``mean(xhat², dim=1)`` of ``xhat: (B, C, *S)``, shape ``(B, 1, *S)``."""
    if backend_for(xhat.device) == "cpu":
        return _cpu.channel_mean_square(xhat)
    return xhat.square().mean(1, keepdim=True)
