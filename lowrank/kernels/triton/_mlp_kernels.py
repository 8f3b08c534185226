# ruff: noqa: N803  (Triton convention: sizes and constexpr block sizes in capitals)
"""Triton kernels of the Factorizer's MLP branch ``y = x + W2 gelu(W1 x̂ + b1) + b2`` (``x̂`` the
channel-standardized ``x``; a LayerNorm's affine part folded into ``W1, b1`` by the caller).

One program takes a run of voxels with all their channels: the standardization, both products
(``tl.dot``) and the GELU stay in registers, so the hidden map (2C channels) never exists in
memory. Forward: read ``x``, write ``y`` (two passes over the map instead of about fifteen).
Backward: read ``x`` and ``dy``, write ``dx`` (the forward is recomputed per tile); each program
walks a strided set of tiles and writes its partial weight and bias gradients once, summed by
the caller (deterministic, no atomics). Imported at the first call of the ``triton`` backend.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["mlp_bwd", "mlp_fwd", "proj_bwd", "proj_fwd"]

_RSQRT2 = 0.7071067811865476
_RSQRT2PI = 0.3989422804014327


@triton.jit
def _tile(x_ptr, b, vb, C, V, eps, BC: tl.constexpr, BV: tl.constexpr):
    """Load ``x[b, :, vb·BV : (vb+1)·BV]`` (compute dtype) and standardize it over the channels."""
    rc = tl.arange(0, BC)
    rv = vb * BV + tl.arange(0, BV)
    ok = (rc[:, None] < C) & (rv[None, :] < V)
    offs = b * C * V + rc[:, None].to(tl.int64) * V + rv[None, :]
    x = tl.load(x_ptr + offs, mask=ok, other=0.0)
    mean = tl.sum(x, 0) / C
    d = tl.where(ok, x - mean[None, :], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, 0) / C + eps)
    return x, d * rstd[None, :], rstd, ok, offs


@triton.jit
def _weights(w1_ptr, b1_ptr, w2_ptr, C, H, BC: tl.constexpr, BH: tl.constexpr):
    rc = tl.arange(0, BC)
    rh = tl.arange(0, BH)
    w1 = tl.load(
        w1_ptr + rh[:, None] * C + rc[None, :], mask=(rh[:, None] < H) & (rc[None, :] < C), other=0.0
    )
    b1 = tl.load(b1_ptr + rh, mask=rh < H, other=0.0)
    w2 = tl.load(
        w2_ptr + rc[:, None] * H + rh[None, :], mask=(rc[:, None] < C) & (rh[None, :] < H), other=0.0
    )
    return w1, b1, w2, rc, rh


@triton.jit
def mlp_fwd(
    x_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    y_ptr,
    C,
    H,
    V,
    eps,
    BC: tl.constexpr,
    BH: tl.constexpr,
    BV: tl.constexpr,
):
    """``y (B, C, V)``; grid ``(⌈V/BV⌉, B)``."""
    b = tl.program_id(1).to(tl.int64)
    vb = tl.program_id(0).to(tl.int64)
    w1, b1, w2, rc, _ = _weights(w1_ptr, b1_ptr, w2_ptr, C, H, BC, BH)
    x, xhat, _, ok, offs = _tile(x_ptr, b, vb, C, V, eps, BC, BV)
    h = tl.dot(w1, xhat, input_precision="ieee") + b1[:, None]
    a = 0.5 * h * (1.0 + tl.math.erf(h * _RSQRT2))
    b2 = tl.load(b2_ptr + rc, mask=rc < C, other=0.0)
    y = x + tl.dot(w2, a, input_precision="ieee") + b2[:, None]
    tl.store(y_ptr + offs, y, mask=ok)


@triton.jit
def mlp_bwd(
    x_ptr, g_ptr, w1_ptr, b1_ptr, w2_ptr, dx_ptr, part_ptr, B, C, H, V, eps,
    BC: tl.constexpr, BH: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """``dx (B, C, V)`` and this program's row of ``part (P, 2HC + H + C)``: its partial sums of
    ``dW1 (H, C), db1 (H,), dW2 (C, H), db2 (C,)``; grid ``(P,)``."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    w1, b1, w2, rc, rh = _weights(w1_ptr, b1_ptr, w2_ptr, C, H, BC, BH)
    acc_w1 = tl.zeros((BH, BC), dtype=w1.dtype)
    acc_w2 = tl.zeros((BC, BH), dtype=w1.dtype)
    acc_b1 = tl.zeros((BH,), dtype=w1.dtype)
    acc_b2 = tl.zeros((BC,), dtype=w1.dtype)
    blocks = tl.cdiv(V, BV)
    for t in range(pid, B * blocks, nprog):
        b = (t // blocks).to(tl.int64)
        vb = (t % blocks).to(tl.int64)
        _, xhat, rstd, ok, offs = _tile(x_ptr, b, vb, C, V, eps, BC, BV)
        h = tl.dot(w1, xhat, input_precision="ieee") + b1[:, None]
        cdf = 0.5 * (1.0 + tl.math.erf(h * _RSQRT2))
        a = h * cdf
        g = tl.load(g_ptr + offs, mask=ok, other=0.0)
        acc_b2 += tl.sum(g, 1)
        acc_w2 += tl.dot(g, tl.trans(a), input_precision="ieee")
        dh = tl.dot(tl.trans(w2), g, input_precision="ieee") * (cdf + h * tl.exp(-0.5 * h * h) * _RSQRT2PI)
        acc_b1 += tl.sum(dh, 1)
        acc_w1 += tl.dot(dh, tl.trans(xhat), input_precision="ieee")
        dxhat = tl.dot(tl.trans(w1), dh, input_precision="ieee")
        mean_d = tl.sum(dxhat, 0) / C
        mean_dx = tl.sum(dxhat * xhat, 0) / C
        dx = (dxhat - mean_d[None, :] - xhat * mean_dx[None, :]) * rstd[None, :] + g
        tl.store(dx_ptr + offs, dx, mask=ok)
    row = part_ptr + pid.to(tl.int64) * (2 * H * C + H + C)
    tl.store(row + rh[:, None] * C + rc[None, :], acc_w1, mask=(rh[:, None] < H) & (rc[None, :] < C))
    tl.store(row + H * C + rh, acc_b1, mask=rh < H)
    tl.store(
        row + H * C + H + rc[:, None] * H + rh[None, :], acc_w2, mask=(rc[:, None] < C) & (rh[None, :] < H)
    )
    tl.store(row + 2 * H * C + H + rc, acc_b2, mask=rc < C)


@triton.jit
def _proj_weights(w_ptr, b_ptr, C, K, BC: tl.constexpr, BO: tl.constexpr):
    rc = tl.arange(0, BC)
    ro = tl.arange(0, BO)
    w = tl.load(w_ptr + ro[:, None] * C + rc[None, :], mask=(ro[:, None] < K) & (rc[None, :] < C), other=0.0)
    return w, tl.load(b_ptr + ro, mask=ro < K, other=0.0), rc, ro


@triton.jit
def proj_fwd(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    C,
    K,
    V,
    eps,
    RELU: tl.constexpr,
    BC: tl.constexpr,
    BO: tl.constexpr,
    BV: tl.constexpr,
):
    """``y = act(W x̂ + b) (B, K, V)`` (K output channels) (act ReLU or none); grid ``(⌈V/BV⌉, B)``."""
    b = tl.program_id(1).to(tl.int64)
    vb = tl.program_id(0).to(tl.int64)
    w, bias, _, ro = _proj_weights(w_ptr, b_ptr, C, K, BC, BO)
    _, xhat, _, _, _ = _tile(x_ptr, b, vb, C, V, eps, BC, BV)
    h = tl.dot(w, xhat, input_precision="ieee") + bias[:, None]
    if RELU:
        h = tl.maximum(h, 0.0)
    rv = vb * BV + tl.arange(0, BV)
    ok = (ro[:, None] < K) & (rv[None, :] < V)
    tl.store(y_ptr + b * K * V + ro[:, None].to(tl.int64) * V + rv[None, :], h, mask=ok)


@triton.jit
def proj_bwd(
    x_ptr, g_ptr, w_ptr, b_ptr, dx_ptr, part_ptr, B, C, K, V, eps,
    RELU: tl.constexpr, BC: tl.constexpr, BO: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """``dx (B, C, V)`` and this program's partial ``dW (K, C), db (K,)`` in ``part (P, OC + K)``."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    w, bias, rc, ro = _proj_weights(w_ptr, b_ptr, C, K, BC, BO)
    acc_w = tl.zeros((BO, BC), dtype=w.dtype)
    acc_b = tl.zeros((BO,), dtype=w.dtype)
    blocks = tl.cdiv(V, BV)
    for t in range(pid, B * blocks, nprog):
        b = (t // blocks).to(tl.int64)
        vb = (t % blocks).to(tl.int64)
        _, xhat, rstd, ok, offs = _tile(x_ptr, b, vb, C, V, eps, BC, BV)
        rv = vb * BV + tl.arange(0, BV)
        oky = (ro[:, None] < K) & (rv[None, :] < V)
        dh = tl.load(g_ptr + b * K * V + ro[:, None].to(tl.int64) * V + rv[None, :], mask=oky, other=0.0)
        if RELU:
            h = tl.dot(w, xhat, input_precision="ieee") + bias[:, None]
            dh = tl.where(h > 0, dh, 0.0)
        acc_b += tl.sum(dh, 1)
        acc_w += tl.dot(dh, tl.trans(xhat), input_precision="ieee")
        dxhat = tl.dot(tl.trans(w), dh, input_precision="ieee")
        mean_d = tl.sum(dxhat, 0) / C
        mean_dx = tl.sum(dxhat * xhat, 0) / C
        tl.store(dx_ptr + offs, (dxhat - mean_d[None, :] - xhat * mean_dx[None, :]) * rstd[None, :], mask=ok)
    row = part_ptr + pid.to(tl.int64) * (K * C + K)
    tl.store(row + ro[:, None] * C + rc[None, :], acc_w, mask=(ro[:, None] < K) & (rc[None, :] < C))
    tl.store(row + K * C + ro, acc_b, mask=ro < K)
