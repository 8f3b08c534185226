"""``local``: non-overlapping windows, one matrix per window and head (Local Matricize)."""

from __future__ import annotations

from collections.abc import Sequence

from ..registry import register
from ._window_matricize import WindowMatricize
from .base import DTYPES

__all__ = ["LocalMatricize"]


@register("matricize", "local", dtypes=DTYPES, test_spec="local(patch=4, heads=2)", test_size=6)
class LocalMatricize(WindowMatricize):
    """Local view: ``(B, C, *S) -> (B·C/E·#windows, E, ∏patch)``, non-overlapping windows.

    Matrix ``(b * heads + h) * G + g`` holds channels ``h*E … h*E + E - 1`` of window ``g``
    (row-major over the window grid) of sample ``b`` as rows and the window's voxels (row-major)
    as columns: ``Z[b h g, e, p] = x[b, h E + e, g P + p]`` per axis, as in the Factorizer paper.
    A size that the patch does not divide is zero-padded at the end of the axis (windows
    ``ceil(S / patch)`` per axis); ``ctx.mask`` then marks the padding columns, and the inverse
    crops them away.

    Args:
        patch: window size, an int for every axis or one per axis (e.g. ``[8, 8, 4]``).
        heads: number of channel groups; give this or ``head_dim`` (neither: one group).
        head_dim: channels per group ``E``.
        channels: the channel count when the caller knows it (checked at build time).
        spatial_dims: number of spatial axes when the caller knows it (1, 2 or 3).

    Raises:
        ValueError: a patch below 1 or of the wrong length; both ``heads`` and ``head_dim``;
            channels not divisible by them.
    """

    def __init__(
        self,
        *,
        patch: int | Sequence[int] = 8,
        heads: int | None = None,
        head_dim: int | None = None,
        channels: int | None = None,
        spatial_dims: int | None = None,
    ):
        super().__init__(
            patch=patch,
            shifts=(0,),
            cyclic=False,
            heads=heads,
            head_dim=head_dim,
            channels=channels,
            spatial_dims=spatial_dims,
        )
