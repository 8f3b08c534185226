"""The shared machinery of the ``local`` and ``swin`` matricizers: :class:`WindowMatricize`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._plans import ViewPlan, WindowLayout, plan_axis
from ._window_inference import LazyWindows, fold_rank1
from ._windows import from_windows, to_windows, window_mask
from .base import Matricize, MatricizeContext, check_matrices, per_axis

__all__ = ["WindowMatricize"]


class WindowMatricize(Matricize):
    """Shared machinery of ``local`` and ``swin``: windows of one or more shifted tilings.

    Args:
        patch: window size, one int for every axis or one per axis.
        shifts: the views' offsets, each an int (every axis) or one per axis, ``0 <= s < patch``.
        cyclic: wrap around the borders (the reference's roll) instead of zero padding.
        heads, head_dim, channels, spatial_dims: see :class:`~lowrank.matricize.base.Matricize`.
    """

    def __init__(
        self,
        *,
        patch: int | Sequence[int],
        shifts: Sequence[int | Sequence[int]],
        cyclic: bool,
        heads: int | None,
        head_dim: int | None,
        channels: int | None,
        spatial_dims: int | None,
    ):
        super().__init__(heads=heads, head_dim=head_dim, channels=channels, spatial_dims=spatial_dims)
        if not isinstance(patch, int):
            patch = tuple(patch)
            if self.spatial_dims is None and len(patch) in (1, 2, 3):
                self.spatial_dims = len(patch)
        shifts = tuple([s if isinstance(s, int) else tuple(s) for s in shifts])
        if not shifts:
            raise ValueError(f"{self._name}: shifts must hold at least one shift, got []")
        self.patch, self.shifts, self.cyclic = patch, shifts, bool(cyclic)
        for nd in (self.spatial_dims,) if self.spatial_dims is not None else (1, 2, 3):
            self._geometry(nd)  # validate now; the per-axis values are recomputed at run time

    def _geometry(self, nd: int) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
        """Per-axis patch and shifts for ``nd`` spatial axes (validated)."""
        patch = per_axis(self._name, "patch", self.patch, nd, minimum=1)
        shifts = []
        for shift in self.shifts:
            s = per_axis(self._name, "shift", shift, nd, minimum=0)
            if any([v >= p for v, p in zip(s, patch, strict=True)]):
                raise ValueError(
                    f"{self._name}: each shift must be smaller than the patch on its axis "
                    f"(0 <= shift < patch), got shift {list(s)} for patch {list(patch)}; "
                    f"use the shift modulo the patch"
                )
            shifts.append(s)
        return patch, tuple(shifts)

    def layout(self, x: Tensor, heads: int) -> WindowLayout:
        """The :class:`WindowLayout` of input ``x`` (sizes read from ``x``)."""
        spatial = tuple(x.shape[2:])
        patch, shifts = self._geometry(len(spatial))
        views = tuple(
            [
                ViewPlan(
                    tuple(
                        [
                            plan_axis(n, p, s, self.cyclic)
                            for n, p, s in zip(spatial, patch, shift, strict=True)
                        ]
                    )
                )
                for shift in shifts
            ]
        )
        return WindowLayout(x.shape[0], heads, spatial, views)

    def context(self, x: Tensor) -> MatricizeContext:
        """The context of ``forward(x)`` (sizes, padding mask, window plan), without the matrices."""
        heads, _ = self._check_input(x)
        layout = self.layout(x, heads)
        return MatricizeContext(tuple(x.shape), heads, window_mask(layout, x.device), layout)

    def forward(self, x: Tensor) -> tuple[Tensor, MatricizeContext]:
        """``x: (B, C, *S) -> (matrices (B·heads·Σ windows, E, ∏patch), ctx)``."""
        ctx = self.context(x)
        return to_windows(x, ctx.layout), ctx

    def lazy(self, x: Tensor) -> LazyWindows:
        """``forward(x)`` as a :class:`LazyWindows` (matrices gathered a chunk at a time)."""
        return LazyWindows(x, self.context(x))

    def inverse(self, matrices: Tensor, ctx: MatricizeContext) -> Tensor:
        """``(B', M, N) -> (B, heads·M, *S)``: each view folded back, cropped, views averaged."""
        layout: WindowLayout = ctx.layout
        check_matrices(self._name, matrices, ctx, layout.matrices, layout.columns)
        return from_windows(matrices, layout, 1.0 / len(layout.views))

    def inverse_rank1(self, u: Tensor, w: Tensor, ctx: MatricizeContext) -> Tensor:
        """``inverse(u wᵀ)`` written straight from the factors (no ``(B', M, N)`` product).

        Each voxel takes its window's ``u`` (a row lookup in a ``(B, windows, C)`` table) times
        its own entry of ``w``, averaged over the views: one pass over the output per view. The
        result is channels-last (``(B, C, *S)`` with channel stride 1). Without gradient only
        (inference); with autograd, under ``torch.compile`` or off the supported shapes the
        product is formed and folded back as in :meth:`inverse`.
        """
        layout: WindowLayout = ctx.layout
        if (
            (torch.is_grad_enabled() and (u.requires_grad or w.requires_grad))
            or torch.compiler.is_compiling()
            or u.dim() != 2
            or w.shape != (layout.matrices, layout.columns)
            or u.shape[0] != layout.matrices
        ):
            return super().inverse_rank1(u, w, ctx)
        return fold_rank1(u, w, layout)
