"""Window plans shared by ``local`` and ``swin`` (pure Python geometry; the copies are in ``_windows``).

A *view* tiles the spatial axes with windows of ``patch`` voxels. Per axis, the input (size ``S``)
is placed in a zero-padded frame of ``grid * patch`` positions at an offset (the *shift*):

- non-wrapping (default): frame position ``j`` holds voxel ``j - shift`` (zero outside the input),
  frame length ``ceil((S + shift) / patch) * patch``; every window holds contiguous voxels only;
- cyclic: the input is zero-padded to ``ceil(S / patch) * patch`` and rolled by ``shift``
  (``torch.roll`` semantics), as in the Factorizer reference; windows at the border mix voxels
  of opposite faces.

Each axis is described by *runs* (``frame start, input start, length``), cut at window borders
into *pieces* (``_windows`` copies them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Piece", "AxisPlan", "ViewPlan", "WindowLayout", "plan_axis"]

Piece = tuple[int, int, int, int, int]  # (window start, windows, offset in window, length, input start)


def _split(start: int, length: int, patch: int) -> list[tuple[int, int, int, int, int]]:
    """Cut the frame interval ``[start, start + length)`` at window borders.

    Returns:
        ``(g0, ng, p0, np, offset)`` pieces: windows ``g0 … g0+ng-1``, positions ``p0 … p0+np-1`` in
        each, starting ``offset`` positions into the interval (``ng > 1`` only for whole windows).
    """
    pieces, off = [], 0
    while off < length:
        g, p = divmod(start + off, patch)
        if p == 0 and length - off >= patch:
            ng = (length - off) // patch
            pieces.append((g, ng, 0, patch, off))
            off += ng * patch
        else:
            n = min(patch - p, length - off)
            pieces.append((g, 1, p, n, off))
            off += n
    return pieces


@dataclass(frozen=True)
class AxisPlan:
    """How one spatial axis of one view is tiled.

    Attributes:
        size: input size ``S`` on this axis.
        patch: window size on this axis.
        grid: number of windows on this axis.
        runs: ``(frame start, input start, length)`` intervals of input voxels in the frame.
        shift: the view's offset on this axis.
        cyclic: whether the frame wraps around (roll) instead of zero padding.
    """

    size: int
    patch: int
    grid: int
    runs: tuple[tuple[int, int, int], ...]
    shift: int = 0
    cyclic: bool = False

    @property
    def frame(self) -> int:
        """The padded frame length ``grid * patch``."""
        return self.grid * self.patch

    @property
    def padded(self) -> bool:
        """Whether some frame position holds no input voxel."""
        return sum([n for _, _, n in self.runs]) != self.frame

    def pieces(self) -> tuple[Piece, ...]:
        """The input runs cut at window borders: ``(g0, ng, p0, np, input start)``."""
        return tuple(
            [
                (g0, ng, p0, n, src + off)
                for dst, src, length in self.runs
                for g0, ng, p0, n, off in _split(dst, length, self.patch)
            ]
        )

    def gaps(self) -> tuple[tuple[int, int, int, int], ...]:
        """The padding positions cut at window borders: ``(g0, ng, p0, np)``."""
        gaps, pos = [], 0
        for dst, _, length in sorted(self.runs):
            if dst > pos:
                gaps.append((pos, dst - pos))
            pos = max(pos, dst + length)
        if pos < self.frame:
            gaps.append((pos, self.frame - pos))
        return tuple([piece[:4] for start, n in gaps for piece in _split(start, n, self.patch)])


def plan_axis(size: int, patch: int, shift: int, cyclic: bool) -> AxisPlan:
    """The :class:`AxisPlan` of an axis of ``size`` voxels, windows of ``patch``, offset ``shift``."""
    if cyclic:
        frame = -(-size // patch) * patch
        runs = []
        head = min(size, frame - shift)
        if head > 0:
            runs.append((shift, 0, head))
        if size > frame - shift:
            runs.append((0, frame - shift, size - (frame - shift)))
    else:
        frame = -(-(size + shift) // patch) * patch
        runs = [(shift, 0, size)]
    return AxisPlan(size, patch, frame // patch, tuple(sorted(runs)), shift, cyclic)


@dataclass(frozen=True)
class ViewPlan:
    """One tiling of the spatial axes (one shift)."""

    axes: tuple[AxisPlan, ...]

    @property
    def windows(self) -> int:
        """Number of windows ``∏ grid``."""
        return math.prod([a.grid for a in self.axes])

    @property
    def columns(self) -> int:
        """Voxels per window ``∏ patch``."""
        return math.prod([a.patch for a in self.axes])

    @property
    def padded(self) -> bool:
        """Whether some window column is padding."""
        return any([a.padded for a in self.axes])


@dataclass(frozen=True)
class WindowLayout:
    """The matrices' layout: view-major, then batch, head, window (row-major over the grid).

    Attributes:
        batch: ``B``.
        heads: channel groups.
        spatial: the input's spatial size ``S``.
        views: one :class:`ViewPlan` per shift.
    """

    batch: int
    heads: int
    spatial: tuple[int, ...]
    views: tuple[ViewPlan, ...]

    @property
    def matrices(self) -> int:
        """``B' = B * heads * Σ_views windows``."""
        return self.batch * self.heads * sum([v.windows for v in self.views])

    @property
    def columns(self) -> int:
        """``N = ∏ patch``."""
        return self.views[0].columns

    @property
    def padded(self) -> bool:
        """Whether any column of any view is padding."""
        return any([v.padded for v in self.views])
