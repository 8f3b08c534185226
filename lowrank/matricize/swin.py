"""``swin``: windows of the input and of shifted tilings, averaged on the way back."""

from __future__ import annotations

from collections.abc import Sequence

from ..registry import register
from ._window_matricize import WindowMatricize
from .base import DTYPES

__all__ = ["SwinMatricize"]


@register("matricize", "swin", dtypes=DTYPES, test_spec="swin(patch=4, heads=2)", test_size=6)
class SwinMatricize(WindowMatricize):
    """Shifted-window view: the local windows of several tilings, offset by ``shifts``.

    Each shift ``s`` (per axis) is one view: windows cover voxels ``[k P - s, (k+1) P - s)``, so
    ``s = 0`` is :class:`~lowrank.matricize.local.LocalMatricize` and ``s = P/2`` puts the window
    borders in the middle of the unshifted windows. The views' matrices are concatenated along the
    batch (view-major, then as in ``local``); the inverse folds each view back and averages them,
    so every voxel gets the mean of its estimate in each view.

    Borders: by default (``cyclic=False``) a shifted view pads with zeros instead of wrapping, so
    every window holds adjacent voxels only (``ceil((S + s) / P)`` windows per axis) and no output
    voxel depends on a voxel at the opposite face; the padding columns are marked in
    ``ctx.mask``. ``cyclic=True`` reproduces the reference (the input, zero-padded to a multiple of
    the patch, is rolled by ``s`` with ``torch.roll`` semantics, and windows at one face mix
    voxels of the opposite face). Neither mode makes a rolled or padded copy of the input.

    Args:
        patch: window size, an int for every axis or one per axis (e.g. ``[8, 8, 4]``).
        shifts: offsets of the views, each an int (every axis) or one per axis, with
            ``0 <= shift < patch``; default ``[0, patch // 2]`` (``[0]`` for a patch of 1).
        cyclic: wrap around the borders (the reference) instead of zero padding.
        heads: number of channel groups; give this or ``head_dim`` (neither: one group).
        head_dim: channels per group ``E``.
        channels: the channel count when the caller knows it (checked at build time).
        spatial_dims: number of spatial axes when the caller knows it (1, 2 or 3).

    Raises:
        ValueError: a bad patch or shift (wrong length, out of range), no shift, both ``heads``
            and ``head_dim``, channels not divisible by them.
    """

    def __init__(
        self,
        *,
        patch: int | Sequence[int] = 8,
        shifts: Sequence[int | Sequence[int]] | None = None,
        cyclic: bool = False,
        heads: int | None = None,
        head_dim: int | None = None,
        channels: int | None = None,
        spatial_dims: int | None = None,
    ):
        if shifts is None:
            half = patch // 2 if isinstance(patch, int) else [p // 2 for p in patch]
            unshifted = half == 0 if isinstance(half, int) else not any(half)
            shifts = [0] if unshifted else [0, half]
        super().__init__(
            patch=patch,
            shifts=shifts,
            cyclic=cyclic,
            heads=heads,
            head_dim=head_dim,
            channels=channels,
            spatial_dims=spatial_dims,
        )
