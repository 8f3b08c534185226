"""Inference helpers of the window views: lazy windows and the rank-1 fold.

Without autograd, a rank-1 mixer needs each window only briefly (Gram matrix, power iteration,
factors) and returns factors ``u, w`` instead of the ``(M, N)`` product. :class:`LazyWindows`
hands the windows over a chunk at a time (one reused buffer; cache-sized on the ``cpu`` backend,
everything at once on the others, where each chunk would be kernel launches), and
:func:`fold_rank1` writes ``inverse(u wᵀ)`` straight from the factors, so neither the window
tensor nor the product exists (see :meth:`~lowrank.blocks.factorizer.Factorizer._mix_inner`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._switch import backend_for

if TYPE_CHECKING:  # the matricize package imports this module: its modules are imported per call
    from ..matricize._plans import WindowLayout
    from ..matricize.base import MatricizeContext

__all__ = ["LazyWindows", "chunk_elements", "fold_rank1"]


def chunk_elements(device: torch.device) -> int:
    """Elements per chunk of the inference fold: cache-sized on the ``cpu`` backend; otherwise
    everything at once (on a GPU every chunk is a kernel launch, and the caches are not the point)."""
    from ..matricize._windows import _CHUNK_ELEMENTS

    return _CHUNK_ELEMENTS if backend_for(device) == "cpu" else 1 << 62


class LazyWindows:
    """The window matrices of ``x`` as a lazy ``(B', M, N)`` batch, gathered a chunk at a time.

    For consumers that treat the matrices independently and need each one only briefly (the
    rank-1 mixer at inference: Gram matrix, power iteration and factors of a chunk while it is
    in cache), so that the ``(B', M, N)`` tensor never exists.

    Attributes:
        shape: ``(B', M, N)``.
        ctx: the :class:`~lowrank.matricize.base.MatricizeContext` that ``forward`` would return.
    """

    def __init__(self, x: Tensor, ctx: MatricizeContext):
        layout = ctx.layout
        self.x, self.ctx, self.layout = x, ctx, layout
        self.shape = (layout.matrices, x.shape[1] // layout.heads, layout.columns)
        self.dtype, self.device = x.dtype, x.device

    def materialize(self) -> Tensor:
        """All the matrices at once: ``forward(x)[0]``."""
        from ..matricize._windows import to_windows

        return to_windows(self.x, self.layout)

    def chunks(self, max_elements: int | None = None) -> Iterator[tuple[int, Tensor]]:
        """Yield ``(start, matrices[start : start + k])`` in order, about ``max_elements`` each
        (default :func:`chunk_elements`).

        A chunk holds whole (sample, head) blocks of a view when they fit (small inputs take
        few chunks), else a run of one block's windows. The chunk is one reused buffer: use it
        (or copy it) before taking the next one.
        """
        from ..matricize._windows import gather_windows, view_index

        layout, (_, rows, columns) = self.layout, self.shape
        if max_elements is None:
            max_elements = chunk_elements(self.device)
        bh, per_window = layout.batch * layout.heads, rows * columns
        source = self.x.reshape(bh, 1, rows, -1)
        most = max(v.windows for v in layout.views) * bh * per_window
        buffer = self.x.new_empty(max(per_window, min(max_elements, most)))
        offset = 0
        for view in layout.views:
            flat, padding, _, _ = view_index(view, layout.spatial, self.device)
            windows = view.windows
            if windows * per_window <= max_elements:  # whole blocks: (n, windows) at a time
                step = max(1, max_elements // (windows * per_window))
                spans = [(b, min(step, bh - b), 0, windows) for b in range(0, bh, step)]
            else:  # runs of one block's windows
                step = max(1, max_elements // per_window)
                runs = range(0, windows, step)
                spans = [(b, 1, g, min(step, windows - g)) for b in range(bh) for g in runs]
            for b, blocks, g, n in spans:
                out = buffer[: blocks * n * per_window].view(blocks, n, rows, columns)
                pad = None if padding is None else padding[g : g + n]
                gather_windows(out, source[b : b + blocks], flat[g : g + n], pad)
                yield offset + b * windows + g, out.view(blocks * n, rows, columns)
            offset += bh * windows


def fold_rank1(u: Tensor, w: Tensor, layout: WindowLayout, max_elements: int | None = None) -> Tensor:
    """``u (B', M), w (B', N) -> mean over views of the folded u wᵀ``, ``(B, heads·M, *S)``; the
    second and later views are added through chunks of ``max_elements`` (default
    :func:`chunk_elements`)."""
    from ..matricize._windows import place_index, view_index

    batch, heads, rows = layout.batch, layout.heads, u.shape[1]
    channels, volume = heads * rows, math.prod(layout.spatial)
    out = u.new_empty((batch, volume, heads, rows))
    limit = chunk_elements(u.device) if max_elements is None else max_elements
    step = max(1, limit // (batch * channels))
    offset = 0
    for number, view in enumerate(layout.views):
        count = batch * heads * view.windows
        _, _, window, _ = view_index(view, layout.spatial, u.device)
        # u as a (B, windows, heads·M) table: each voxel looks up its window's row (channels last)
        table = u[offset : offset + count].view(batch, heads, view.windows, rows).transpose(1, 2)
        table = table.reshape(batch, view.windows, channels)
        # each voxel's own entry of w: (B·heads, windows·N) -> (B, ∏S, heads, 1)
        place = place_index(view, layout.spatial, 1, u.device)
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
