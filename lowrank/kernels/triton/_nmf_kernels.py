# ruff: noqa: N803  (Triton convention: sizes and constexpr block sizes in capitals)
"""Triton kernels of the NMF layer: one program per matrix, X held in registers.

Imported only when the ``triton`` backend runs (it imports triton). Each program loads its
matrix ``X (M, N)`` once, runs every iteration on the tile and the small factors, and writes the
result once, so T iterations cost two passes over X (forward) and three (backward: X and the
output gradient in, ``dX`` out) instead of 2T+.

Backward (hand-written): the iterates are not stored; the program re-runs the forward from
``U0`` up to each step it differentiates (in registers, O(T²) small products, no memory
traffic), then applies that step's adjoint. The formulas (``s = 1/max|X|`` constant, ``Xp`` =
X for the U update and Xᵀ for the V update, ``A = s Xp H``, ``B = HᵀH``):

* MU ``W' = W ⊙ A ⊘ D``, ``D = W B + eps``: ``dW = G ⊙ A ⊘ D + dD B``, ``dA = G ⊙ W ⊘ D``,
  ``dD = −G ⊙ W' ⊘ D``, ``dB = Wᵀ dD``;
* HALS, reverse over the columns r = R−1..0 with ``g`` the running gradient of the new W:
  ``ĝ_r = g_r [W'_r > 0] inv_r``, ``dA_r = ĝ_r``, ``dB_rr −= Σ ĝ_r W'_r`` (the 1/B_rr path),
  and for l ≠ r ``dB_lr −= Σ W_l ĝ_r``, ``g_l −= B_lr ĝ_r`` (W_l the new column for l < r, the
  old one for l > r, whose gradient goes to ``dW``);
* then ``dXp += s dA Hᵀ`` and ``dH += s Xpᵀ dA + H (dB + dBᵀ)``.

Rank 1 is the scaled power iteration of :func:`lowrank.kernels.reference.nmf_rank1`, whose
adjoint is written out in :func:`rank1_bwd`.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["nmf_fwd", "nmf_bwd", "rank1_fwd", "rank1_bwd"]


@triton.jit
def _load_x(x_ptr, pid, M, N, BM: tl.constexpr, BN: tl.constexpr):
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    ok = (rm[:, None] < M) & (rn[None, :] < N)
    x = tl.load(x_ptr + pid * M * N + rm[:, None] * N + rn[None, :], mask=ok, other=0.0)
    amax = tl.max(tl.max(tl.abs(x), 1), 0)
    s = tl.where(amax > 0, 1.0 / tl.where(amax > 0, amax, 1.0), 1.0)
    return x, s, rm, rn, ok


# ----------------------------------------------------------------------------------------- rank 1
@triton.jit
def _power_step(xs, u, delta):
    v = tl.sum(xs * u[:, None], 0)
    w = tl.sum(xs * v[None, :], 1)
    r = tl.maximum(w, 0.0)
    n = tl.sqrt(tl.sum(r * r, 0) + delta)
    return r / n, v, w, n


@triton.jit
def rank1_fwd(x_ptr, u0_ptr, out_ptr, u_ptr, M, N, T, delta, BM: tl.constexpr, BN: tl.constexpr):
    """``out = u (uᵀX) / (‖u‖² + δ)`` after T steps ``u ← relu(X̃X̃ᵀu)/‖·‖`` from ``u0``."""
    pid = tl.program_id(0)
    x, s, rm, rn, ok = _load_x(x_ptr, pid, M, N, BM, BN)
    xs = x * s
    u = tl.load(u0_ptr + pid * M + rm, mask=rm < M, other=0.0).to(x.dtype)
    for _ in range(T):
        u, _v, _w, _n = _power_step(xs, u, delta)
    a = tl.sum(u * u, 0) + delta
    y = tl.sum(x * u[:, None], 0) / a
    tl.store(out_ptr + pid * M * N + rm[:, None] * N + rn[None, :], u[:, None] * y[None, :], mask=ok)
    tl.store(u_ptr + pid * M + rm, u, mask=rm < M)


@triton.jit
def rank1_bwd(
    x_ptr, u0_ptr, g_ptr, dx_ptr, du0_ptr, M, N, T, DIFF, delta, BM: tl.constexpr, BN: tl.constexpr
):
    """``(dX, du0)`` of :func:`rank1_fwd` for the output gradient ``G``; the last ``DIFF`` steps
    are differentiated (the first of them with a detached ``v`` when ``DIFF < T``)."""
    pid = tl.program_id(0)
    x, s, rm, rn, ok = _load_x(x_ptr, pid, M, N, BM, BN)
    xs = x * s
    g = tl.load(g_ptr + pid * M * N + rm[:, None] * N + rn[None, :], mask=ok, other=0.0).to(x.dtype)
    u0 = tl.load(u0_ptr + pid * M + rm, mask=rm < M, other=0.0).to(x.dtype)
    u = u0
    for _ in range(T):
        u, _v, _w, _n = _power_step(xs, u, delta)
    # out = u yᵀ with y = Xᵀu / a, a = ‖u‖² + δ
    a = tl.sum(u * u, 0) + delta
    y = tl.sum(x * u[:, None], 0) / a
    ybar = tl.sum(g * u[:, None], 0)  # Gᵀu
    ubar = tl.sum(g * y[None, :], 1) + tl.sum(x * ybar[None, :], 1) / a
    ubar = ubar - 2.0 * tl.sum(u * tl.sum(x * ybar[None, :], 1), 0) / (a * a) * u
    dx = u[:, None] * ybar[None, :] / a  # d(out)/dX through y (X unscaled)
    dxs = tl.zeros_like(x)  # gradient w.r.t. X̃ = sX
    for i in range(DIFF):
        t = T - 1 - i  # differentiate step t (0-based): u_{t+1} from u_t
        ut = u0
        for _ in range(t):
            ut, _v, _w, _n = _power_step(xs, ut, delta)
        unew, v, w, n = _power_step(xs, ut, delta)
        # u' = relu(w) / n: r̄ = (ū − (ū·u') u') / n, w̄ = r̄ [w >= 0]
        rbar = (ubar - tl.sum(ubar * unew, 0) * unew) / n
        wbar = tl.where(w >= 0, rbar, 0.0)
        # w = X̃ v, v = X̃ᵀ u_t
        dxs += wbar[:, None] * v[None, :]
        vbar = tl.sum(xs * wbar[:, None], 0)
        detached = (i == DIFF - 1) & (DIFF < T)
        keep = tl.where(detached, 0.0, 1.0)
        dxs += keep * (ut[:, None] * vbar[None, :])
        ubar = keep * tl.sum(xs * vbar[None, :], 1)
    dx += dxs * s
    tl.store(dx_ptr + pid * M * N + rm[:, None] * N + rn[None, :], dx, mask=ok)
    tl.store(du0_ptr + pid * M + rm, tl.where(DIFF == T, ubar, 0.0), mask=rm < M)


# -------------------------------------------------------------------------------- rank <= 16
@triton.jit
def _dot(a, b):
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _col(t, rr, r):
    """Column r of a (P, R) tile, (P,)."""
    return tl.sum(tl.where(rr[None, :] == r, t, 0.0), 1)


@triton.jit
def _hals_inv(b, rr, R, eps):
    """Guarded 1/B_rr, (R,): 0 for a collapsed (or padding) column."""
    d = tl.sum(tl.where(rr[:, None] == rr[None, :], b, 0.0), 1)
    d = tl.where(rr < R, d, 0.0)
    tiny = 1.1754943508222875e-38
    ok = d > eps * tl.max(d, 0) + tiny
    return tl.where(ok, 1.0 / tl.where(ok, d, 1.0), 0.0)


@triton.jit
def _update(a, w, b, rr, R: tl.constexpr, eps, HALS: tl.constexpr, RB: tl.constexpr):
    """One update of W given ``A = s Xp H`` and ``B = HᵀH``."""
    if HALS:
        inv = _hals_inv(b, rr, R, eps)
        for r in tl.static_range(R):  # padding columns (R..RB) stay 0: no sweep over them
            brow = tl.sum(tl.where(rr[None, :] == r, b, 0.0), 1)  # B[:, r] (B symmetric)
            bcol_r = brow  # B_lr over l
            b_rr = tl.sum(tl.where(rr == r, brow, 0.0), 0)
            inv_r = tl.sum(tl.where(rr == r, inv, 0.0), 0)
            wr = _col(w, rr, r)
            num = _col(a, rr, r) - tl.sum(w * bcol_r[None, :], 1) + b_rr * wr
            new = tl.maximum(num * inv_r, 0.0)
            w = tl.where(rr[None, :] == r, new[:, None], w)
        return w
    else:
        return w * a / (_dot(w, b) + eps)


@triton.jit
def _update_bwd(a, w, b, g, rr, R: tl.constexpr, eps, HALS: tl.constexpr, RB: tl.constexpr):
    """Adjoint of :func:`_update`: ``(dA, dW, dB)`` for ``G = dL/dW'``."""
    if HALS:
        inv = _hals_inv(b, rr, R, eps)
        new = _update(a, w, b, rr, R, eps, HALS, RB)
        da = tl.zeros_like(a)
        dw = tl.zeros_like(w)
        db = tl.zeros_like(b)
        for i in tl.static_range(R):
            r = R - 1 - i
            brow = tl.sum(tl.where(rr[None, :] == r, b, 0.0), 1)
            inv_r = tl.sum(tl.where(rr == r, inv, 0.0), 0)
            nr = _col(new, rr, r)
            gh = tl.where(nr > 0, _col(g, rr, r), 0.0) * inv_r
            da = tl.where(rr[None, :] == r, gh[:, None], da)
            before = rr[None, :] < r
            after = rr[None, :] > r
            mixed = tl.where(rr[None, :] <= r, new, w)  # W'_l for l <= r, old W_l for l > r
            dbcol = -tl.sum(mixed * gh[:, None], 0)  # over l: dB_lr
            db = tl.where(rr[None, :] == r, db + dbcol[:, None], db)
            contrib = gh[:, None] * brow[None, :]
            g = tl.where(before, g - contrib, g)
            dw = tl.where(after, dw - contrib, dw)
        return da, dw, db
    else:
        d = _dot(w, b) + eps
        new = w * a / d
        dd = -g * new / d
        da = g * w / d
        dw = g * a / d + _dot(dd, b)
        db = _dot(tl.trans(w), dd)
        return da, dw, db


