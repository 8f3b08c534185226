"""Hamburger-specific solver parts: ``ham_nmf`` and the ``seeded`` / ``random_train`` inits.

- ``ham_nmf``: NMF with Hamburger's coefficient init ``C0 = softmax_R(cos(D0, X)/T)`` (the
  paper's App. F: "equivalent to a single update in spherical k-means"), then the usual MU/HALS
  iterations of :class:`~lowrank.solvers.nmf.NMF`.
- ``seeded``: a fixed U(0, 1) init drawn from a seed on every call, for any matrix height
  (unlike the ``uniform`` table, which serves one height): deterministic and stateless — what
  the channel view of a Hamburger (rows = positions, a size that varies) needs.
- ``random_train``: a fresh draw per call in training (Hamburger's "inner augmentation", the
  paper's best init) and the ``seeded`` draw in eval, so evaluation is deterministic.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..build import InitSpec
from ..registry import register
from .base import Init, hash_uniform
from .nmf import NMF
from .vq import soft_assign, unit_columns

__all__ = ["HamNMF", "RandomTrainInit", "SeededInit"]


@register("init", "seeded", test_spec="vq(rank=2, iters=2, init=seeded)")
class SeededInit(Init):
    """Fixed U(0, 1) init drawn from ``seed`` on every call, for any matrix height M.

    Same values as ``uniform(seed=...)`` for the same ``(M, R)``, but nothing is stored, so one
    module serves matrices of any height (e.g. positions in a Hamburger's channel view).

    Args:
        rank: the solver's rank (context).
        seed: the seed (the global RNG is never used).
    """

    def __init__(self, *, rank: int | float | None = None, seed: int = 0):
        super().__init__()
        self.seed = seed

    def forward(self, x: Tensor, rank: int) -> Tensor:
        """``U0: (*batch, M, rank)``, the same table for every matrix and every call."""
        u0 = hash_uniform((x.shape[-2], rank), seed=self.seed, device=x.device, dtype=x.dtype)
        return u0.expand(*x.shape[:-2], -1, -1)


@register("init", "random_train", test_spec="cd(rank=2, iters=2, init=random_train)")
class RandomTrainInit(Init):
    """Random U(0, 1) per call and per matrix in training; the ``seeded`` draw in eval.

    Training gets Hamburger's random-init augmentation; two eval passes give identical
    outputs. Draws come from a counter-based hash (a buffer advanced by every training call).

    Args:
        rank: the solver's rank (context).
        seed: the seed of both the training draws and the eval table.
    """

    def __init__(self, *, rank: int | float | None = None, seed: int = 0):
        super().__init__()
        self.seed = seed
        self.register_buffer("counter", torch.zeros((), dtype=torch.int64))

    def forward(self, x: Tensor, rank: int) -> Tensor:
        """``U0: (*batch, M, rank)``."""
        if not self.training:
            u0 = hash_uniform((x.shape[-2], rank), seed=self.seed, device=x.device, dtype=x.dtype)
            return u0.expand(*x.shape[:-2], -1, -1)
        shape = (*x.shape[:-2], x.shape[-2], rank)
        counter = self.counter.to(x.device) + 1  # counter 0 is the eval table's stream
        u0 = hash_uniform(shape, seed=self.seed, counter=counter, device=x.device, dtype=x.dtype)
        self.counter.add_(1)
        return u0


@register("solver", "ham_nmf", test_spec="ham_nmf(rank=2, iters=2)")
class HamNMF(NMF):
    """NMF with Hamburger's coefficient init: ``V0 = softmax_R(cos(X, U0)/T)``, then NMF.

    The state starts at ``(U0, update(Xᵀ, V0, U0))``; each of the ``T`` iterations then updates
    U, then V — the reference's sequence (C init, ``T`` × (C, D) updates, a final C update).
    At rank 1 the softmax is all ones, which is NMF's own start: the rank-1 fast path applies.

    Args:
        rank: the rank R (int), or a float compression ratio (paper: 64 at d=512).
        temperature: the softmax temperature of the coefficient init (paper: 1; small values
            make C0 nearly one-hot, which MU cannot move away from).
        iters: iterations in training (paper: 6); ``eval_iters`` defaults to it (paper: 7).
        init: init part of U (default ``random_train``: random in training, fixed in eval).
        grad_steps: ``None`` or k; default 1, Hamburger's one-step gradient.
        **shared: the other keywords of
            :class:`~lowrank.solvers.nmf.NMF` (``update``, ``eps``, ``fast``, ...)
            (in the signature: see :func:`lowrank.registry.inherit_signature`).

    Shapes:
        ``x: (*batch, M, N)`` non-negative, ``mask: (*batch, N)`` bool or ``None`` →
        ``(*batch, M, N)``.

    Raises:
        ValueError: ``temperature <= 0`` and the checks of :class:`~lowrank.solvers.nmf.NMF`.
    """

    def __init__(
        self,
        *,
        rank: int | float = 64,
        temperature: float = 1.0,
        iters: int = 6,
        init: InitSpec = "random_train",
        grad_steps: int | None = 1,
        **shared: Any,
    ):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        super().__init__(rank=rank, iters=iters, init=init, grad_steps=grad_steps, **shared)
        self.temperature = temperature

    def start_v(self, x: Tensor, u0: Tensor, mask: Tensor | None, eps: float) -> Tensor:
        """``V0 = softmax_R(cos(X, U0)/T)`` (scale-free), 0 at masked columns."""
        v0 = soft_assign(unit_columns(x, eps), u0, self.temperature, eps)
        return v0 if mask is None else v0 * mask

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
