"""Soft vector quantization ham ``vq`` (Hamburger, Alg. 1) and the shared soft-clustering loop.

For ``X: (*batch, M, N)`` (columns = points) the left factor ``U = D: (*batch, M, R)`` holds
``R`` centroids and ``V = Cᵀ: (*batch, N, R)`` the soft assignments:

- ``assign``: ``V = softmax_R(cos(X, D) / T)`` (each row of V sums to 1; ``T → 0`` gives the
  one-hot hard assignment of k-means);
- ``means``:  ``D = X V diag(1ᵀV)⁻¹`` (weighted means; :class:`~lowrank.solvers.cd.CD` instead
  normalizes ``X V`` to unit columns — spherical k-means).

Iteration (as in the reference): ``D0`` from ``init``; each of the ``T`` steps is ``assign``
then ``means``; the output coefficients are one more ``assign`` (VQ) or the ridge regression of
CD, computed from the final D; the output is ``D Cᵀ = U Vᵀ``.

Gradient modes (:mod:`lowrank.solvers.base`): with ``grad_steps=k`` the differentiated graph
is the last ``k`` steps (each ``assign`` + ``means`` from the detached incoming D), the output
coefficients and ``U Vᵀ``; ``grad_steps=1`` is Hamburger's one-step gradient.

Kernels: runs the ``reference`` formulas on every backend of :mod:`lowrank.kernels`: each step is a
cosine similarity, a softmax and a weighted mean (two batched matmuls and element-wise ops), which
``torch.compile`` fuses well; a one-program Triton kernel is not written yet.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..build import InitSpec
from ..hints import Eps, Rank, Temperature
from ..registry import register
from .base import Factorization, State, compute_dtype, matrix_scale

__all__ = ["SoftClustering", "VQ", "soft_assign", "unit_columns"]


def unit_columns(x: Tensor, eps: float) -> Tensor:
    """``x: (*batch, P, Q)`` with each column scaled to unit L2 norm (columns below ``eps`` shrink).

    The norm is clamped at ``eps`` before the reciprocal square root, so all-zero columns stay
    zero with a finite (zero) gradient.
    """
    return x * torch.rsqrt(x.square().sum(-2, keepdim=True).clamp_min(eps * eps))


def soft_assign(x_unit: Tensor, d: Tensor, temperature: float, eps: float) -> Tensor:
    """Soft assignments ``softmax_R(cos(X, D) / T)``: ``(*batch, N, R)``, rows sum to 1.

    Args:
        x_unit: the matrices with unit columns, ``(*batch, M, N)``.
        d: the centroids, ``(*batch, M, R)`` (normalized here).
        temperature: the softmax temperature ``T > 0``.
        eps: the norm guard.
    """
    logits = x_unit.mT @ unit_columns(d, eps)
    return torch.softmax(logits * (1.0 / temperature), dim=-1)


class SoftClustering(Factorization):
    """Shared loop of ``vq`` and ``cd``: ``T`` × (assign, update centroids), then coefficients.

    Subclasses set :meth:`centroids` (from X and V) and :meth:`coefficients` (from X and the
    final D). ``nonnegative = False``: the init's ``U0`` is used as is (the default
    ``random_train`` — random per call in training, a fixed seeded draw in eval — and the
    ``uniform``/``random`` inits draw U(0, 1), the reference's ``torch.rand`` bases).
    """

    nonnegative = False

    def __init__(
        self,
        *,
        rank: Rank = 64,
        temperature: Temperature = 0.01,
        iters: int = 6,
        init: InitSpec = "random_train",
        grad_steps: int | None = 1,
        eps: Eps | None = None,
        **shared: Any,
    ):
        if not temperature > 0:
            raise ValueError(
                f"temperature must be > 0 (T → 0 approaches the hard assignment), got {temperature}"
            )
        super().__init__(rank=rank, iters=iters, init=init, grad_steps=grad_steps, eps=eps, **shared)
        self.temperature = temperature

    def centroids(self, x: Tensor, v: Tensor, eps: float) -> Tensor:  # pragma: no cover - abstract
        """The centroids ``D: (*batch, M, R)`` from the (masked) assignments ``V: (*batch, N, R)``."""
        raise NotImplementedError

    def coefficients(self, x: Tensor, d: Tensor, mask: Tensor | None, eps: float) -> Tensor:
        """The output coefficients ``V: (*batch, N, R)`` for the final centroids ``D``."""
        return self.assign(x, d, mask, eps)

    def assign(self, x: Tensor, d: Tensor, mask: Tensor | None, eps: float) -> Tensor:
        """Soft assignments of the columns of ``x`` to ``d``, zero at masked columns."""
        v = soft_assign(unit_columns(x, eps), d, self.temperature, eps)
        return v if mask is None else v * mask

    def initial_state(self, x: Tensor, u0: Tensor, mask: Tensor | None, eps: float) -> State:
        """``(D0, 0)``: the init's centroids; V is first computed by the first step."""
        return u0, x.new_zeros((*x.shape[:-2], x.shape[-1], u0.shape[-1]))

    def step(self, x: Tensor, state: State, mask: Tensor | None, eps: float) -> State:
        """One iteration: ``V = assign(X, D)``, then ``D = centroids(X, V)``."""
        v = self.assign(x, state[0], mask, eps)
        return self.centroids(x, v, eps), v

    def solve(
        self,
        x: Tensor,
        mask: Tensor | None,
        rank: int,
        iters: int,
        eps: float,
        start: State | None = None,
    ) -> tuple[Tensor, State]:
        """Iterate, then compute the output coefficients from the final centroids (differentiated)."""
        d = self.factorize(x, mask, rank, iters, eps, start)[0]
        v = self.coefficients(x, d, mask, eps)
        return d @ v.mT, (d, v)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def _input_scale(x: Tensor, mask: Tensor | None, dtype: torch.dtype) -> Tensor:
    """The base's per-matrix scale ``max |X|`` (1 for all-zero matrices), ``(*batch, 1, 1)``."""
    with torch.autocast(x.device.type, enabled=False):
        xc = x.to(dtype)
        if mask is not None:
            xc = xc * mask.to(dtype).unsqueeze(-2)
        return matrix_scale(xc)


