"""Non-negative matrix factorization layer ``nmf`` (update ``mu`` or ``hals``; rank-1 fast path)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..build import InitSpec, UpdateSpec, build
from ..registry import register
from .base import Factorization, State, inverse_scale
from .rank1 import rank1_projector_nmf

__all__ = ["NMF"]


@register("solver", "nmf", test_spec="nmf(rank=2, iters=3)")
class NMF(Factorization):
    """NMF layer: ``X ≈ U Vᵀ`` with ``U, V >= 0``; returns ``U Vᵀ`` (Lee & Seung; Cichocki & Phan).

    ``U0`` comes from ``init``; V is filled with the update's ``start`` value and updated once;
    then each of the ``T`` iterations updates U, then V (``update(X, U, V)``, then
    ``update(Xᵀ, V, U)``), so the last factor updated is V (the coefficients, as in Hamburger).
    The input should be non-negative (apply a ReLU before); negative entries are not an error
    but the non-negativity constraints then bias the fit.

    **Rank 1** (``fast=True``, no ``return_factors``): MU and HALS both reduce to the scaled
    power iteration ``v = Xᵀu/‖u‖², u = Xv/‖v‖²``, so after T iterations ``U Vᵀ = P X`` with
    ``P = u uᵀ / ‖u‖²`` and ``u ∝ (X Xᵀ)ᵀ u0``. This is computed explicitly on the M×M Gram
    matrix when M <= N (two passes over X) or with matrix–vector products otherwise, with a
    hand-written backward (:mod:`lowrank.solvers.rank1`); results and gradients equal autograd
    through the general loop up to eps.

    Args:
        rank: the rank R (int), or a float compression ratio.
        iters: iterations in training.
        eval_iters: iterations in eval (default ``iters``).
        update: the update rule part (``mu`` or ``hals``).
        init: the init part of U (``uniform``, ``random``, ``online``, ``learned``, ``svd``, ``nndsvd``).
        grad_steps: ``None`` (backprop through every iteration) or k (the last k iterations);
            see :mod:`lowrank.solvers.base`.
        eps: the denominator guard (relative to the scaled data); default ``finfo(dtype).eps``.
        fp32: compute in float32 under autocast and for half inputs.
        return_factors: return ``(out, (U, V))``.
        fast: use the rank-1 fast path when R = 1.

    Shapes:
        ``x: (*batch, M, N)``, ``mask: (*batch, N)`` bool or ``None`` → ``(*batch, M, N)``.
    """

    nonnegative = True
    homogeneous = True

    def __init__(
        self,
        *,
        rank: int | float = 1,
        iters: int = 5,
        eval_iters: int | None = None,
        update: UpdateSpec = "mu",
        init: InitSpec = "uniform",
        grad_steps: int | None = None,
        eps: float | None = None,
        fp32: bool = True,
        return_factors: bool = False,
        fast: bool = True,
    ):
        super().__init__(
            rank=rank,
            iters=iters,
            eval_iters=eval_iters,
            init=init,
            grad_steps=grad_steps,
            eps=eps,
            fp32=fp32,
            return_factors=return_factors,
        )
        self.update = build("update", update)
        self.fast = fast

    def start_v(self, x: Tensor, u0: Tensor, mask: Tensor | None, eps: float) -> Tensor:
        """V before its first update: the update's ``start`` value, ``(*batch, N, R)``."""
        v = torch.full(
            (*x.shape[:-2], x.shape[-1], u0.shape[-1]), self.update.start, dtype=x.dtype, device=x.device
        )
        return v if mask is None else v * mask

    def initial_u(self, x: Tensor, rank: int) -> Tensor:
        """``U0`` from the init; a no-grad scaled copy of X only for inits that read values."""
        if not getattr(self.init, "reads_values", False):
            return super().initial_u(x, rank)
        with torch.no_grad():
            return super().initial_u(x * inverse_scale(x), rank)

    def initial_state(self, x: Tensor, u0: Tensor, mask: Tensor | None, eps: float) -> State:
        """``(U0, V1, 1/s)``: V1 one update of V from :meth:`start_v`; ``s = max |X|``.

        X stays unscaled: the updates read it as ``X / s`` through their small products.
        """
        inv = inverse_scale(x)
        return u0, self.update(x.mT, self.start_v(x, u0, mask, eps), u0, eps, inv), inv

    def step(self, x: Tensor, state: State, mask: Tensor | None, eps: float) -> State:
        """One iteration: update U, then V."""
        u, v, inv = state
        u = self.update(x, u, v, eps, inv)
        return u, self.update(x.mT, v, u, eps, inv), inv

    def reconstruct(self, state: State) -> Tensor:
        """``s · U Vᵀ``: the reconstruction in the input's scale."""
        u, v, inv = state
        return (u @ v.mT) / inv

    def factors_of(self, state: State) -> tuple[Tensor, Tensor]:
        """``(U, s · V)``."""
        return state[0], state[1] / state[2]

    def _fast(self, rank: int) -> bool:
        return self.fast and rank == 1 and not (self.return_factors or self.store_factors)

    def prescale(self, rank: int) -> bool:
        """Never: both paths read X unscaled and scale small products (no copy of X's size)."""
        return False

    def recompute(self, rank: int) -> bool:
        """The rank-1 path has its own backward (it saves no activations): no recomputation."""
        return not self._fast(rank)

    def solve(
        self,
        x: Tensor,
        mask: Tensor | None,
        rank: int,
        iters: int,
        eps: float,
        start: State | None = None,
    ) -> tuple[Tensor, State]:
        """The general loop, or for rank 1 the Gram fast path (state ``(u (*batch, M, 1),)``)."""
        if not self._fast(rank):
            return super().solve(x, mask, rank, iters, eps, start)
        u0 = self.initial_u(x, rank)[..., 0]
        out, u = rank1_projector_nmf(x, u0, iters, self.grad_steps, eps)
        return out, (u.unsqueeze(-1),)
