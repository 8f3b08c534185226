"""The Gauss–Seidel column sweep of HALS as one autograd node (forward and backward by hand).

In a ``(*batch, R, P)`` layout (row r = column r of W), given ``C = Aᵀ − triu(B, 1)ᵀ…`` (the
numerators with the old columns already subtracted), ``B: (*batch, R, R)`` and the guarded
reciprocals ``inv: (*batch, R, 1)``, the sweep is, for r = 0..R−1 in turn,

    num_r = C_r − Σ_{l<r} B_lr W'_l,        W'_r = φ(num_r · inv_r),

with ``φ`` the leaky ReLU of slope ``η`` (0: ReLU, NMF; 1: identity, unconstrained columns).

Autograd through this loop records ``R(R−1)/2`` fused multiply-adds and ``3R`` element-wise
ops, each saving inputs of a column's size and each with its own backward node. Here the forward
runs without a graph and writes into one preallocated tensor, saves only ``num`` (one tensor of
W's size) and the small B and inv, and the backward is the reverse sweep

    g_r = G_r − Σ_{r'>r} B_{r r'} ĝ_{r'},   ĝ_r = g_r · φ'(num_r inv_r) · inv_r,

with ``dC = ĝ``, ``dB_lr = −Σ_p W'_l ĝ_r`` (l < r; one batched product) and
``d inv_r = Σ_p g_r φ'(num_r inv_r) num_r`` — the exact gradient of the loop above (tested
against autograd through it, and with ``gradcheck`` in float64). ``φ'`` at 0 is η, as for
``torch.nn.functional.leaky_relu``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["gauss_seidel_sweep", "substitute_"]


def substitute_(acc: Tensor, coef: Tensor, finish: Callable[[int], Tensor], reverse: bool = False) -> None:
    """Right-looking substitution on the rows of ``acc: (*batch, R, P)``, in place.

    For i = 0..R−1 (``reverse``: R−1..0), ``w_i = finish(i)`` — row i of ``acc`` has by then
    received every earlier row's term — and then ``acc_j −= coef_ij · w_i`` for every later
    j, in one broadcast multiply-add over the trailing rows: R − 1 passes over memory instead
    of R(R − 1)/2 row-by-row ones (the result is the same, the summation order differs).

    Args:
        acc: ``(*batch, R, P)`` the accumulating rows.
        coef: ``(*batch, R, R, 1)`` with ``coef[..., i, j, 0]`` the weight of row i in row j.
        finish: called once per row, in order; returns the final ``w_i: (*batch, P)``.
        reverse: run from the last row to the first.
    """
    rank = acc.shape[-2]
    for i in reversed(range(rank)) if reverse else range(rank):
        w_i = finish(i).unsqueeze(-2)
        if reverse and i > 0:
            acc[..., :i, :].addcmul_(coef[..., i, :i, :], w_i, value=-1.0)
        elif not reverse and i + 1 < rank:
            acc[..., i + 1 :, :].addcmul_(coef[..., i, i + 1 :, :], w_i, value=-1.0)


def _project(t: Tensor, slope: float) -> Tensor:
    """The leaky ReLU of slope ``slope``, in place."""
    if slope == 1.0:
        return t
    if slope == 0.0:
        return torch.relu_(t)
    return torch.nn.functional.leaky_relu_(t, slope)


class _Sweep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c: Tensor, b: Tensor, inv: Tensor, slope: float) -> Tensor:
        w = torch.empty_like(c)
        num = c.clone(memory_format=torch.contiguous_format)

        def finish(r: int) -> Tensor:  # in place: no fresh allocation per column
            return _project(w[..., r, :].copy_(num[..., r, :]).mul_(inv[..., r, :]), slope)

        substitute_(num, b.unsqueeze(-1), finish)
        ctx.save_for_backward(num, b, inv)
        ctx.slope = slope
        return w

    @staticmethod
    @once_differentiable
    def backward(ctx, gw: Tensor):
        num, b, inv = ctx.saved_tensors
        slope = ctx.slope
        rank = num.shape[-2]
        scaled = num * inv
        if slope == 1.0:
            w, dphi = scaled, None
        else:
            w = _project(scaled.clone(), slope)
            dphi = (scaled > 0).to(num.dtype)
            if slope != 0.0:
                dphi = dphi.mul_(1.0 - slope).add_(slope)
        gn = gw.clone(memory_format=torch.contiguous_format)
        dinv = torch.empty_like(inv)

        def finish(r: int) -> Tensor:
            g_r = gn[..., r, :]
            if dphi is not None:
                g_r.mul_(dphi[..., r, :])
            dinv[..., r, 0] = (g_r * num[..., r, :]).sum(-1)
            return g_r.mul_(inv[..., r, :])

        substitute_(gn, b.mT.unsqueeze(-1), finish, reverse=True)
        db = torch.triu(w @ gn.mT, 1).neg_() if rank > 1 else torch.zeros_like(b)
        return gn, db, dinv, None


def gauss_seidel_sweep(c: Tensor, b: Tensor, inv: Tensor, slope: float = 0.0) -> Tensor:
    """Run the HALS column sweep (see the module docstring).

    Args:
        c: ``(*batch, R, P)`` numerators with the old columns' coupling already subtracted.
        b: ``(*batch, R, R)`` the Gram matrix of the fixed factor (only its strict upper triangle
            is read).
        inv: ``(*batch, R, 1)`` the guarded reciprocals of the denominators (0 for a collapsed
            column).
        slope: the negative slope η of the projection (0: ReLU, 1: identity).

    Returns:
        ``W': (*batch, R, P)``.
    """
    return _Sweep.apply(c, b, inv, float(slope))
