"""The two-view window fold as a ``torch.library`` custom op (``lowrank::window_sum2``, with a fake
implementation): what :func:`lowrank.matricize._windows._gather_sum` runs on the ``triton`` backend
for two views (``swin``); its autograd is the matricizer's (the fold's adjoint is the scatter)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["window_sum2"]


@torch.library.custom_op("lowrank::window_sum2", mutates_args=())
def _sum2(
    src: Tensor, place0: Tensor, place1: Tensor, geometry: list[int], bh: int, rows: int, scale: float
) -> Tensor:
    from . import _window_kernels as k

    off0, per0, n0, off1, per1, n1 = geometry
    volume = place0.shape[0]
    out = src.new_empty((bh, rows, volume))
    bm = min(16, max(1, 1 << (rows - 1).bit_length()))
    k.window_sum2[(-(-volume // 256), bh)](
        src, place0, place1, out, off0, per0, n0, off1, per1, n1, rows, volume, scale, BM=bm, BV=256
    )
    return out


@_sum2.register_fake
def _(src, place0, place1, geometry, bh, rows, scale):
    return src.new_empty((bh, rows, place0.shape[0]))


def window_sum2(
    src: Tensor, place0: Tensor, place1: Tensor, geometry: list[int], bh: int, rows: int, scale: float
) -> Tensor:
    """``(B·heads, M, ∏S)``: ``scale`` times the sum of two views read back to voxel order.

    Args:
        src: every view's matrices, contiguous (flat).
        place0, place1: ``(∏S,)`` int64, each voxel's ``g·M·N + n`` in its view's block.
        geometry: ``[offset, per-(B·head) block, N]`` of view 0, then of view 1 (elements).
        bh: ``B·heads``; rows: ``M``; scale: the factor.
    """
    return _sum2(src, place0, place1, [int(g) for g in geometry], bh, rows, float(scale))
