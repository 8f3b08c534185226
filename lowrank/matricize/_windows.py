"""The window maps of ``local`` and ``swin``: one gather per view, no rolled or padded intermediate.

The geometry (views, frames, runs) is in :mod:`lowrank.matricize._plans`. Each view's matrices
are gathered straight from the input with ``torch.gather`` and a cached ``(G, N)`` voxel index
broadcast over batch, heads and rows (one pass over the data per view, whatever the shift, the
wrap-around or the padding; the padding columns are then zeroed); the way back gathers each
voxel's column from each view with a cached ``(∏ S,)`` index and sums the views. The two maps
are adjoint, so each one's backward is the other (custom autograd functions: the eager backward
is a single pass too, and double backward works). The indices are ``O(∏ S)`` integers per view
and spatial size (not per channel or sample), cached per device. Under ``torch.compile`` a
functional form (pad/roll, reshape, permute, crop) is traced instead, which Inductor fuses.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._plans import AxisPlan, ViewPlan, WindowLayout, plan_axis
from .base import Matricize, MatricizeContext, check_matrices, per_axis

__all__ = [
    "AxisPlan",
    "ViewPlan",
    "WindowLayout",
    "WindowMatricize",
    "plan_axis",
    "to_windows",
    "from_windows",
    "window_mask",
]


def _window_view(block: Tensor, layout: WindowLayout, view: ViewPlan) -> Tensor:
    """``(B·heads·G, M, N)`` -> the strided view ``(B, heads, M, g1, p1, …, gd, pd)``."""
    d = len(view.axes)
    shaped = block.reshape(
        layout.batch,
        layout.heads,
        *[a.grid for a in view.axes],
        block.shape[1],
        *[a.patch for a in view.axes],
    )
    perm = [0, 1, 2 + d]
    for a in range(d):
        perm += [2 + a, 3 + d + a]
    return shaped.permute(perm)


@functools.lru_cache(maxsize=16)
def _view_index(view: ViewPlan, spatial: tuple[int, ...], device: torch.device) -> tuple[Tensor, ...]:
    """The index tensors of one view (cached; ``O(∏ S)`` int64, independent of batch and channels).

    Returns:
        ``(flat, padding, window, column)``: ``flat (G, N)``, the flat voxel index of each window
        column (0 on padding); ``padding (G, N)`` bool, True on the padding columns, or ``None``;
        ``window`` and ``column (∏ S,)``, the window and column that hold each voxel.
    """
    cpu = torch.device("cpu")  # built on the CPU (also under a meta-device context), then moved
    d = len(view.axes)
    strides = [math.prod(spatial[a + 1 :]) for a in range(d)]
    flat = torch.zeros((1,) * (2 * d), dtype=torch.int64, device=cpu)
    valid = torch.ones((1,) * (2 * d), dtype=torch.bool, device=cpu)
    for a, axis in enumerate(view.axes):
        line = torch.full((axis.frame,), -1, dtype=torch.int64, device=cpu)
        for dst, src, n in axis.runs:
            line[dst : dst + n] = torch.arange(src, src + n, device=cpu)
        shape = [1] * (2 * d)
        shape[a], shape[d + a] = axis.grid, axis.patch
        line = line.view(shape)
        flat = flat + line.clamp_min(0) * strides[a]
        valid = valid & (line >= 0)
    full = [a.grid for a in view.axes] + [a.patch for a in view.axes]
    flat = flat.expand(full).reshape(view.windows, view.columns)
    valid = valid.expand(full).reshape(view.windows, view.columns)
    window = torch.arange(view.windows, device=cpu).view(-1, 1).expand(-1, view.columns)[valid]
    column = torch.arange(view.columns, device=cpu).view(1, -1).expand(view.windows, -1)[valid]
    voxels = flat[valid]
    place_window = torch.empty(math.prod(spatial), dtype=torch.int32, device=cpu)
    place_column = torch.empty(math.prod(spatial), dtype=torch.int32, device=cpu)
    place_window[voxels] = window.to(torch.int32)
    place_column[voxels] = column.to(torch.int32)
    padding = None if bool(valid.all()) else ~valid
    out = (flat, padding, place_window, place_column)
    return tuple([t.to(device) if t is not None else None for t in out])


@functools.lru_cache(maxsize=16)
def _place(view: ViewPlan, spatial: tuple[int, ...], rows: int, device: torch.device) -> Tensor:
    """``(∏ S,)`` int64: the position ``g·rows·N + n`` of each voxel's column in its view block."""
    _, _, window, column = _view_index(view, spatial, device)
    return window.to(torch.int64) * (rows * view.columns) + column


