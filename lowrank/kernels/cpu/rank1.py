"""Rank-1 NMF fast path: the scaled power iteration on the Gram matrix, with a custom backward.

For R = 1, MU and HALS both reduce to ``v = Xᵀu/‖u‖²``, ``u = Xv/‖v‖²`` (for X >= 0). With the
solver's order (V once from U0, then T times U then V), after T iterations
``u_T ∝ (X Xᵀ)ᵀ u0`` and the output is ``u_T v_Tᵀ = P X`` with ``P = u_T u_Tᵀ / ‖u_T‖²``. So:

* forward: ``K = X Xᵀ`` (one pass over X), T matrix–vector products with the M×M matrix K
  (``u ← relu(K u) / ‖relu(K u)‖``: the direction is all that matters, and normalizing keeps it
  finite; for X >= 0 the ReLU is the identity and its derivative is taken as 1 at 0, as MU's
  is at a zero row of X), and ``P X`` (a second pass);
* backward: every gradient term w.r.t. X has the form ``A X`` or ``P G``, so
  ``dX = P G + S X`` with an M×M matrix S built by reverse-mode through the small iteration:
  one allocation of X's size and two passes, instead of 2T full-size rank-1 accumulations.

With ``grad_steps=k < T`` the differentiated graph is the last k iterations of the general loop:
the first of them updates U from the detached ``v_{T-k} = Xᵀu_{T-k}/‖u_{T-k}‖²``, so its
Jacobian holds only the left X of ``K = X Xᵀ`` (S gets ``w̄ uᵀ`` without its transpose).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...solvers._numerics import inverse_scale

__all__ = ["rank1_projector_nmf", "rank1_factors"]


def _normalize(w: Tensor, delta: float) -> tuple[Tensor, Tensor, Tensor]:
    r = w.clamp_min(0)
    n = (r.square().sum(-1, keepdim=True) + delta).sqrt()
    return r / n, r, n


_CHUNK_ELEMENTS = 1 << 20  # X is scaled in chunks of this many elements to form K


def _scaled_gram(x: Tensor) -> tuple[Tensor, Tensor]:
    """``K = (X/s)(X/s)ᵀ`` with ``s = max |X|`` per matrix (1 if 0), and ``1/s``; chunked copies."""
    inv = inverse_scale(x)
    step = max(1, _CHUNK_ELEMENTS // max(1, x.shape[-1] * x.shape[-2]))
    parts = []
    for xc, ic in zip(x.split(step), inv.split(step)):
        xs = xc * ic
        parts.append(torch.bmm(xs, xs.mT))
    return torch.cat(parts) if len(parts) > 1 else parts[0], inv


def _power(x: Tensor, u0: Tensor, iters: int, delta: float):
    """The forward iteration: ``(K, 1/s, [u_0..u_T], [w_1..w_T], [n_1..n_T])``."""
    k, inv = _scaled_gram(x)
    us, ws, ns = [u0], [], []
    u = u0
    for _ in range(iters):
        w = torch.bmm(k, u.unsqueeze(-1)).squeeze(-1)
        u, _, n = _normalize(w, delta)
        ws.append(w)
        ns.append(n)
        us.append(u)
    return k, inv, us, ws, ns


def _row(u: Tensor, delta: float) -> Tensor:
    """``cᵀ = uᵀ / (‖u‖² + δ)``, ``(B, 1, M)``: ``P = u cᵀ``."""
    return (u / (u.square().sum(-1, keepdim=True) + delta)).unsqueeze(-2)


def _outer(u: Tensor, row: Tensor) -> Tensor:
    """``u (B, M)`` times ``row (B, 1, N)``: the rank-1 product ``(B, M, N)`` in one pass."""
    return u.unsqueeze(-1) * row


class _Rank1Gram(torch.autograd.Function):
    """``(X (B, M, N), u0 (B, M)) -> (P X (B, M, N), u_T (B, M))`` for T power iterations.

    X is used unscaled: the iteration runs on ``K = (X/s)(X/s)ᵀ`` (formed from chunked scaled
    copies, so tiny or huge X neither under- nor overflows), ``P`` does not depend on ``s``, and
    ``out = P X`` is formed from X directly.
    """

    @staticmethod
    def forward(ctx, x: Tensor, u0: Tensor, iters: int, diff: int, eps: float):
        delta = eps * eps
        k, inv, us, ws, ns = _power(x, u0, iters, delta)
        u, c = us[-1], _row(us[-1], delta)
        out = _outer(u, torch.bmm(c, x))  # P X = u (cᵀX), P = u cᵀ: no M×M product per column
        first = iters - diff  # index of the first differentiated iteration (0-based)
        ctx.save_for_backward(x, k, inv, c, *us[first:], *ws[first:], *ns[first:])
        ctx.iters, ctx.diff, ctx.delta = iters, diff, delta
        ctx.mark_non_differentiable(u)
        return out, u

    @staticmethod
    def backward(ctx, g: Tensor, _gu: Tensor | None):
        x, k, inv, c, *rest = ctx.saved_tensors
        diff, delta = ctx.diff, ctx.delta
        us, ws, ns = rest[: diff + 1], rest[diff + 1 : 2 * diff + 1], rest[2 * diff + 1 :]
        full = diff == ctx.iters
        # a gradient constant along N (e.g. from out.sum()) is kept as one column: no copy of X's size
        column = g.stride(-1) == 0
        g1 = g[..., :1] if column else g
        # P̄ = G Xᵀ, taken w.r.t. the scaled X (·1/s) so that the small reverse pass is O(1)
        pbar = torch.bmm(g1, x.sum(-1, keepdim=True).mT if column else x.mT) * inv
        u = us[-1]
        a = u.square().sum(-1, keepdim=True) + delta
        pu = torch.bmm(pbar, u.unsqueeze(-1)).squeeze(-1)
        ptu = torch.bmm(pbar.mT, u.unsqueeze(-1)).squeeze(-1)
        ubar = (pu + ptu) / a - 2.0 * (u * pu).sum(-1, keepdim=True) / a.square() * u
        # S = Σ_t w̄_t u_{t-1}ᵀ (+ its transpose where K's right X is differentiated too)
        wbars: list[Tensor] = []
        u0bar = None
        for t in range(diff - 1, -1, -1):
            # u_t = r / n with r = relu(w), n = sqrt(|r|² + δ): r̄ = (ū − (ū·u_t) u_t) / n
            u_t = us[t + 1]
            rbar = (ubar - (ubar * u_t).sum(-1, keepdim=True) * u_t) / ns[t]
            wbar = torch.where(ws[t] >= 0, rbar, 0.0)  # MU's derivative at (Xv)_m = 0 (a zero row)
            wbars.append(wbar)
            if t > 0 or full:
                ubar = torch.bmm(k, wbar.unsqueeze(-1)).squeeze(-1)
        # one column per iteration t = diff-1 .. 0 (reverse order): S = W̄ Uᵀ, with w̄_t and the
        # iteration's input u (us[t])
        wbar_cols, u_cols = torch.stack(wbars, -1), torch.stack(us[diff - 1 :: -1], -1)
        left = torch.bmm(wbar_cols, u_cols.mT)
        if full:
            s = left + left.mT
        else:  # the first differentiated iteration (the last column) updates U from a detached V:
            # its term has K's left X only
            s = left + torch.bmm(wbar_cols[..., :-1], u_cols[..., :-1].mT).mT
        if full and ctx.needs_input_grad[1]:
            u0bar = ubar / inv.squeeze(-1)  # the reverse pass ran on P̄·(1/s)
        gx = None
        if ctx.needs_input_grad[0]:
            # K = (X/s)(X/s)ᵀ and the pass ran on P̄/s: dX = P G + (S/s) X
            s = s * inv
            if column:
                gx = torch.baddbmm(_outer(u, torch.bmm(c, g1)).expand_as(x), s, x)
            else:
                gx = _outer(u, torch.bmm(c, g))
                gx.baddbmm_(s, x)
        return gx, u0bar, None, None, None


def rank1_projector_nmf(
    x: Tensor, u0: Tensor, iters: int, grad_steps: int | None, eps: float
) -> tuple[Tensor, Tensor]:
    """Rank-1 NMF reconstruction after ``iters`` iterations, with the solver's gradient modes.

    Args:
        x: ``(*batch, M, N)``, scaled, masked, >= 0 for NMF semantics.
        u0: ``(*batch, M)`` the initial left factor (>= 0).
        iters: T.
        grad_steps: ``None`` or k (see :mod:`lowrank.solvers.base`).
        eps: the guard; the normalizations add ``eps²``.

    Returns:
        ``(out (*batch, M, N), u (*batch, M))``: ``P X`` and the final unit-norm direction u
        (not differentiable).
    """
    diff = iters if grad_steps is None or grad_steps >= iters else grad_steps
    if not torch.is_grad_enabled():
        diff = iters
    batch, (m, n) = x.shape[:-2], x.shape[-2:]
    out, u = _Rank1Gram.apply(x.reshape(-1, m, n), u0.reshape(-1, m), iters, diff, eps)
    return out.reshape(*batch, m, n), u.reshape(*batch, m)


def rank1_factors(x: Tensor, u0: Tensor, iters: int, eps: float) -> tuple[Tensor, Tensor]:
    """The rank-1 reconstruction as its two factors, without gradient: ``P X = u wᵀ``.

    Same iteration and arithmetic as :func:`rank1_projector_nmf` (``u wᵀ`` equals its output
    bitwise), for callers that can use the factors without forming the ``(M, N)`` product
    (a windowed matricizer's inverse).

    Args:
        x: ``(*batch, M, N)``, scaled, masked, >= 0.
        u0: ``(*batch, M)`` the initial left factor.
        iters: T.
        eps: the guard.

    Returns:
        ``(u (*batch, M), w (*batch, N))`` with ``w = Xᵀu / (‖u‖² + eps²)``.
    """
    batch, (m, n) = x.shape[:-2], x.shape[-2:]
    with torch.no_grad():
        flat = x.reshape(-1, m, n)
        delta = eps * eps
        u = _power(flat, u0.reshape(-1, m), iters, delta)[2][-1]
        w = torch.bmm(_row(u, delta), flat)
    return u.reshape(*batch, m), w.reshape(*batch, n)
