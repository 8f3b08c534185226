"""Concept decomposition ham ``cd`` (Hamburger, Appendix B, Alg. 3).

Spherical soft k-means for the concepts ``D: (*batch, M, R)`` (unit columns), then the
coefficients by ridge regression ``Cᵀ = (DᵀD + βI)⁻¹ DᵀX``, i.e. ``V = XᵀD (DᵀD + βI)⁻¹``.
The R×R system is symmetric positive definite (eigenvalues >= β > 0), so it is solved by a
Cholesky factorization (``torch.linalg.cholesky_ex`` + ``torch.cholesky_solve``) — no explicit
inverse — in float32 (float64 for float64 input) with autocast disabled, as every solver here.

Kernels: runs the ``reference`` formulas on every backend of :mod:`lowrank.kernels`: the ridge
coefficients need a batched Cholesky solve, which stays with ``torch.linalg``; on a GPU wrap the
model in ``torch.compile`` to fuse the clustering steps' element-wise parts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..registry import register
from .vq import SoftClustering, unit_columns

__all__ = ["CD", "ridge_coefficients"]


def ridge_coefficients(x: Tensor, d: Tensor, beta: float) -> Tensor:
    """Ridge coefficients ``V = Xᵀ D (DᵀD + βI)⁻¹``: ``(*batch, N, R)``.

    Solves ``(DᵀD + βI) Vᵀ = DᵀX`` by Cholesky (differentiable). Without any host sync (no
    data-dependent Python branch, so a GPU never waits for it and ``torch.compile`` sees one
    graph): the ridge is raised on the device to at least ``R·eps·max diag(DᵀD)`` (below that,
    rounding can make the matrix indefinite; unit-norm concepts and β = 0.1 are far above it, so
    the formula is unchanged there), and a matrix whose factorization still fails (non-finite
    input) gives NaN coefficients, never a silently wrong finite result.

    Args:
        x: ``(*batch, M, N)``.
        d: ``(*batch, M, R)``.
        beta: the ridge weight ``β > 0``.
    """
    r = d.shape[-1]
    dtd = d.mT @ d
    floor = dtd.diagonal(dim1=-2, dim2=-1).amax(-1, keepdim=True) * (r * torch.finfo(d.dtype).eps)
    ridge = floor.clamp(min=beta)  # (*batch, 1): β, or the rounding floor when β is below it
    gram = dtd + torch.diag_embed(ridge.expand(*ridge.shape[:-1], r))
    rhs = d.mT @ x  # (*batch, R, N)
    chol, info = torch.linalg.cholesky_ex(gram)
    v = torch.cholesky_solve(rhs, chol).mT
    return torch.where((info == 0)[..., None, None], v, torch.full_like(v[..., :1, :1], float("nan")))


@register("solver", "cd", aliases=("concept",), test_spec="cd(rank=2, iters=2)")
class CD(SoftClustering):
    """Concept decomposition (Hamburger's CD ham): spherical soft k-means + ridge coefficients.

    ``T`` steps of ``V = softmax_R(cos(X, D)/T)``, ``D = normalize(X V)`` (unit columns) from
    ``D0 = init``, then ``V = XᵀD (DᵀD + βI)⁻¹`` (ridge regression, solved by Cholesky) and the
    output ``D Vᵀ``, the ridge-regularized projection of X on the concepts' span.

    Args:
        rank: the number of concepts R (int), or a float compression ratio.
        temperature: softmax temperature ``T > 0`` (the reference uses 0.01; paper Tab. 9:
            0.1 and 0.01 are equally good).
        beta: ridge weight ``β > 0`` (paper: 0.01 and 0.1 make no difference; reference 0.1),
            relative to data scaled to max |X| = 1.
        iters: iterations in training (paper: 6).
        eval_iters: iterations in eval (default ``iters``; paper: 7).
        init: init part of the concepts: ``random_train`` (default; random in training, fixed
            in eval), ``online`` (the paper's best for CD, by a hair), ``seeded``, ``uniform``, ...
        grad_steps: ``None`` (backprop through everything) or k (last k steps); default 1,
            Hamburger's one-step gradient (the ridge step is always differentiated).
        eps: guard of norms (relative to the scaled data); default ``finfo(dtype).eps``.
        fp32: compute in float32 under autocast and for half inputs.
        return_factors: return ``(out, (D, V))``.

    Shapes:
        ``x: (*batch, M, N)``, ``mask: (*batch, N)`` bool or ``None`` → ``(*batch, M, N)``.

    Raises:
        ValueError: ``beta <= 0``, ``temperature <= 0`` and the checks of
            :class:`~lowrank.solvers.base.Factorization`.
    """

    def __init__(self, *, beta: float = 0.1, **shared: Any):
        if not beta > 0:
            raise ValueError(f"beta must be > 0 (it keeps DᵀD + βI positive definite), got {beta}")
        super().__init__(**shared)
        self.beta = beta

    def centroids(self, x: Tensor, v: Tensor, eps: float) -> Tensor:
        """Unit-norm concepts ``normalize(X V)``: ``(*batch, M, R)``."""
        return unit_columns(x @ v, eps)

    def coefficients(self, x: Tensor, d: Tensor, mask: Tensor | None, eps: float) -> Tensor:
        """Ridge coefficients ``XᵀD (DᵀD + βI)⁻¹`` (zero at masked columns, whose X is zero)."""
        return ridge_coefficients(x, d, self.beta)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, beta={self.beta}"
