"""``channel``: Hamburger's ``spatial=False`` view, voxels as rows and channels as columns."""

from __future__ import annotations

import math

from torch import Tensor

from ..registry import register
from .base import DTYPES, Matricize, MatricizeContext, check_matrices

__all__ = ["ChannelMatricize"]


@register("matricize", "channel", dtypes=DTYPES, test_spec="channel(heads=2)", test_size=6)
class ChannelMatricize(Matricize):
    """Channel view: ``(B, C, *S) -> (B·heads, ∏S, C/heads)``, voxels as rows (Hamburger).

    The transpose of :class:`~lowrank.matricize.global_.GlobalMatricize`: matrix
    ``b * heads + h`` has one row per voxel (row-major order) and the head's ``E = C/heads``
    channels as columns. Columns are never padded (``ctx.mask`` is None). The forward returns a
    view of the input (non-contiguous; do not modify it in place). The spatial factor is ``U``,
    so :meth:`component_map` takes ``U`` from a ``(U, V)`` pair.

    Args:
        heads: number of channel groups; give this or ``head_dim`` (neither: one group).
        head_dim: channels per group ``E``.
        channels: the channel count when the caller knows it (checked at build time).
        spatial_dims: number of spatial axes when the caller knows it (1, 2 or 3).

    Raises:
        ValueError: both ``heads`` and ``head_dim``; channels not divisible by them.
    """

    spatial_factor_index = 0

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
        """``x: (B, C, *S) -> (matrices (B·heads, ∏S, E), ctx)``."""
        heads, e = self._check_input(x)
        b = x.shape[0]
        matrices = x.reshape(b * heads, e, math.prod(x.shape[2:])).transpose(1, 2)
        return matrices, MatricizeContext(shape=tuple(x.shape), heads=heads)

    def inverse(self, matrices: Tensor, ctx: MatricizeContext) -> Tensor:
        """``matrices: (B·heads, ∏S, M) -> (B, heads·M, *S)`` (``M = E`` gives back ``x``)."""
        b, spatial = ctx.shape[0], ctx.shape[2:]
        n = math.prod(spatial)
        if matrices.dim() != 3 or matrices.shape[0] != b * ctx.heads or matrices.shape[1] != n:
            raise ValueError(
                f"{self._name}.inverse: expected matrices (B'={b * ctx.heads}, N={n}, M) for an input "
                f"of shape {tuple(ctx.shape)}, got {tuple(matrices.shape)}; pass the ctx of the "
                f"forward pass that made these matrices"
            )
        return matrices.transpose(1, 2).reshape(b, ctx.heads * matrices.shape[2], *spatial)

    def _component_inverse(self, rows: Tensor, ctx: MatricizeContext) -> Tensor:
        """``U`` transposed ``(B·heads, R, ∏S) -> (B, heads·R, *S)``."""
        b, spatial = ctx.shape[0], ctx.shape[2:]
        check_matrices(self._name, rows, ctx, b * ctx.heads, math.prod(spatial))
        return rows.reshape(b, ctx.heads * rows.shape[1], *spatial)