@triton.jit
def _start_v(rn, rr, N, R, dtype, START: tl.constexpr, BN: tl.constexpr, RB: tl.constexpr):
    ok = (rn[:, None] < N) & (rr[None, :] < R)
    return tl.where(ok, tl.full((BN, RB), START, dtype), 0.0)


@triton.jit
def _u_step(xs, u, v, rr, R: tl.constexpr, eps, HALS: tl.constexpr, RB: tl.constexpr):
    return _update(_dot(xs, v), u, _dot(tl.trans(v), v), rr, R, eps, HALS, RB)


@triton.jit
def _v_step(xs, u, v, rr, R: tl.constexpr, eps, HALS: tl.constexpr, RB: tl.constexpr):
    return _update(_dot(tl.trans(xs), u), v, _dot(tl.trans(u), u), rr, R, eps, HALS, RB)


@triton.jit
def _load_factor(ptr, pid, P, R, rp, rr, dtype):
    ok = (rp[:, None] < P) & (rr[None, :] < R)
    return tl.load(ptr + pid * P * R + rp[:, None] * R + rr[None, :], mask=ok, other=0.0).to(dtype)


@triton.jit
def nmf_fwd(
    x_ptr, u0_ptr, out_ptr, u_ptr, v_ptr, M, N, T, eps, R: tl.constexpr,
    HALS: tl.constexpr, START: tl.constexpr, NEED_V: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, RB: tl.constexpr,
):  # fmt: skip
    """``V_1`` from ``U0``, then T times (U, V); writes ``U Vᵀ/s``, ``U`` and (``NEED_V``) ``V``."""
    pid = tl.program_id(0)
    x, s, rm, rn, ok = _load_x(x_ptr, pid, M, N, BM, BN)
    xs = x * s
    rr = tl.arange(0, RB)
    u = _load_factor(u0_ptr, pid, M, R, rm, rr, x.dtype)
    v = _v_step(xs, u, _start_v(rn, rr, N, R, x.dtype, START, BN, RB), rr, R, eps, HALS, RB)
    for _ in range(T):
        u = _u_step(xs, u, v, rr, R, eps, HALS, RB)
        v = _v_step(xs, u, v, rr, R, eps, HALS, RB)
    out = _dot(u, tl.trans(v)) / s
    tl.store(out_ptr + pid * M * N + rm[:, None] * N + rn[None, :], out, mask=ok)
    tl.store(
        u_ptr + pid * M * R + rm[:, None] * R + rr[None, :], u, mask=(rm[:, None] < M) & (rr[None, :] < R)
    )
    if NEED_V:
        vok = (rn[:, None] < N) & (rr[None, :] < R)
        tl.store(v_ptr + pid * N * R + rn[:, None] * R + rr[None, :], v, mask=vok)


