"""The channel LayerNorm's mean square in cache-sized chunks (no full-size temporary).

A CPU cache-blocking loop: on a GPU each chunk would be two kernel launches, so
:func:`lowrank.kernels.norm.channel_mean_square` runs it on the ``cpu`` backend only.
"""

from __future__ import annotations

import torch

__all__ = ["CHUNK_ELEMENTS", "channel_mean_square"]

CHUNK_ELEMENTS = 1 << 20  # elements per chunk of the square-mean (a small temporary, reused from the heap)


def channel_mean_square(xhat: torch.Tensor) -> torch.Tensor:
    """``mean(xhat², dim=1)`` of ``xhat: (B, C, *S)`` through chunks along the voxels, ``(B, 1, *S)``."""
    if xhat.numel() <= CHUNK_ELEMENTS or xhat.ndim < 3:
        return xhat.square().mean(1, keepdim=True)
    flat = xhat.flatten(2) if xhat.ndim > 3 else xhat
    out = flat.new_empty((flat.shape[0], 1, flat.shape[2]))
    step = max(1, CHUNK_ELEMENTS // (flat.shape[0] * flat.shape[1]))
    for start in range(0, flat.shape[2], step):
        piece = flat[..., start : start + step]
        torch.mean(piece.square(), 1, keepdim=True, out=out[..., start : start + step])
    return out.view(xhat.shape[0], 1, *xhat.shape[2:])
