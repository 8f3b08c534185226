"""Update rules of the non-negative factorizations (kind ``update``): ``mu`` and ``hals``.

Each rule updates the left factor W of ``X ≈ W Hᵀ`` (``X: (*batch, P, Q)``, ``W: (*batch, P, R)``,
``H: (*batch, Q, R)``); the solver applies it to ``(X, U, V)`` and to ``(Xᵀ, V, U)``. Both use
the statistics ``A = X H`` (P×R) and ``B = HᵀH`` (R×R) only, so one update costs O(PQR + PR²).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..registry import register
from ._sweep import gauss_seidel_sweep
from .base import Update

__all__ = ["HALSUpdate", "MUUpdate", "hals_columns", "kept_columns"]


@register("update", "mu", aliases=("multiplicative",), test_spec="nmf(rank=2, update=mu)")
class MUUpdate(Update):
    """Multiplicative update (Lee & Seung): ``W ← W ⊙ (X H)⁺ ⊘ (W HᵀH + (X H)⁻ + eps)``.

    For ``X >= 0`` this is Lee & Seung's ``W ⊙ (X H) ⊘ (W HᵀH + eps)`` exactly (``(XH)⁻ = 0``).
    For signed X (e.g. a Factorizer with ``mixer_act=none``) the gradient ``W HᵀH − X H`` is
    split into its positive part ``W HᵀH + (XH)⁻`` and negative part ``(XH)⁺``; the update is
    then the minimizer of a Lee–Seung auxiliary function of the least-squares objective
    ``‖X − W Hᵀ‖²`` over ``W >= 0``, so the objective is non-increasing for any X, the factors
    stay non-negative and the denominators stay ``>= eps``: the output and its gradients are
    finite (the fit of signed X by non-negative factors is biased, not wrong). Entries that
    reach 0 stay 0; ``eps`` (relative to the scaled data) keeps all-zero rows at 0 with finite
    gradients. V starts from ones, so its first update is ``(XᵀU) ⊘ (1ᵀ UᵀU)`` (the rank-1
    power step).
    """

    start = 1.0

    def forward(self, x: Tensor, w: Tensor, h: Tensor, eps: float, scale: Tensor | None = None) -> Tensor:
        """Return the updated W ``(*batch, P, R)`` (X read as ``scale · X``)."""
        a = x @ h if scale is None else (x @ h) * scale
        b = h.mT @ h
        # (XH)⁻ is 0 for X >= 0: the sum (and its gradient) are then bitwise Lee & Seung's
        new = w * a.clamp_min(0) / (w @ b + torch.relu(-a) + eps)
        # an entry at 0 stays 0 (a constant): its derivative a⁺/(W HᵀH + a⁻ + eps) can be
        # ~1/eps where a whole row of W is 0, and chained over the iterations it overflows
        return torch.where(w > 0, new, torch.zeros_like(new))


def kept_columns(d: Tensor, eps: float) -> Tensor:
    """HALS's collapse guard: True where a denominator ``d: (*batch, R)`` exceeds ``eps · max d``
    (plus the dtype's tiny); the other columns are collapsed components, set to 0."""
    return d > eps * d.amax(-1, keepdim=True) + torch.finfo(d.dtype).tiny


def hals_columns(
    x: Tensor,
    w: Tensor,
    h: Tensor,
    eps: float,
    slope: float = 0.0,
    ridge: float = 0.0,
    scale: Tensor | None = None,
) -> Tensor:
    """One Gauss–Seidel sweep of HALS over the columns of W in ``X ≈ W Hᵀ`` (batched).

    Column r becomes ``φ((A_r − Σ_{l<r} B_lr W'_l − Σ_{l>r} B_lr W_l) / (B_rr + ridge))``
    with ``A = X H``, ``B = HᵀH``, ``W'`` the already updated columns and ``φ`` the leaky ReLU
    of slope ``slope``. The work runs in a ``(*batch, R, P)`` layout so that each column is
    contiguous: ``Aᵀ`` comes from one matmul, the old-column part is one matmul with the strict
    upper triangle of B, and the sequential new-column part is one autograd node
    (:func:`~lowrank.solvers._sweep.gauss_seidel_sweep`, hand-written backward), so no full
    tensor is cloned and autograd keeps one tensor of W's size per sweep. A column whose
    ``B_rr`` is below ``eps · max_l B_ll`` (a collapsed component) is set to 0 by a zero
    reciprocal (a ``where`` on a safe denominator), so its gradient is 0, not NaN. The result
    is a ``(*batch, P, R)`` view of a ``(*batch, R, P)`` tensor.

    Args:
        x: ``(*batch, P, Q)``.
        w: the current W, ``(*batch, P, R)``.
        h: ``(*batch, Q, R)``.
        eps: the relative collapse threshold.
        slope: the negative slope η of the projection: 0 (ReLU, NMF; default), η in (0, 1)
            (weak NMF's leaky ReLU) or 1 (identity, unconstrained columns).
        ridge: added to the denominators (an L2 penalty on W).
        scale: ``(*batch, 1, 1)`` or ``None``: read X as ``scale · X`` (applied to ``Aᵀ``).

    Returns:
        The updated W, ``(*batch, P, R)``.
    """
    rank = w.shape[-1]
    b = h.mT @ h
    a_t = h.mT @ x.mT  # (*batch, R, P), contiguous
    if scale is not None:
        a_t = a_t * scale
    if rank > 1:  # Aᵀ − triu(B, 1) Wᵀ in one product (baddbmm is 3-D only)
        c_t = torch.baddbmm(
            a_t.reshape(-1, *a_t.shape[-2:]),
            torch.triu(b, 1).reshape(-1, rank, rank),
            w.mT.reshape(-1, *a_t.shape[-2:]),
            alpha=-1.0,
        ).view(a_t.shape)
    else:
        c_t = a_t
    d = torch.diagonal(b, dim1=-2, dim2=-1) + ridge
    ok = kept_columns(d, eps)
    inv = torch.where(ok, 1.0 / torch.where(ok, d, torch.ones_like(d)), torch.zeros_like(d)).unsqueeze(-1)
    return gauss_seidel_sweep(c_t, b, inv, slope).mT


@register("update", "hals", test_spec="nmf(rank=2, update=hals)")
class HALSUpdate(Update):
    """Hierarchical alternating least squares (Cichocki & Phan): exact column-wise NNLS steps.

    ``W_r ← max(0, (A_r − Σ_{l≠r} B_lr W_l) / B_rr)`` for r = 1..R in turn (Gauss–Seidel), with
    ``A = X H`` and ``B = HᵀH``; see :func:`hals_columns`. Non-increasing objective. V starts
    from zeros, so its first sweep is a greedy column-by-column fit.
    """

    start = 0.0

    def forward(self, x: Tensor, w: Tensor, h: Tensor, eps: float, scale: Tensor | None = None) -> Tensor:
        """Return the updated W ``(*batch, P, R)`` (X read as ``scale · X``)."""
        return hals_columns(x, w, h, eps, scale=scale)
