# ruff: noqa: N803  (Triton convention: sizes and constexpr block sizes in capitals)
"""Triton kernel of the window fold of two views (``swin``): ``out = scale · (view0 + view1)`` read
back to voxel order, in one pass (both views' matrices read once, the map written once; the
eager path is two gathers, a full-size temporary and an in-place add). Imported at the first call
of the ``triton`` backend."""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["window_sum2"]


@triton.jit
def window_sum2(
    src_ptr, p0_ptr, p1_ptr, out_ptr, off0, per0, n0, off1, per1, n1, M, V, scale,
    BM: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """``out[bh, m, v] = scale · (src[off0 + bh·per0 + m·n0 + p0[v]] + src[off1 + bh·per1 + m·n1 + p1[v]])``;
    grid ``(⌈V/BV⌉, B·heads)``."""
    bh = tl.program_id(1).to(tl.int64)
    rv = tl.program_id(0).to(tl.int64) * BV + tl.arange(0, BV)
    okv = rv < V
    p0 = tl.load(p0_ptr + rv, mask=okv, other=0)
    p1 = tl.load(p1_ptr + rv, mask=okv, other=0)
    rm = tl.arange(0, BM)
    for m0 in range(0, M, BM):
        m = (m0 + rm).to(tl.int64)
        ok = (m[:, None] < M) & okv[None, :]
        a = tl.load(src_ptr + off0 + bh * per0 + m[:, None] * n0 + p0[None, :], mask=ok, other=0.0)
        b = tl.load(src_ptr + off1 + bh * per1 + m[:, None] * n1 + p1[None, :], mask=ok, other=0.0)
        if src_ptr.dtype.element_ty != tl.float64:  # half inputs: add in float32, store rounded
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        value = ((a + b) * scale).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + bh * M * V + m[:, None] * V + rv[None, :], value, mask=ok)
