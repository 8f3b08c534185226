"""Shared machinery of the factorization layers (kind ``solver``), their inits and update rules.

A factorization layer maps a batch of matrices ``X: (*batch, M, N)`` to factors
``U: (*batch, M, R)`` and ``V: (*batch, N, R)`` and returns the reconstruction ``U Vᵀ``.
:class:`Factorization` runs everything that is common to all families:

1. **dtype**: the factorization runs in float32 (float64 for float64 input) with autocast
   disabled, whatever the input dtype or autocast state (``fp32=False``: in the input dtype);
   the output is cast back to the input dtype.
2. **mask**: ``mask: (*batch, N)`` bool (``True`` = valid column). Masked columns of X are
   zeroed and the masked rows of V are zeroed after the initial state and after every step,
   so they add nothing to ``X V``, ``VᵀV`` or any other statistic of U: the factorization of
   the valid part is exactly the one of the valid columns alone. The output is 0 there.
3. **scale**: X is divided by ``s = max |X|`` per matrix (1 for an all-zero matrix) and the
   output multiplied back: ``out = s · f(X / s)``. This keeps tiny (1e-30) and huge (1e15)
   inputs away from float under/overflow and makes eps (and e.g. weak NMF's λ) relative to
   the data. ``s`` is differentiated, so gradients are those of ``s · f(X / s)`` exactly;
   families that are 1-homogeneous up to eps (NMF, semi-NMF) set ``homogeneous = True`` and
   ``s`` is then treated as a constant (its gradient contribution vanishes by Euler's theorem),
   which saves two tensors of X's size for backward. NMF goes further (``prescale`` is
   ``False``): it never forms ``X / s`` and scales its small products ``X H · (1/s)`` instead,
   so autograd keeps no scaled copy of X.
4. **eps**: ``eps=None`` means ``torch.finfo(compute dtype).eps`` (relative to the scaled data).
5. **rank**: an int, or a float ``c`` read as a compression ratio: ``R = max(1, ⌊MN / (c (M+N))⌋)``
   (the factors hold ``1/c`` of the entries of X), resolved at run time from ``M, N``.
6. **iterations and gradient modes** (``T = iters`` in training, ``eval_iters`` in eval):
   ``state = initial_state(X, U0)``, then ``T`` times ``state = step(X, state)``, then
   ``reconstruct(state)``.

   * ``grad_steps=None``: autograd through the initial state and every step.
   * ``grad_steps=k`` (``1 <= k < T``): the initial state and the first ``T - k`` steps run
     under ``torch.no_grad()``; the state they produce is a constant. The differentiated graph
     contains exactly the last ``k`` calls of ``step`` (as functions of the scaled X and of the
     detached incoming state) and the reconstruction. ``k >= T`` is the same as ``None``.
   * ``grad_steps=1`` is Hamburger's one-step gradient: only the last step (for NMF: one
     U-update followed by one V-update, at the no-grad fixed-point estimate) and ``U Vᵀ`` are
     differentiated.
   * memory: with ``grad_steps=k < T`` under autograd, the last k steps and the
     reconstruction run inside :func:`torch.utils.checkpoint.checkpoint` (non-reentrant) from
     the raw input and the detached head state, so autograd keeps only that state (for NMF at
     Hamburger size, 0.04 of the unrolled loop's saved memory) and backward runs the k steps
     again. Families with their own memory-light backward opt out (:meth:`Factorization.recompute`).
   * blocking: on CPU a large batch is processed in chunks of about ``chunk_bytes`` (8 MiB)
     of X, so the many passes of an iteration stay in the caches (results are identical, except
     that a per-call random init (``random``, ``random_train``) draws once per chunk).

   With ``grad_steps=k < iters`` the init receives no gradient, so ``init=learned`` requires
   ``grad_steps=None`` (checked at build time).
7. **init**: an ``init`` part (``uniform``, ``random``, ``online``, ``learned``, ``svd``,
   ``nndsvd``), built with ``lowrank.build.build("init", spec, rank=rank)``, gives
   ``U0: (*batch, M, R)``; families with ``nonnegative = True`` use ``|U0|``. In training the
   init's ``observe(U)`` hook sees the final (detached) U (the online/EMA init uses it).
   Blocks pass the matrices' row count M down with :meth:`Factorization.set_rows`, so table
   inits are sized at build time.
8. ``store_factors``: set ``module.store_factors = True`` and every forward keeps
   ``module.factors = (U (*batch, M, R), V (*batch, N, R))``, detached, in the input's scale
   (``U Vᵀ`` is the output). ``return_factors=True`` makes forward return ``(out, (U, V))``
   with gradient.

How a family plugs in
---------------------
Subclass :class:`Factorization`, call ``super().__init__`` with the common arguments, and
supply two methods (all tensors in the compute dtype, X scaled and masked):

* ``initial_state(x, u0, mask, eps) -> state``: ``state`` is a tuple whose first two entries
  are ``U (*batch, M, R)`` and ``V (*batch, N, R)``; further entries are free (e.g. a
  temperature-scaled similarity).
* ``step(x, state, mask, eps) -> state``: one iteration. ``mask`` is ``(*batch, N, 1)`` float or
  ``None``; if a step computes V and then uses it for U within one call, multiply V by ``mask``
  in between (the base masks V only between calls).

Optionally override ``reconstruct(state) -> (*batch, M, N)`` (default ``U @ Vᵀ``),
``factors_of(state) -> (U, V)`` (default the first two entries), ``factorize`` (the loop; see
:func:`run_iterations` to reuse the grad modes) or ``solve(x, mask, rank, iters, eps) ->
(out, state)`` (loop and reconstruction together, e.g. for a fast path such as NMF's rank 1;
such a path may also return ``False`` from ``prescale(rank)`` to receive X unscaled when it is
scale-equivariant by construction and guards its own range, saving a copy of X's size).
Register with ``@register("solver", name, test_spec=...)``. Update rules (kind ``update``)
subclass :class:`Update`; inits (kind ``init``) subclass :class:`Init`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..build import InitSpec, build
from ..kernels._switch import pinned as kernels_setting
from ._iterations import State, run_iterations
from ._numerics import (
    abs_max,
    compute_dtype,
    default_eps,
    hash_uniform,
    inverse_scale,
    matrix_scale,
    resolve_rank,
)
from ._parts import Init, Update

__all__ = [
    "Factorization",
    "abs_max",
    "Init",
    "Update",
    "compute_dtype",
    "default_eps",
    "hash_uniform",
    "inverse_scale",
    "matrix_scale",
    "resolve_rank",
    "run_iterations",
]


class Factorization(nn.Module):
    """Base class of the factorization layers: ``(*batch, M, N) -> (*batch, M, N)``.

    See the module docstring for what the base does and what a family supplies.

    Args:
        rank: the rank R, an int, or a float compression ratio (see
            :func:`~lowrank.solvers.base.resolve_rank`).
        iters: iterations T in training.
        eval_iters: iterations in eval mode (default ``iters``); an inference-time speed knob.
        init: the init part spec (kind ``init``), built with the context ``rank``.
        grad_steps: ``None`` (backprop through all iterations), or k (only the last k).
        eps: denominator guard, relative to the scaled data; ``None`` = ``finfo(dtype).eps``.
        fp32: run in float32 under autocast / for half inputs (float64 stays float64).
        return_factors: forward returns ``(out, (U, V))`` instead of ``out``.

    Raises:
        ValueError: a non-positive rank, iters or grad_steps, a negative eps, or
            ``init=learned`` with ``grad_steps < iters``.
    """

    #: families whose U must be non-negative use ``|U0|``.
    nonnegative: bool = True
    #: ``f(cX) = c f(X)`` (up to eps): the scale s is then not differentiated (see the module doc).
    homogeneous: bool = False

    def __init__(
        self,
        *,
        rank: int | float = 1,
        iters: int = 5,
        eval_iters: int | None = None,
        init: InitSpec = "uniform",
        grad_steps: int | None = None,
        eps: float | None = None,
        fp32: bool = True,
        return_factors: bool = False,
    ):
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank <= 0:
            raise ValueError(f"rank must be a positive int or a positive compression ratio, got {rank!r}")
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        if eval_iters is not None and eval_iters < 1:
            raise ValueError(f"eval_iters must be >= 1 (or none for iters), got {eval_iters}")
        if grad_steps is not None and grad_steps < 1:
            raise ValueError(
                f"grad_steps must be >= 1 (or none to backprop through every iteration), got {grad_steps}"
            )
        if eps is not None and not eps > 0:
            raise ValueError(f"eps must be > 0 (or none for finfo(dtype).eps), got {eps}")
        self.rank = rank
        self.iters = iters
        self.eval_iters = iters if eval_iters is None else eval_iters
        self.grad_steps = grad_steps
        self.eps = eps
        self.fp32 = fp32
        self.return_factors = return_factors
        self.store_factors = False
        self.factors: tuple[Tensor, Tensor] | None = None
        self.init = build("init", init, rank=rank)
        if getattr(self.init, "receives_gradient", False) and grad_steps is not None and grad_steps < iters:
            raise ValueError(
                f"init={getattr(self.init, 'spec', init)} learns U0 from the gradient, but with "
                f"grad_steps={grad_steps} < iters={iters} no gradient reaches it: use grad_steps=none "
                "or another init (online, uniform, random)"
            )

    def rank1_factors(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
        """Optional capability: without gradient, the rank-1 output as factors ``(u, w)``.

        Families with a rank-1 path (``nmf``) override it to return ``u (*batch, M)`` and
        ``w (*batch, N)`` with ``u wᵀ == self(x, mask)``, so a windowed matricizer can fold them
        back without the ``(M, N)`` product. The default declines (``None``): callers then run
        :meth:`forward`. Declared here so that blocks never probe for it with ``getattr``.

        Args:
            x: ``(*batch, M, N)``.
            mask: ``(*batch, N)`` bool or ``None``.

        Returns:
            ``(u, w)``, or ``None`` when the layer has no factor path for this call.
        """
        return None

    def set_rows(self, rows: int | None) -> None:
        """Tell the layer the row count ``M`` of the matrices it will see (``None``: unknown).

        Blocks call this right after building the solver, so that inits holding an ``(M, R)``
        table (``uniform``, ``online``, ``learned``) are sized at build time, not at the first
        forward (see :mod:`lowrank.solvers.inits`).
        """
        self.init.set_rows(rows)

    # ----------------------------------------------------------------------------- family hooks
    def initial_state(self, x: Tensor, u0: Tensor, mask: Tensor | None, eps: float) -> State:
        """Return the initial state ``(U, V, ...)`` from ``U0`` (families override)."""
        raise NotImplementedError

    def step(self, x: Tensor, state: State, mask: Tensor | None, eps: float) -> State:
        """Return the state after one iteration (families override)."""
        raise NotImplementedError

    def reconstruct(self, state: State) -> Tensor:
        """The reconstruction ``U Vᵀ: (*batch, M, N)`` of a state."""
        u, v = self.factors_of(state)
        return u @ v.mT

    def factors_of(self, state: State) -> tuple[Tensor, Tensor]:
        """The factors ``(U, V)`` of a state."""
        return state[0], state[1]

    # ------------------------------------------------------------------------------ machinery
    def resolve_rank(self, m: int, n: int) -> int:
        """The integer rank for ``(M, N)`` matrices."""
        return resolve_rank(self.rank, m, n)

    def initial_u(self, x: Tensor, rank: int) -> Tensor:
        """``U0`` from the init part (``|U0|`` for non-negative families)."""
        u0 = self.init(x, rank)
        return u0.abs() if self.nonnegative else u0

    def factorize(
        self,
        x: Tensor,
        mask: Tensor | None,
        rank: int,
        iters: int,
        eps: float,
        start: State | None = None,
    ) -> State:
        """Run the iterations on the scaled, masked ``x`` with the gradient mode.

        Args:
            x: ``(*batch, M, N)`` in the compute dtype, max |x| <= 1, masked columns zero.
            mask: ``(*batch, N, 1)`` float or ``None``.
            rank: the integer rank.
            iters: the number of iterations.
            eps: the denominator guard.
            start: a (detached) state to continue from instead of the initial state; the
                ``iters`` steps from it are all differentiated (the recomputed tail of a
                ``grad_steps=k`` layer).

        Returns:
            The final state.
        """

        def masked(state: State) -> State:
            if mask is None:
                return state
            return (state[0], state[1] * mask, *state[2:])

        def initial() -> State:
            if start is not None:
                return start
            return masked(self.initial_state(x, self.initial_u(x, rank), mask, eps))

        def step(state: State) -> State:
            return masked(self.step(x, state, mask, eps))

        return run_iterations(initial, step, iters, None if start is not None else self.grad_steps)

    def prescale(self, rank: int) -> bool:
        """Whether the base divides X by ``max |X|`` before :meth:`solve` (default ``True``).

        Return ``False`` only if :meth:`solve` is exactly scale-equivariant by itself and guards
        its own under/overflow (NMF's rank-1 path does: it saves a copy of X's size).
        """
        return True

    def recompute(self, rank: int, x: Tensor | None = None) -> bool:
        """Whether ``grad_steps=k`` runs its k differentiated steps twice instead of saving them
        (``x``: the call's input, for a family whose kernel backend decides).

        Default ``True``: the no-grad head runs first, then the last k steps and the
        reconstruction run under :func:`torch.utils.checkpoint.checkpoint` from the raw input
        and the detached head state, so autograd keeps neither their activations nor the
        scaled copy of X; backward re-runs them. A path with its own memory-light backward
        (NMF's rank 1) returns ``False``.
        """
        return True

    def solve(
        self,
        x: Tensor,
        mask: Tensor | None,
        rank: int,
        iters: int,
        eps: float,
        start: State | None = None,
    ) -> tuple[Tensor, State]:
        """Factorize and reconstruct: ``(U Vᵀ, state)`` for the scaled, masked ``x``.

        The default runs :meth:`factorize` then :meth:`reconstruct`; override for a fast path
        (the state must still start with ``U``, and with ``(U, V)`` when factors are requested).
        ``start`` is passed on to :meth:`factorize`.
        """
        state = self.factorize(x, mask, rank, iters, eps, start)
        return self.reconstruct(state), state

    def _settings(self, x: Any) -> tuple[int, torch.dtype, float, int]:
        """``(iters, dtype, eps, rank)`` of a call on ``x`` (a tensor, or anything with its
        ``shape`` and ``dtype``): ``iters`` in training else ``eval_iters``, the compute dtype,
        eps for it and the integer rank."""
        iters = self.iters if self.training else self.eval_iters
        dtype = compute_dtype(x.dtype, self.fp32)
        eps = self.eps if self.eps is not None else default_eps(dtype)
        return iters, dtype, eps, self.resolve_rank(x.shape[-2], x.shape[-1])

    def _check(self, x: Tensor, mask: Tensor | None) -> None:
        if x.dim() < 2:
            raise ValueError(
                f"{type(self).__name__} expects matrices (*batch, M, N), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} expects a floating tensor, got {x.dtype}")
        if mask is not None and (mask.shape != x.shape[:-2] + x.shape[-1:] or mask.dtype != torch.bool):
            raise ValueError(
                f"mask must be a bool tensor of shape (*batch, N) = {tuple(x.shape[:-2] + x.shape[-1:])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Any:
        """Factorize ``x: (*batch, M, N)`` and return its rank-R reconstruction ``(*batch, M, N)``.

        Args:
            x: the matrices.
            mask: ``(*batch, N)`` bool, ``True`` for valid columns, or ``None``.

        Returns:
            ``U Vᵀ`` in ``x``'s dtype (0 at masked columns); with ``return_factors``, also
            ``(U (*batch, M, R), V (*batch, N, R))``.
        """
        self._check(x, mask)
        iters, dtype, eps, rank = self._settings(x)
        # autocast off (the factorization runs in `dtype`); the meta device has no autocast, and
        # no context when autocast is off already (a torch.export program then has no autocast
        # region, which torch.export.load cannot read back)
        off = (
            contextlib.nullcontext()
            if x.device.type == "meta" or not torch.is_autocast_enabled(x.device.type)
            else torch.autocast(x.device.type, enabled=False)
        )
        with off:
            mf = None if mask is None else mask.to(dtype).unsqueeze(-1)
            rows = self._chunk_rows(x, dtype, rank)
            if rows >= x.shape[0]:
                out, u0, u, v = self._run(x, mf, dtype, rank, iters, eps)
            else:  # CPU cache blocking: independent matrices, a few MiB at a time
                # split, not slicing: backward joins the chunks' gradients in one cat instead of
                # one zero-filled tensor of X's size per chunk
                xs = x.split(rows)
                masks = [None] * len(xs) if mf is None else mf.split(rows)
                parts = [self._run(xi, mi, dtype, rank, iters, eps) for xi, mi in zip(xs, masks)]
                out, u0, u, v = (torch.cat(t) for t in zip(*parts))
            if self.training:
                self.init.observe(u0.detach())
            if self.store_factors:
                self.factors = (u.detach(), v.detach())
        out = out.to(x.dtype)
        if self.return_factors:
            return out, (u, v)
        return out

    #: on CPU, the batch is processed in chunks of about this many bytes (the working set of
    #: the many passes of an iteration then stays in the caches). Paths with their own
    #: blocking (NMF rank 1) opt out.
    chunk_bytes: int = 8 << 20

    def _chunk_rows(self, x: Tensor, dtype: torch.dtype, rank: int) -> int:
        """How many entries of the first batch dim one chunk holds (all of them off CPU)."""
        if x.device.type != "cpu" or x.dim() < 3 or not self.recompute(rank, x):
            return x.shape[0]
        per_row = x[0].numel() * torch.finfo(dtype).bits // 8
        return max(1, self.chunk_bytes // max(per_row, 1))

    def _run(
        self, x: Tensor, mf: Tensor | None, dtype: torch.dtype, rank: int, iters: int, eps: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One chunk: the gradient mode's head and tail; ``(out, state[0], U, V)``."""
        k = self.grad_steps
        if not (torch.is_grad_enabled() and k is not None and k < iters and self.recompute(rank, x)):
            return self._finish(x, mf, dtype, rank, iters, eps, None)
        with torch.no_grad():  # the head: initial state and the first T - k steps
            start = self.factorize(self._prepare(x, mf, dtype, rank)[0], mf, rank, iters - k, eps)

        setting = kernels_setting()

        def tail(x: Tensor, *start: Tensor) -> tuple[Tensor, ...]:
            # backward recomputes this under the forward's kernel backend, wherever it runs
            # (under compile the backend is fixed at trace time: nothing to pin)
            if torch.compiler.is_compiling():
                return self._finish(x, mf, dtype, rank, k, eps, start)
            with setting:
                return self._finish(x, mf, dtype, rank, k, eps, start)

        return checkpoint(tail, x, *start, use_reentrant=False, preserve_rng_state=False)

    def _prepare(
        self, x: Tensor, mf: Tensor | None, dtype: torch.dtype, rank: int
    ) -> tuple[Tensor, Tensor | None]:
        """X in the compute dtype, masked and divided by its scale; and the scale (or ``None``)."""
        xc = x.to(dtype)
        if mf is not None:
            xc = xc * mf.mT
        if not self.prescale(rank):
            return xc, None
        scale = matrix_scale(xc.detach() if self.homogeneous else xc)
        return xc / scale, scale

    def _finish(
        self,
        x: Tensor,
        mf: Tensor | None,
        dtype: torch.dtype,
        rank: int,
        iters: int,
        eps: float,
        start: State | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Prepare, solve (from ``start`` if given) and scale back: ``(out, state[0], U, V)``.

        ``state[0]`` is what the init observes; ``U, V`` are the factors in the input's scale
        when they are requested (``store_factors`` / ``return_factors``), else placeholders.
        """
        xc, scale = self._prepare(x, mf, dtype, rank)
        out, state = self.solve(xc, mf, rank, iters, eps, start)
        want = self.store_factors or self.return_factors
        u, v = self.factors_of(state) if want else (state[0], state[0])
        if scale is not None:
            out = out * scale
            v = v * scale if want else v
        return out, state[0], u, v
