"""``global``: one matrix per sample and head over all voxels (Factorizer's Global Matricize)."""

from __future__ import annotations

import math

from torch import Tensor

from ..registry import register
from .base import DTYPES, Matricize, MatricizeContext, check_matrices

__all__ = ["GlobalMatricize"]


@register(
    "matricize",
    "global",
    dtypes=DTYPES,
    test_spec="global(heads=2)",
    test_size=6,
)
class GlobalMatricize(Matricize):
    """Global view: ``(B, C, *S) -> (B·C/E, E, ∏S)``, one matrix per head over all voxels.

    Matrix ``b * heads + h`` holds channels ``h*E … h*E + E - 1`` of sample ``b`` as rows and the
    voxels in C (row-major) order as columns. No padding, so ``ctx.mask`` is None. The forward
    returns a view of the input when its memory layout allows (do not modify it in place).

    Args:
        heads: number of channel groups; give this or ``head_dim`` (neither: one group).
        head_dim: channels per group ``E``.
        channels: the channel count when the caller knows it (checked at build time).
        spatial_dims: number of spatial axes when the caller knows it (1, 2 or 3).

    Raises:
        ValueError: both ``heads`` and ``head_dim``; channels not divisible by them.
    """

    def __init__(
        self,
        *,
        heads: int | None = None,
        head_dim: int | None = None,
        channels: int | None = None,
        spatial_dims: int | None = None,
    ):
        super().__init__(heads=heads, head_dim=head_dim, channels=channels, spatial_dims=spatial_dims)

    def forward(self, x: Tensor) -> tuple[Tensor, MatricizeContext]:
        """``x: (B, C, *S) -> (matrices (B·heads, E, ∏S), ctx)``."""
        heads, e = self._check_input(x)
        b = x.shape[0]
        matrices = x.reshape(b * heads, e, math.prod(x.shape[2:]))
        return matrices, MatricizeContext(shape=tuple(x.shape), heads=heads)

    def inverse(self, matrices: Tensor, ctx: MatricizeContext) -> Tensor:
        """``matrices: (B·heads, M, ∏S) -> (B, heads·M, *S)`` (``M = E`` gives back ``x``)."""
        b, spatial = ctx.shape[0], ctx.shape[2:]
        check_matrices(self._name, matrices, ctx, b * ctx.heads, math.prod(spatial))
        return matrices.reshape(b, ctx.heads * matrices.shape[1], *spatial)
