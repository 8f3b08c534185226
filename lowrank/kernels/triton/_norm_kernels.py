# ruff: noqa: N803  (Triton convention: sizes and constexpr block sizes in capitals)
"""Triton kernels of the channel LayerNorm: one program per ``(sample, run of voxels)``, all the
channels of its voxels in registers.

Forward: read ``x`` once, write ``x̂ = (x - mean) · rstd`` and ``rstd`` (per voxel). Backward:
read the output gradient and ``x̂``, write ``dx = (ĝ - mean(ĝ) - x̂ · mean(ĝ ⊙ x̂)) · rstd`` with
``ĝ = g ⊙ w`` (the per-channel scale, or ``g``): two and three passes over the map instead of
the eight and twelve of the op-by-op formula. Imported at the first call of the ``triton``
backend (it imports triton).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["standardize_bwd", "standardize_fwd"]


@triton.jit
def _tile(C, V, BC: tl.constexpr, BV: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    rc = tl.arange(0, BC)
    rv = tl.program_id(0).to(tl.int64) * BV + tl.arange(0, BV)
    ok = (rc[:, None] < C) & (rv[None, :] < V)
    return b, rc, rv, ok, b * C * V + rc[:, None].to(tl.int64) * V + rv[None, :]


@triton.jit
def standardize_fwd(x_ptr, xhat_ptr, rstd_ptr, C, V, eps, BC: tl.constexpr, BV: tl.constexpr):
    """``x (B, C, V) -> x̂ (B, C, V), rstd (B, V)``, the statistics over C in x̂'s dtype."""
    b, _, rv, ok, offs = _tile(C, V, BC, BV)
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(xhat_ptr.dtype.element_ty)
    mean = tl.sum(x, 0) / C
    d = tl.where(ok, x - mean[None, :], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, 0) / C + eps)
    tl.store(xhat_ptr + offs, d * rstd[None, :], mask=ok)
    tl.store(rstd_ptr + b * V + rv, rstd, mask=rv < V)


@triton.jit
def standardize_bwd(
    g_ptr, xhat_ptr, rstd_ptr, w_ptr, dx_ptr, C, V, HAS_W: tl.constexpr, BC: tl.constexpr, BV: tl.constexpr
):
    """``dx (B, C, V)`` from the output gradient ``g`` of ``w ⊙ x̂`` (``w (C,)`` if ``HAS_W``)."""
    b, rc, rv, ok, offs = _tile(C, V, BC, BV)
    xhat = tl.load(xhat_ptr + offs, mask=ok, other=0.0)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(xhat.dtype)
    if HAS_W:
        g = g * tl.load(w_ptr + rc, mask=rc < C, other=0.0).to(xhat.dtype)[:, None]
    mean_g = tl.sum(g, 0) / C
    mean_gx = tl.sum(g * xhat, 0) / C
    rstd = tl.load(rstd_ptr + b * V + rv, mask=rv < V, other=0.0)
    dx = (g - mean_g[None, :] - xhat * mean_gx[None, :]) * rstd[None, :]
    tl.store(dx_ptr + offs, dx, mask=ok)
