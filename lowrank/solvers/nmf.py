"""Non-negative matrix factorization layer ``nmf`` (update ``mu`` or ``hals``; rank-1 fast path)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import kernels
from ..build import UpdateSpec, build
from ..registry import register
from .base import Factorization, State, inverse_scale
from .updates import HALSUpdate, MUUpdate

__all__ = ["NMF"]


@register("solver", "nmf", test_spec="nmf(rank=2, iters=3)")
class NMF(Factorization):
    """NMF layer: ``X ≈ U Vᵀ`` with ``U, V >= 0``; returns ``U Vᵀ`` (Lee & Seung; Cichocki & Phan).

    ``U0`` comes from ``init``; V is filled with the update's ``start`` value and updated once;
    then each of the ``T`` iterations updates U, then V (``update(X, U, V)``, then
    ``update(Xᵀ, V, U)``), so the last factor updated is V (the coefficients, as in Hamburger).
    The input should be non-negative (apply a ReLU before); negative entries are not an error
    but the non-negativity constraints then bias the fit.

    **Kernels** (:mod:`lowrank.kernels`, chosen by :func:`lowrank.use_kernels`):

    * rank 1 (``fast=True``, no ``return_factors``): MU and HALS both reduce to the scaled
      power iteration ``v = Xᵀu/‖u‖², u = Xv/‖v‖²``, so after T iterations ``U Vᵀ = P X`` with
      ``P = u uᵀ / ‖u‖²`` and ``u ∝ (X Xᵀ)ᵀ u0``: :func:`lowrank.kernels.nmf_rank1` (``cpu``:
      on the M×M Gram matrix with a hand-written backward; ``triton``: one program per matrix);
      results and gradients equal autograd through the general loop up to eps;
    * rank >= 2: :func:`lowrank.kernels.nmf_iterations` (``cpu``, HALS: the whole loop as one
      node in place on cache-sized sub-chunks, ``grad_steps=k`` through the base's recomputed
      tail; ``triton``, MU and HALS up to rank 16, M <= 128: one program per matrix with its
      own ``grad_steps`` backward); else (``reference``, ``torch.compile`` without triton, MU on
      CPU) the general loop below.

    Args:
        update: the update rule part (``mu`` or ``hals``).
        fast: use the rank-1 fast path when R = 1.
        **shared: ``rank``, ``iters``, ``eval_iters``, ``init``, ``grad_steps``, ``eps``, ``fp32``,
            ``return_factors`` of :class:`~lowrank.solvers.base.Factorization` (part of the
            signature: see :func:`lowrank.registry.inherit_signature`).

    Shapes:
        ``x: (*batch, M, N)``, ``mask: (*batch, N)`` bool or ``None`` → ``(*batch, M, N)``.
    """

    nonnegative = True
    homogeneous = True
    #: private switch: ``False`` forces the general autograd loop at rank >= 2 (tests, benchmarks).
    _fused_hals: bool = True

    def __init__(self, *, update: UpdateSpec = "mu", fast: bool = True, **shared: Any):
        super().__init__(**shared)
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

    def _rule(self) -> str | None:
        """The update rule's kernel name (``None``: a rule without kernels)."""
        return {HALSUpdate: "hals", MUUpdate: "mu"}.get(type(self.update))

    def _kernel(self, x: Tensor, rank: int) -> str:
        """The kernel backend of a rank >= 2 call (``reference``: the general loop)."""
        # the kernels start V from the update's constant: a subclass with its own start (HamNMF's
        # soft assignment) runs the general loop at rank >= 2
        own_start = type(self).start_v is NMF.start_v
        fused = self._fused_hals and own_start and rank >= 2
        return kernels.nmf_backend(x, rank, self._rule() if fused else None)

    def _kernel_loop(
        self, x: Tensor, rank: int, iters: int, eps: float, start: State | None, need_out: bool
    ) -> tuple[Tensor | None, State]:
        """:func:`lowrank.kernels.nmf_iterations` from the init (or, on ``cpu``, from ``start``):
        ``(out, (U, V, 1/s))``; ``(out, (U,))`` when neither the factors nor a state to continue
        from are needed (the Triton kernels scale X themselves: no pass over X here)."""
        want = self.store_factors or self.return_factors
        cpu = self._kernel(x, rank) == "cpu"
        if start is None:
            u0, v0, inv = self.initial_u(x, rank), None, inverse_scale(x) if cpu or want else None
        else:
            u0, v0, inv = start
        out, u, v = kernels.nmf_iterations(
            x, u0, iters, eps, self._rule(), grad_steps=self.grad_steps, v0=v0, inv=inv,
            need_out=need_out, need_v=want,
        )  # fmt: skip
        return out, (u,) if inv is None else (u, u if v is None else v, inv)

    def factorize(
        self,
        x: Tensor,
        mask: Tensor | None,
        rank: int,
        iters: int,
        eps: float,
        start: State | None = None,
    ) -> State:
        """The general loop; HALS's fused loop where it applies (X is already masked, and V's
        masked rows stay exactly 0 without the mask)."""
        # with grad_steps=k and autograd on, a direct call is the general loop's no-grad head (the
        # base runs it under no_grad)
        head = start is None and self.grad_steps is not None and torch.is_grad_enabled()
        if head or self._kernel(x, rank) != "cpu":
            return super().factorize(x, mask, rank, iters, eps, start)
        return self._kernel_loop(x, rank, iters, eps, start, need_out=False)[1]

    def prescale(self, rank: int) -> bool:
        """Never: both paths read X unscaled and scale small products (no copy of X's size)."""
        return False

    def recompute(self, rank: int, x: Tensor | None = None) -> bool:
        """The rank-1 path and the Triton kernels have their own backward (they save no
        activations and take ``grad_steps`` themselves): no recomputation."""
        return not (self._fast(rank) or (x is not None and self._kernel(x, rank) == "triton"))

    def solve(
        self,
        x: Tensor,
        mask: Tensor | None,
        rank: int,
        iters: int,
        eps: float,
        start: State | None = None,
    ) -> tuple[Tensor, State]:
        """The general loop, the fused HALS loop, or for rank 1 the Gram fast path (state
        ``(u (*batch, M, 1),)``)."""
        if self._fast(rank):
            u0 = self.initial_u(x, rank)[..., 0]
            out, u = kernels.nmf_rank1(x, u0, iters, self.grad_steps, eps)
            return out, (u.unsqueeze(-1),)
        kernel = self._kernel(x, rank)
        if kernel == "cpu" or (kernel == "triton" and start is None):
            return self._kernel_loop(x, rank, iters, eps, start, need_out=True)
        return super().solve(x, mask, rank, iters, eps, start)

    def rank1_factors(self, x: Any, mask: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
        """Without gradient, the rank-1 output as factors ``(u (*batch, M), w (*batch, N))``.

        ``u wᵀ`` equals ``self(x, mask)`` (same iteration, same arithmetic; the init observes
        ``u`` in training as in :meth:`forward`); a windowed matricizer folds the factors back
        without forming the ``(M, N)`` product (:meth:`~lowrank.matricize.base.Matricize.inverse_rank1`).

        Args:
            x: ``(*batch, M, N)``, or lazy ``(B', M, N)`` matrices with ``chunks()`` (e.g.
                :class:`~lowrank.matricize._window_inference.LazyWindows`): each chunk is solved while it
                is in cache and the batch of matrices never exists (a per-call random init
                gathers them all first, so that its draw is the one :meth:`forward` makes).
            mask: ``(*batch, N)`` bool or ``None``.

        Returns:
            The factors in ``x``'s dtype, or ``None`` when the rank-1 fast path does not apply
            (rank > 1, ``fast=False``, factors requested or stored, autograd or compile active).
        """
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or x.device.type == "meta":
            return None
        iters, dtype, eps, rank = self._settings(x)
        if not self._fast(rank):
            return None
        if not isinstance(x, Tensor) and not getattr(self.init, "per_matrix", True):
            x = x.materialize()
        if isinstance(x, Tensor):
            self._check(x, mask)

        def solve(chunk: Tensor, start: int) -> tuple[Tensor, Tensor]:
            stop = start + chunk.shape[0]
            mf = None if mask is None else mask[start:stop].to(dtype).unsqueeze(-1)
            xc, _ = self._prepare(chunk, mf, dtype, rank)
            return kernels.nmf_rank1_factors(xc, self.initial_u(xc, rank)[..., 0], iters, eps)

        with torch.autocast(x.device.type, enabled=False):
            if isinstance(x, Tensor):
                u, w = solve(x, 0)
            else:
                u = w = None
                for start, chunk in x.chunks():
                    uc, wc = solve(chunk, start)
                    if u is None:
                        u, w = uc.new_empty(x.shape[:-1]), wc.new_empty((*x.shape[:-2], x.shape[-1]))
                    u[start : start + len(uc)], w[start : start + len(wc)] = uc, wc
            if self.training:
                self.init.observe(u.unsqueeze(-1))
        return u.to(x.dtype), w.to(x.dtype)