def _scatter(x: Tensor, layout: WindowLayout, scale: float) -> Tensor:
    """``(B, heads·M, *S) -> scale · matrices (B', M, N)``, zeros on padding (one gather per view)."""
    bh = layout.batch * layout.heads
    rows = x.shape[1] // layout.heads
    volume = math.prod(layout.spatial)
    out = x.new_empty((layout.matrices, rows, layout.columns))
    source = x.reshape(bh, 1, rows, volume)
    offset = 0
    for view in layout.views:
        count = bh * view.windows
        block = out[offset : offset + count].view(bh, view.windows, rows, view.columns)
        flat, padding, _, _ = _view_index(view, layout.spatial, x.device)
        index = flat.view(1, view.windows, 1, view.columns).expand(bh, -1, rows, -1)
        torch.gather(source.expand(-1, view.windows, -1, -1), 3, index, out=block)
        if padding is not None:
            block.masked_fill_(padding.view(1, view.windows, 1, view.columns), 0)
        offset += count
    if scale != 1.0:
        out.mul_(scale)
    return out


_CHUNK_ELEMENTS = 1 << 20  # the second and later views are gathered through a reused chunk this size


def _gather_sum(matrices: Tensor, layout: WindowLayout, scale: float) -> Tensor:
    """``(B', M, N) -> scale · Σ_views (B, heads·M, *S)`` (padding columns dropped; one gather per view).

    The first view is gathered into the output; the others through a small chunk that stays in
    cache (no second full-size temporary) and are added (two views with ``scale = 1/2``: one
    ``lerp``, the mean in one pass).
    """
    bh = layout.batch * layout.heads
    rows = matrices.shape[1]
    volume = math.prod(layout.spatial)
    flat = matrices.contiguous()
    out = flat.new_empty((bh, rows, volume))
    mean = len(layout.views) == 2 and scale == 0.5
    step = max(1, _CHUNK_ELEMENTS // (bh * rows))
    offset = 0
    for number, view in enumerate(layout.views):
        count = bh * view.windows
        size = count * rows * view.columns
        per = view.windows * rows * view.columns  # one (batch, head)'s block
        # row m of (b, h) starts m·N into the block: a strided view, read at g·rows·N + n
        source = flat.view(-1)[offset * rows * view.columns : offset * rows * view.columns + size]
        source = source.as_strided((bh, rows, per - (rows - 1) * view.columns), (per, view.columns, 1))
        index = _place(view, layout.spatial, rows, matrices.device).view(1, 1, volume).expand(bh, rows, -1)
        if number == 0:
            torch.gather(source, 2, index, out=out)
        else:
            for start in range(0, volume, step):
                part = torch.gather(source, 2, index[..., start : start + step])
                dst = out[..., start : start + step]
                if mean:
                    dst.lerp_(part, 0.5)
                else:
                    dst.add_(part)
        offset += count
    if scale != 1.0 and not mean:
        out.mul_(scale)
    return out.view(layout.batch, layout.heads * rows, *layout.spatial)


def _frame(x: Tensor, view: ViewPlan) -> Tensor:
    """``(…, *S) -> (…, *frame)``: the view's padded (and, if cyclic, rolled) frame (functional)."""
    d = len(view.axes)
    pads: list[int] = []
    for axis in reversed(view.axes):
        front = 0 if axis.cyclic else axis.shift
        pads += [front, axis.frame - axis.size - front]
    if any([p != 0 for p in pads]):
        x = torch.nn.functional.pad(x, pads)
    shifts = [a.shift for a in view.axes if a.cyclic]
    if shifts and any([s != 0 for s in shifts]):
        x = torch.roll(x, [a.shift for a in view.axes], list(range(x.dim() - d, x.dim())))
    return x


def _unframe(x: Tensor, view: ViewPlan) -> Tensor:
    """The inverse of :func:`_frame`: roll back and crop ``(…, *frame) -> (…, *S)``."""
    d = len(view.axes)
    dims = list(range(x.dim() - d, x.dim()))
    if any([a.cyclic and a.shift != 0 for a in view.axes]):
        x = torch.roll(x, [-a.shift if a.cyclic else 0 for a in view.axes], dims)
    for dim, axis in zip(dims, view.axes, strict=True):
        start = 0 if axis.cyclic else axis.shift
        if start != 0 or axis.size != axis.frame:
            x = x.narrow(dim, start, axis.size)
    return x


def _scatter_functional(x: Tensor, layout: WindowLayout, scale: float) -> Tensor:
    """:func:`_scatter` from pad, roll, reshape and permute (what ``torch.compile`` fuses)."""
    rows = x.shape[1] // layout.heads
    d = len(layout.spatial)
    perm = [0, 1, *[3 + 2 * a for a in range(d)], 2, *[4 + 2 * a for a in range(d)]]
    blocks = []
    for view in layout.views:
        framed = _frame(x, view).reshape(
            layout.batch, layout.heads, rows, *[n for a in view.axes for n in (a.grid, a.patch)]
        )
        blocks.append(framed.permute(perm).reshape(-1, rows, view.columns))
    out = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
    return out * scale if scale != 1.0 else out


def _gather_functional(matrices: Tensor, layout: WindowLayout, scale: float) -> Tensor:
    """:func:`_gather_sum` from reshape, permute, roll and crop (what ``torch.compile`` fuses)."""
    rows = matrices.shape[1]
    out = None
    offset = 0
    for view in layout.views:
        count = layout.batch * layout.heads * view.windows
        windows = _window_view(matrices[offset : offset + count], layout, view)
        framed = windows.reshape(layout.batch, layout.heads * rows, *[a.frame for a in view.axes])
        part = _unframe(framed, view)
        out = part if out is None else out + part
        offset += count
    assert out is not None
    return out * scale if scale != 1.0 else out


class _ToWindows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, layout: WindowLayout, scale: float) -> Tensor:
        ctx.layout, ctx.scale = layout, scale
        return _scatter(x, layout, scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _FromWindows.apply(grad, ctx.layout, ctx.scale), None, None


class _FromWindows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, matrices: Tensor, layout: WindowLayout, scale: float) -> Tensor:
        ctx.layout, ctx.scale = layout, scale
        return _gather_sum(matrices, layout, scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _ToWindows.apply(grad, ctx.layout, ctx.scale), None, None


def to_windows(x: Tensor, layout: WindowLayout, scale: float = 1.0) -> Tensor:
    """``x: (B, heads·M, *S) -> (B', M, N)`` windows of every view (zeros on padding), times ``scale``."""
    if torch.compiler.is_compiling():
        return _scatter_functional(x, layout, scale)
    return _ToWindows.apply(x, layout, scale)


def from_windows(matrices: Tensor, layout: WindowLayout, scale: float = 1.0) -> Tensor:
    """``(B', M, N) -> (B, heads·M, *S)``: ``scale`` times the sum over views (padding dropped)."""
    if torch.compiler.is_compiling():
        return _gather_functional(matrices, layout, scale)
    return _FromWindows.apply(matrices, layout, scale)


def _fold_rank1(u: Tensor, w: Tensor, layout: WindowLayout) -> Tensor:
    """``u (B', M), w (B', N) -> mean over views of the folded u wᵀ``, ``(B, heads·M, *S)``."""
    batch, heads, rows = layout.batch, layout.heads, u.shape[1]
    channels, volume = heads * rows, math.prod(layout.spatial)
    out = u.new_empty((batch, volume, heads, rows))
    step = max(1, _CHUNK_ELEMENTS // (batch * channels))
    offset = 0
    for number, view in enumerate(layout.views):
        count = batch * heads * view.windows
        _, _, window, _ = _view_index(view, layout.spatial, u.device)
        # u as a (B, windows, heads·M) table: each voxel looks up its window's row (channels last)
        table = u[offset : offset + count].view(batch, heads, view.windows, rows).transpose(1, 2)
        table = table.reshape(batch, view.windows, channels)
        # each voxel's own entry of w: (B·heads, windows·N) -> (B, ∏S, heads, 1)
        place = _place(view, layout.spatial, 1, u.device)
        entry = w[offset : offset + count].reshape(batch * heads, -1).index_select(1, place)
        entry = entry.view(batch, heads, volume).transpose(1, 2).contiguous().unsqueeze(-1)
        if number == 0:  # straight into the output
            torch.index_select(table, 1, window, out=out.view(batch, volume, channels))
            out.mul_(entry)
        else:  # through one reused chunk that stays in cache: no second output-sized temporary
            part = u.new_empty((batch, min(step, volume), channels))
            for start in range(0, volume, step):
                ids, stop = window[start : start + step], start + step
                piece = part if len(ids) == part.shape[1] else part.new_empty((batch, len(ids), channels))
                torch.index_select(table, 1, ids, out=piece)
                out[:, start:stop].addcmul_(piece.view(batch, -1, heads, rows), entry[:, start:stop])
        offset += count
    if len(layout.views) > 1:
        out.mul_(1.0 / len(layout.views))
    # channels last: (B, ∏S, C) seen as (B, C, *S) with channel stride 1
    return out.view(batch, volume, channels).transpose(1, 2).view(batch, channels, *layout.spatial)


def _view_valid(view: ViewPlan, device: torch.device) -> Tensor:
    """``(G, N)`` bool: which window columns of one view hold an input voxel."""
    d = len(view.axes)
    valid = torch.ones((1,) * (2 * d), dtype=torch.bool, device=device)
    for a, axis in enumerate(view.axes):
        if not axis.padded:
            continue
        line = [False] * axis.frame
        for dst, _, n in axis.runs:
            line[dst : dst + n] = [True] * n
        shape = [1] * (2 * d)
        shape[a], shape[d + a] = axis.grid, axis.patch
        valid = valid & torch.tensor(line, dtype=torch.bool, device=device).view(shape)
    full = valid.expand(*[a.grid for a in view.axes], *[a.patch for a in view.axes])
    return full.reshape(view.windows, view.columns)


def window_mask(layout: WindowLayout, device: torch.device) -> Tensor | None:
    """``(B', N)`` bool, True on the columns that hold an input voxel; None if none is padding."""
    if not layout.padded:
        return None
    out = torch.empty((layout.matrices, layout.columns), dtype=torch.bool, device=device)
    offset = 0
    for view in layout.views:
        count = layout.batch * layout.heads * view.windows
        block = out[offset : offset + count].view(layout.batch * layout.heads, view.windows, view.columns)
        if view.padded:
            block.copy_(_view_valid(view, device))
        else:
            block.fill_(True)
        offset += count
    return out


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

    def forward(self, x: Tensor) -> tuple[Tensor, MatricizeContext]:
        """``x: (B, C, *S) -> (matrices (B·heads·Σ windows, E, ∏patch), ctx)``."""
        heads, _ = self._check_input(x)
        layout = self.layout(x, heads)
        matrices = to_windows(x, layout)
        ctx = MatricizeContext(tuple(x.shape), heads, window_mask(layout, x.device), layout)
        return matrices, ctx

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
        return _fold_rank1(u, w, layout)
