"""Weakly non-negative factorization layer ``weak_nmf`` (Kobayashi & Watanabe).

Kernels: runs the ``reference`` formulas (the general loop with :func:`hals_columns`) on every
backend of :mod:`lowrank.kernels`: the leaky projection and the L2 weight would need their own
variant of the Triton HALS kernel (not written yet); on a GPU wrap the model in ``torch.compile``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..registry import register
from .base import Factorization, State
from .updates import hals_columns

__all__ = ["WeakNMF"]


@register("solver", "weak_nmf", test_spec="weak_nmf(rank=2, iters=3)")
class WeakNMF(Factorization):
    """Weakly non-negative factorization: ``X ≈ φ_η(W) φ_η(H)ᵀ`` with an L2 weight λ.

    ``φ_η(a) = max(a, ηa)`` (a leaky ReLU): η = 0 is NMF, η = 1 unconstrained, and in between
    the factors may go slightly negative (Kobayashi & Watanabe recommend η = 0.1, λ = 0.1).
    As a layer, each iteration is one HALS-style sweep on U, then on V, whose projection is
    ``φ_η`` instead of the ReLU and whose denominators carry the ridge λ:
    ``U_r ← φ_η((A_r − Σ_{l≠r} B_lr U_l) / (B_rr + λ))`` with ``A = X V``, ``B = VᵀV``. With
    η = 0 this is HALS with an L2 penalty λ(‖U‖² + ‖V‖²); with η = 1, ridge-regularized
    alternating least squares. λ is relative to the scaled data (max |X| = 1). Returns
    ``U Vᵀ`` (the factors are stored after φ_η).

    Args:
        eta: the leak η in [0, 1].
        lam: the L2 weight λ >= 0.
        **shared: the other keywords of
            :class:`~lowrank.solvers.base.Factorization` (``rank``, ``iters``, ``init``, ...)
            (in the signature: see :func:`lowrank.registry.inherit_signature`).

    Raises:
        ValueError: η outside [0, 1] or λ < 0.

    Shapes:
        ``x: (*batch, M, N)``, ``mask: (*batch, N)`` bool or ``None`` → ``(*batch, M, N)``.
    """

    nonnegative = False

    def __init__(self, *, eta: float = 0.1, lam: float = 0.1, **shared: Any):
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1] (0: NMF, 1: unconstrained), got {eta}")
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        super().__init__(**shared)
        self.eta = eta
        self.lam = lam

    def _sweep(self, x: Tensor, w: Tensor, h: Tensor, eps: float) -> Tensor:
        return hals_columns(x, w, h, eps, slope=self.eta, ridge=self.lam)

    def initial_state(self, x: Tensor, u0: Tensor, mask: Tensor | None, eps: float) -> State:
        """``(U0, V1)``, V1 one sweep from zeros."""
        v = torch.zeros((*x.shape[:-2], x.shape[-1], u0.shape[-1]), dtype=x.dtype, device=x.device)
        return u0, self._sweep(x.mT, v, u0, eps)

    def step(self, x: Tensor, state: State, mask: Tensor | None, eps: float) -> State:
        """One sweep on U, then one on V."""
        u, v = state[0], state[1]
        u = self._sweep(x, u, v, eps)
        return u, self._sweep(x.mT, v, u, eps)