@triton.jit
def nmf_bwd(
    x_ptr, u0_ptr, g_ptr, gu_ptr, gv_ptr, dx_ptr, du0_ptr, M, N, T, DIFF, eps, R: tl.constexpr,
    HALS: tl.constexpr, START: tl.constexpr, HAS_GU: tl.constexpr, HAS_GV: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, RB: tl.constexpr,
):  # fmt: skip
    """``(dX, dU0)`` of :func:`nmf_fwd` for the gradients of ``out`` (and of U, V)."""
    pid = tl.program_id(0)
    x, s, rm, rn, ok = _load_x(x_ptr, pid, M, N, BM, BN)
    xs = x * s
    rr = tl.arange(0, RB)
    u0 = _load_factor(u0_ptr, pid, M, R, rm, rr, x.dtype)
    v1 = _v_step(xs, u0, _start_v(rn, rr, N, R, x.dtype, START, BN, RB), rr, R, eps, HALS, RB)
    u = u0
    v = v1
    for _ in range(T):
        u = _u_step(xs, u, v, rr, R, eps, HALS, RB)
        v = _v_step(xs, u, v, rr, R, eps, HALS, RB)
    g = tl.load(g_ptr + pid * M * N + rm[:, None] * N + rn[None, :], mask=ok, other=0.0).to(x.dtype)
    # out = U Vᵀ / s (V the scaled problem's); gradients carried for the scaled problem
    gu = _dot(g, v) / s
    gv = _dot(tl.trans(g), u) / s
    if HAS_GU:
        gu += _load_factor(gu_ptr, pid, M, R, rm, rr, x.dtype)
    if HAS_GV:
        gv += _load_factor(gv_ptr, pid, N, R, rn, rr, x.dtype)
    dxs = tl.zeros_like(x)
    for i in range(DIFF):
        t = T - 1 - i  # step t: U_{t+1} from (U_t, V_{t+1}), then V_{t+2} from (V_{t+1}, U_{t+1})
        ut = u0
        vt = v1
        for _ in range(t):
            ut = _u_step(xs, ut, vt, rr, R, eps, HALS, RB)
            vt = _v_step(xs, ut, vt, rr, R, eps, HALS, RB)
        un = _u_step(xs, ut, vt, rr, R, eps, HALS, RB)
        # V update: A = X̃ᵀ U_{t+1}, W = V_{t+1}, B = U_{t+1}ᵀ U_{t+1}
        da, dw, db = _update_bwd(_dot(tl.trans(xs), un), vt, _dot(tl.trans(un), un), gv, rr, R, eps, HALS, RB)
        dxs += _dot(un, tl.trans(da))
        gu += _dot(xs, da) + _dot(un, db + tl.trans(db))
        gv = dw
        # U update: A = X̃ V_{t+1}, W = U_t, B = V_{t+1}ᵀ V_{t+1}
        da, dw, db = _update_bwd(_dot(xs, vt), ut, _dot(tl.trans(vt), vt), gu, rr, R, eps, HALS, RB)
        dxs += _dot(da, tl.trans(vt))
        gv += _dot(tl.trans(xs), da) + _dot(vt, db + tl.trans(db))
        gu = dw
    if DIFF == T:  # the first V update: A = X̃ᵀ U0, W = V_0 (a constant), B = U0ᵀ U0
        v0 = _start_v(rn, rr, N, R, x.dtype, START, BN, RB)
        da, dw, db = _update_bwd(_dot(tl.trans(xs), u0), v0, _dot(tl.trans(u0), u0), gv, rr, R, eps, HALS, RB)
        dxs += _dot(u0, tl.trans(da))
        gu += _dot(xs, da) + _dot(u0, db + tl.trans(db))
    else:
        gu = tl.zeros_like(gu)
    tl.store(dx_ptr + pid * M * N + rm[:, None] * N + rn[None, :], dxs * s, mask=ok)
    tl.store(
        du0_ptr + pid * M * R + rm[:, None] * R + rr[None, :], gu, mask=(rm[:, None] < M) & (rr[None, :] < R)
    )
