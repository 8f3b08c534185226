"""Semi-NMF layer ``semi_nmf``: signed X and U, non-negative V (Ding, Li & Jordan 2010).

Kernels: runs the ``reference`` formulas on every backend of :mod:`lowrank.kernels` (no ``cpu`` /
``triton`` kernel): its U step is an unconstrained HALS sweep or a ridge least-squares solve (an R×R
Cholesky per matrix, kept in ``torch.linalg``), which the Triton NMF kernels do not cover yet; on a
GPU wrap the model in ``torch.compile`` to fuse the element-wise parts.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ..registry import register
from .base import Factorization, State
from .updates import hals_columns

__all__ = ["SemiNMF", "ridge_solve"]


def ridge_solve(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """``A (B + δI)⁻¹`` for ``A: (*batch, P, R)``, symmetric ``B: (*batch, R, R)``.

    ``δ = eps · (tr(B)/R + 1)`` (data scaled to max 1): relative to B, with an absolute floor so
    that an all-zero B (an all-zero matrix) gives 0 with gradients bounded by ``1/eps``.
    """
    rank = b.shape[-1]
    trace = torch.diagonal(b, dim1=-2, dim2=-1).sum(-1, keepdim=True).unsqueeze(-1)
    eye = torch.eye(rank, dtype=b.dtype, device=b.device)
    reg = b + eps * (trace / rank + 1.0) * eye
    return torch.linalg.solve(reg, a.mT).mT


@register("solver", "semi_nmf", aliases=("seminmf",), test_spec="semi_nmf(rank=2, iters=3)")
class SemiNMF(Factorization):
    """Semi-NMF layer: ``X ≈ U Vᵀ`` with X and U signed and ``V >= 0``; returns ``U Vᵀ``.

    For signed features (no ReLU in front). V holds non-negative coefficients (a soft
    clustering of the columns), U signed bases. Each iteration updates U, then does one HALS
    sweep on V (exact column-wise non-negative least squares), so the objective is
    non-increasing. U is updated by ``u_update``:

    * ``"hals"`` (default): one unconstrained Gauss–Seidel sweep over the columns of U, with the
      collapse guard of :func:`~lowrank.solvers.updates.hals_columns`; robust at every rank.
    * ``"ls"``: exact least squares ``U ← X V (VᵀV + δI)⁻¹`` (:func:`ridge_solve`), fewer
      iterations to converge, but when V loses rank (a component collapses, e.g. R close to
      min(M, N)) the solve amplifies rounding by up to ``1/eps``.

    The initial V is one HALS sweep from zeros given ``U0`` (used as the init gives it,
    possibly signed: ``svd`` is a natural choice).

    Args:
        u_update: ``"hals"`` or ``"ls"`` (see above).
        **shared: the other keywords of
            :class:`~lowrank.solvers.base.Factorization` (``rank``, ``iters``, ``init``, ...)
            (in the signature: see :func:`lowrank.registry.inherit_signature`).

    Shapes:
        ``x: (*batch, M, N)``, ``mask: (*batch, N)`` bool or ``None`` → ``(*batch, M, N)``.
    """

    nonnegative = False
    homogeneous = True

    def __init__(self, *, u_update: Literal["hals", "ls"] = "hals", **shared: Any):
        super().__init__(**shared)
        self.u_update = u_update

    @staticmethod
    def _update_v(x: Tensor, u: Tensor, v: Tensor, eps: float) -> Tensor:
        return hals_columns(x.mT, v, u, eps)

    def initial_state(self, x: Tensor, u0: Tensor, mask: Tensor | None, eps: float) -> State:
        """``(U0, V1)``, V1 one HALS sweep from zeros."""
        v = torch.zeros((*x.shape[:-2], x.shape[-1], u0.shape[-1]), dtype=x.dtype, device=x.device)
        return u0, self._update_v(x, u0, v, eps)

    def step(self, x: Tensor, state: State, mask: Tensor | None, eps: float) -> State:
        """Update U (HALS sweep or least squares), then a HALS sweep on V."""
        u, v = state[0], state[1]
        if self.u_update == "ls":
            u = ridge_solve(x @ v, v.mT @ v, eps)
        else:
            u = hals_columns(x, u, v, eps, slope=1.0)
        return u, self._update_v(x, u, v, eps)