@register("solver", "vq", test_spec="vq(rank=2, iters=2)")
class VQ(SoftClustering):
    """Soft vector quantization (Hamburger's VQ ham): soft k-means on cosine similarity.

    ``T`` steps of ``V = softmax_R(cos(X, D)/T)``, ``D = X V diag(1ᵀV)⁻¹`` from ``D0 = init``,
    then the output ``D Cᵀ`` with ``C = softmax_R(cos(X, D)/T)`` of the final D. Each output
    column is a convex combination of centroids (one centroid as ``T → 0``).

    Args:
        rank: the number of centroids R (int), or a float compression ratio.
        temperature: softmax temperature ``T > 0`` (the reference uses 0.01).
        iters: iterations in training (paper: 6).
        eval_iters: iterations in eval (default ``iters``; paper: 7).
        init: init part of the centroids: ``random_train`` (default; random in training, fixed
            in eval), ``seeded``, ``uniform``, ``random``, ``online``, ``learned``, ...
        grad_steps: ``None`` (backprop through everything) or k (last k steps); default 1,
            Hamburger's one-step gradient.
        eps: guard of norms and counts (relative to the scaled data); default ``finfo(dtype).eps``.
        fp32: compute in float32 under autocast and for half inputs.
        return_factors: return ``(out, (D, C))``: centroids in the units of ``x`` and soft
            assignments (rows sum to 1).

    Shapes:
        ``x: (*batch, M, N)``, ``mask: (*batch, N)`` bool or ``None`` → ``(*batch, M, N)``.

    Raises:
        ValueError: ``temperature <= 0`` and the checks of :class:`~lowrank.solvers.base.Factorization`.
    """

    def centroids(self, x: Tensor, v: Tensor, eps: float) -> Tensor:
        """Weighted means ``X V / (1ᵀV + eps)``: ``(*batch, M, R)``."""
        return (x @ v) / (v.sum(-2, keepdim=True) + eps)

    def forward(self, x: Tensor, mask: Tensor | None = None):
        """Factorize ``x: (*batch, M, N)``; returns ``D Cᵀ`` (and ``(D, C)`` on request).

        The returned/stored factors are the centroids ``D`` in the units of ``x`` and the soft
        assignments ``C`` (rows sum to 1, 0 at masked columns).
        """
        out = super().forward(x, mask)
        if not (self.return_factors or self.store_factors):
            return out

        scale = _input_scale(x, mask, compute_dtype(x.dtype, self.fp32))
        if self.store_factors and self.factors is not None:
            d, v = self.factors
            self.factors = (d * scale, v / scale)
        if self.return_factors:
            out, (d, v) = out
            return out, (d * scale, v / scale)
        return out
