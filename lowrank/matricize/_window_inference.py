"""Inference helpers of the window views: lazy windows and the rank-1 fold.

Without autograd, a rank-1 mixer needs each window only briefly (Gram matrix, power iteration,
factors) and returns factors ``u, w`` instead of the ``(M, N)`` product. :class:`LazyWindows`
hands the windows over a cache-sized chunk at a time (one reused buffer), and
:func:`fold_rank1` writes ``inverse(u wᵀ)`` straight from the factors, so neither the window
tensor nor the product exists (see :meth:`~lowrank.blocks.factorizer.Factorizer._mix_inner`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from ._plans import WindowLayout
from ._windows import _CHUNK_ELEMENTS, _place, _view_index, gather_windows, to_windows
from .base import MatricizeContext

__all__ = ["LazyWindows", "fold_rank1"]


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
        layout: WindowLayout = ctx.layout
        self.x, self.ctx, self.layout = x, ctx, layout
        self.shape = (layout.matrices, x.shape[1] // layout.heads, layout.columns)
        self.dtype, self.device = x.dtype, x.device

    def materialize(self) -> Tensor:
        """All the matrices at once: ``forward(x)[0]``."""
        return to_windows(self.x, self.layout)

    def chunks(self, max_elements: int = _CHUNK_ELEMENTS) -> Iterator[tuple[int, Tensor]]:
        """Yield ``(start, matrices[start : start + k])`` in order, about ``max_elements`` each.

        A chunk holds whole (sample, head) blocks of a view when they fit (small inputs take
        few chunks), else a run of one block's windows. The chunk is one reused buffer: use it
        (or copy it) before taking the next one.
        """
        layout, (_, rows, columns) = self.layout, self.shape
        bh, per_window = layout.batch * layout.heads, rows * columns
        source = self.x.reshape(bh, 1, rows, -1)
        most = max(v.windows for v in layout.views) * bh * per_window
        buffer = self.x.new_empty(max(per_window, min(max_elements, most)))
        offset = 0
        for view in layout.views:
            flat, padding, _, _ = _view_index(view, layout.spatial, self.device)
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


def fold_rank1(u: Tensor, w: Tensor, layout: WindowLayout) -> Tensor:
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
