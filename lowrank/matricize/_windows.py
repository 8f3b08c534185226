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

import torch
from torch import Tensor

from ._plans import AxisPlan, ViewPlan, WindowLayout, plan_axis

__all__ = [
    "AxisPlan",
    "ViewPlan",
    "WindowLayout",
    "plan_axis",
    "to_windows",
    "from_windows",
    "window_mask",
    "gather_windows",
    "place_index",
    "view_index",
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


@functools.lru_cache(maxsize=64)
def view_index(view: ViewPlan, spatial: tuple[int, ...], device: torch.device) -> tuple[Tensor, ...]:
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


@functools.lru_cache(maxsize=64)
def place_index(view: ViewPlan, spatial: tuple[int, ...], rows: int, device: torch.device) -> Tensor:
    """``(∏ S,)`` int64: the position ``g·rows·N + n`` of each voxel's column in its view block."""
    _, _, window, column = view_index(view, spatial, device)
    return window.to(torch.int64) * (rows * view.columns) + column


def gather_windows(out: Tensor, source: Tensor, flat: Tensor, padding: Tensor | None) -> None:
    """``out (k, n, M, N)`` ← the windows ``flat (n, N)`` of ``source (k, 1, M, ∏S)``, zeros on padding.

    ``flat`` and ``padding`` are (row ranges of) a view's cached index (:func:`view_index`).
    """
    k, n, rows, columns = out.shape
    index = flat.view(1, n, 1, columns).expand(k, -1, rows, -1)
    torch.gather(source.expand(-1, n, -1, -1), 3, index, out=out)
    if padding is not None:
        out.masked_fill_(padding.view(1, n, 1, columns), 0)


def _scatter(x: Tensor, layout: WindowLayout, scale: float) -> Tensor:
    """``(B, heads·M, *S) -> scale · matrices (B', M, N)``, zeros on padding (one gather per view).

    The scale multiplies the matrices on the ``cpu`` kernel backend (in place, in cache after the
    gathers), the input elsewhere (one pass over the map instead of one over every view's copy).
    """
    from ..kernels._switch import backend_for  # the kernel package imports this module's package

    bh = layout.batch * layout.heads
    rows = x.shape[1] // layout.heads
    volume = math.prod(layout.spatial)
    out = x.new_empty((layout.matrices, rows, layout.columns))
    if scale != 1.0 and len(layout.views) > 1 and backend_for(x.device) != "cpu":
        x, scale = x * scale, 1.0
    source = x.reshape(bh, 1, rows, volume)
    offset = 0
    for view in layout.views:
        count = bh * view.windows
        block = out[offset : offset + count].view(bh, view.windows, rows, view.columns)
        flat, padding, _, _ = view_index(view, layout.spatial, x.device)
        gather_windows(block, source, flat, padding)
        offset += count
    if scale != 1.0:
        out.mul_(scale)
    return out


_CHUNK_ELEMENTS = 1 << 20  # the second and later views are gathered through a reused chunk this size


def _gather_sum(matrices: Tensor, layout: WindowLayout, scale: float) -> Tensor:
    """``(B', M, N) -> scale · Σ_views (B, heads·M, *S)`` (padding columns dropped; one gather per view).

    The first view is gathered into the output and the others added (two views with
    ``scale = 1/2``: one ``lerp``, the mean in one pass). On the ``cpu`` kernel backend the later
    views go through a small chunk that stays in cache (no second full-size temporary); elsewhere
    each is one gather and one add (on a GPU each chunk would be kernel launches).
    """
    from ..kernels._switch import backend_for  # the kernel package imports this module's package

    bh = layout.batch * layout.heads
    rows = matrices.shape[1]
    volume = math.prod(layout.spatial)
    flat = matrices.contiguous()
    backend = backend_for(matrices.device, triton_ok=len(layout.views) == 2 and matrices.is_floating_point())
    if backend == "triton":  # one kernel: both views read, the map written once
        return _gather_sum2(flat, layout, scale)
    out = flat.new_empty((bh, rows, volume))
    mean = len(layout.views) == 2 and scale == 0.5
    step = max(1, _CHUNK_ELEMENTS // (bh * rows)) if backend == "cpu" else volume
    offset = 0
    for number, view in enumerate(layout.views):
        count = bh * view.windows
        size = count * rows * view.columns
        per = view.windows * rows * view.columns  # one (batch, head)'s block
        # row m of (b, h) starts m·N into the block: a strided view, read at g·rows·N + n
        source = flat.view(-1)[offset * rows * view.columns : offset * rows * view.columns + size]
        source = source.as_strided((bh, rows, per - (rows - 1) * view.columns), (per, view.columns, 1))
        index = (
            place_index(view, layout.spatial, rows, matrices.device).view(1, 1, volume).expand(bh, rows, -1)
        )
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


def _gather_sum2(flat: Tensor, layout: WindowLayout, scale: float) -> Tensor:
    """:func:`_gather_sum` of two views as one Triton kernel (``lowrank::window_sum2``)."""
    from ..kernels.triton.window_ops import window_sum2

    bh, rows = layout.batch * layout.heads, flat.shape[1]
    (v0, v1), device = layout.views, flat.device
    per0, per1 = v0.windows * rows * v0.columns, v1.windows * rows * v1.columns
    geometry = [0, per0, v0.columns, bh * per0, per1, v1.columns]
    place0 = place_index(v0, layout.spatial, rows, device)
    place1 = place_index(v1, layout.spatial, rows, device)
    out = window_sum2(flat, place0, place1, geometry, bh, rows, scale)
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
