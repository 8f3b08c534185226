"""Initializations of the left factor ``U0: (*batch, M, R)`` (kind ``init``).

``uniform``, ``online`` and ``learned`` hold an ``(M, R)`` table, sized when the module is
built: the blocks know the matrices' row count ``M`` (a head dim, ``dim/heads``) and pass it
down through the solver (:meth:`~lowrank.solvers.base.Factorization.set_rows`), so the table
exists after construction — an optimizer made before the first forward trains a ``learned``
table, DDP and ``AveragedModel`` see every parameter and buffer, and ``torch.compile`` traces
once. ``dim=M`` sizes it the same way for a solver built on its own.

Only where ``M`` cannot be known at build time (a solver built without ``dim`` and used on
its own, a channel-view matricizer whose rows are voxels, a float compression-ratio rank
resolved from ``(M, N)`` at run time) the table is lazy, with PyTorch's ``LazyModuleMixin``
protocol: an uninitialized parameter or buffer sized on the first call by
``initialize_parameters``. As with any lazy module, run one forward before creating an
optimizer or wrapping the model (DDP says so), or load a state dict (it sizes the table).
All random numbers come from :func:`~lowrank.solvers.base.hash_uniform` (seeded,
counter-based, on the input's device): the global RNG is never touched.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter, is_lazy

from ..registry import register
from .base import Init, hash_uniform

__all__ = ["LearnedInit", "NNDSVDInit", "OnlineInit", "RandomInit", "SVDInit", "UniformInit"]


class _LazyBuffer(UninitializedBuffer):
    """An uninitialized buffer that can be deep-copied (as ``UninitializedParameter`` can)."""

    def __deepcopy__(self, memo: dict) -> _LazyBuffer:
        if id(self) not in memo:
            # torch's stubs omit UninitializedBuffer's factory keywords (device, dtype)
            copy = type(self)(requires_grad=self.requires_grad, device=self.device, dtype=self.dtype)  # type: ignore[call-arg]
            memo[id(self)] = copy
        return memo[id(self)]


def _int_rank(rank: int | float | None) -> int | None:
    """The rank if it is a plain int (a float compression ratio is resolved at run time)."""
    return rank if isinstance(rank, int) and not isinstance(rank, bool) else None


class _TableInit(LazyModuleMixin, Init):
    """An ``(M, R)`` table drawn U(0, 1) from ``seed``, sized at build when ``M`` and ``R`` are known.

    Sized in ``__init__`` (``dim`` given) or by :meth:`set_rows` (the block that builds the
    solver); otherwise lazy (``initialize_parameters`` sizes it on the first call).
    """

    _is_parameter = False
    cls_to_become = None

    def __init__(self, *, rank: int | float | None = None, dim: int | None = None, seed: int = 0):
        super().__init__()
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be >= 1 (the rows M of the matrices) or none, got {dim}")
        self.seed = seed
        self.dim = dim
        self.rank = _int_rank(rank)
        if self._is_parameter:
            self.weight = UninitializedParameter()
        else:
            self.register_buffer("weight", _LazyBuffer())
        self.set_rows(dim)

    def _draw(self, m: int, r: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        return hash_uniform((m, r), seed=self.seed, device=device, dtype=dtype)

    def _materialize(self, m: int, r: int, device: torch.device, dtype: torch.dtype) -> None:
        if torch.device(device) != self.weight.device:
            if self._is_parameter:  # as PyTorch's lazy modules: parameters stay where the module is
                raise RuntimeError(
                    f"{type(self).__name__}: the solver is on {self.weight.device} but its first input "
                    f"is on {device}; move the model first (model.to({str(device)!r}))"
                )
            # a buffer follows the first input (as the table did before it was sized at build)
            self._buffers["weight"] = _LazyBuffer(device=device, dtype=dtype)  # type: ignore[call-arg]
        with torch.no_grad():
            self.weight.materialize((m, r), device=device, dtype=dtype)
            self.weight.copy_(self._draw(m, r, device, dtype))

    def set_rows(self, rows: int | None) -> None:
        """Size the table for matrices of ``rows`` rows now (no-op if ``rows`` or the rank is unknown).

        Raises:
            ValueError: the table is already sized for another height.
        """
        if rows is None or self.rank is None:
            return
        if not is_lazy(self.weight):
            if self.weight.shape[0] != rows:
                raise ValueError(
                    f"{type(self).__name__} holds a table for M={self.weight.shape[0]} rows, not {rows}: "
                    "a table init serves one matrix height; build a new solver for another one"
                )
            return
        self._materialize(rows, self.rank, self.weight.device, torch.get_default_dtype())
        # sized: the lazy protocol's hooks are not needed any more (a plain module from now on)
        for hook in ("_initialize_hook", "_load_hook"):
            if hasattr(self, hook):
                getattr(self, hook).remove()
                delattr(self, hook)

    def initialize_parameters(self, x: Tensor, rank: int) -> None:
        """The lazy protocol: size the table from the first call's ``x: (*batch, M, N)``."""
        if is_lazy(self.weight):
            dtype = x.dtype if x.dtype == torch.float64 else torch.float32
            self._materialize(x.shape[-2], rank, x.device, dtype)

    def table(self, x: Tensor, rank: int) -> Tensor:
        """The ``(M, R)`` table for ``x``."""
        m = x.shape[-2]
        rows, cols = self.weight.shape
        if rows != m or cols < rank:
            raise ValueError(
                f"{type(self).__name__} holds a ({rows}, {cols}) table but the matrices have M={m} rows "
                f"and rank {rank}: a table init serves one matrix height; build a new solver (or give "
                "an int rank and dim=M)"
            )
        return self.weight[:, :rank].to(x.dtype)

    def forward(self, x: Tensor, rank: int) -> Tensor:
        """``U0: (*batch, M, rank)``, the table for every matrix of the batch."""
        return self.table(x, rank).expand(*x.shape[:-2], -1, -1)


@register("init", "uniform", test_spec="nmf(rank=2, init=uniform)")
class UniformInit(_TableInit):
    """Fixed U(0, 1) init: an ``(M, R)`` buffer drawn once from ``seed``, saved in the state dict.

    Args:
        rank: the solver's rank (context).
        dim: the rows M of the matrices, for a solver built on its own (blocks pass M down
            themselves); with an int rank the buffer is drawn at construction, else on the first
            call (lazy).
        seed: the seed of the draw (deterministic; the global RNG is not used).
    """


@register("init", "learned", test_spec="nmf(rank=2, init=learned)")
class LearnedInit(_TableInit):
    """Learned init: an ``(M, R)`` parameter (started U(0, 1)) that receives the gradient.

    Non-negative solvers use its absolute value. Requires ``grad_steps=None`` (with fewer
    differentiated steps no gradient reaches it; the solver checks this at build time).

    Args:
        rank: the solver's rank (context).
        dim: the rows M, for a solver built on its own (blocks pass M down themselves); with
            an int rank the parameter exists at construction, else it is lazy (see the module
            docstring).
        seed: the seed of the starting values.
    """

    _is_parameter = True
    receives_gradient = True


@register("init", "online", test_spec="nmf(rank=2, init=online(momentum=0.9))")
class OnlineInit(_TableInit):
    """Online (EMA) init (Hamburger): U0 is a running average of the final U seen in training.

    After each training forward, every column of the final U is scaled to unit L2 norm,
    averaged over the batch and blended in: ``table ← momentum·table + (1 − momentum)·mean``,
    then the table's columns are renormalized. Eval forwards do not change it.

    Args:
        rank: the solver's rank (context).
        momentum: the EMA momentum in [0, 1).
        dim: the rows M (see ``uniform``).
        seed: the seed of the starting table.
    """

    def __init__(
        self, *, rank: int | float | None = None, momentum: float = 0.9, dim: int | None = None, seed: int = 0
    ):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        super().__init__(rank=rank, dim=dim, seed=seed)

    def _draw(self, m: int, r: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        return _unit_columns(super()._draw(m, r, device, dtype))

    @torch.no_grad()
    def observe(self, u: Tensor) -> None:
        """Blend the batch mean of the unit-normalized columns of ``u: (*batch, M, R)`` in."""
        if is_lazy(self.weight) or self.weight.shape[1] != u.shape[-1]:
            return
        mean = _unit_columns(u).reshape(-1, *u.shape[-2:]).mean(0).to(self.weight.dtype)
        self.weight.mul_(self.momentum).add_(mean, alpha=1.0 - self.momentum)
        self.weight.copy_(_unit_columns(self.weight))


def _unit_columns(u: Tensor) -> Tensor:
    norm = u.square().sum(-2, keepdim=True).sqrt()
    return u / norm.clamp_min(torch.finfo(u.dtype).tiny ** 0.5)


@register("init", "random", test_spec="nmf(rank=2, init=random)")
class RandomInit(Init):
    """Fresh U(0, 1) init on every call (acts as augmentation, Hamburger), per matrix.

    Drawn with a counter-based hash on the input's device (:func:`hash_uniform`); the counter
    is a buffer advanced by every call, so runs are reproducible from ``seed`` and the global
    RNG is never touched. Compiles without graph breaks.

    Args:
        rank: the solver's rank (context).
        seed: the seed.
    """

    per_matrix = False  # one draw per call over the whole batch

    def __init__(self, *, rank: int | float | None = None, seed: int = 0):
        super().__init__()
        self.seed = seed
        self.register_buffer("counter", torch.zeros((), dtype=torch.int64))

    def forward(self, x: Tensor, rank: int) -> Tensor:
        """``U0: (*batch, M, rank)``, a new draw per call and per matrix."""
        shape = (*x.shape[:-2], x.shape[-2], rank)
        u0 = hash_uniform(
            shape, seed=self.seed, counter=self.counter.to(x.device), device=x.device, dtype=x.dtype
        )
        self.counter.add_(1)
        return u0


def _svd(x: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Leading ``rank`` singular triplets of ``x: (*batch, M, N)`` (no gradient), padded if needed."""
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        k = min(rank, s.shape[-1])
        return u[..., :k], s[..., :k], vh[..., :k, :].mT


def _pad(u0: Tensor, x: Tensor, rank: int, seed: int) -> Tensor:
    """Fill columns beyond ``min(M, N)`` with small uniform values (rank > min(M, N))."""
    missing = rank - u0.shape[-1]
    if missing <= 0:
        return u0
    shape = (*x.shape[:-2], x.shape[-2], missing)
    scale = u0.abs().mean((-2, -1), keepdim=True) if u0.shape[-1] else torch.ones_like(x[..., :1, :1])
    extra = hash_uniform(shape, seed=seed, device=x.device, dtype=x.dtype) * scale
    return torch.cat([u0, extra], dim=-1)


@register("init", "svd", test_spec="semi_nmf(rank=2, init=svd)")
class SVDInit(Init):
    """SVD init: ``U0 = U_R sqrt(S_R)`` of the (masked, scaled) input, batched.

    Each column's sign is chosen so that its sum is >= 0; non-negative solvers then use
    ``|U0|``. No gradient flows through the SVD (its gradient is unstable at repeated singular
    values); the iterations carry it. Ranks beyond ``min(M, N)`` are padded with small
    positive values.

    Args:
        rank: the solver's rank (context).
        seed: the seed of the padding columns.
    """

    reads_values = True

    def __init__(self, *, rank: int | float | None = None, seed: int = 0):
        super().__init__()
        self.seed = seed

    def forward(self, x: Tensor, rank: int) -> Tensor:
        """``U0: (*batch, M, rank)``."""
        u, s, _ = _svd(x, rank)
        u0 = u * s.sqrt().unsqueeze(-2)
        sign = torch.where(u0.sum(-2, keepdim=True) < 0, -1.0, 1.0).to(u0.dtype)
        return _pad(u0 * sign, x, rank, self.seed)


@register("init", "nndsvd", test_spec="nmf(rank=2, init=nndsvd)")
class NNDSVDInit(Init):
    """NNDSVD init (Boutsidis & Gallopoulos 2008) of the left factor, batched.

    Column 0 is ``sqrt(s_0)|u_0|``; column r keeps the positive or the negative parts of
    ``(u_r, v_r)``, whichever pair has the larger product of norms, scaled by
    ``sqrt(s_r · that product)``. With ``fill`` (NNDSVDa), zeros are replaced by the mean of U0
    so that multiplicative updates can move them. No gradient flows through the SVD.

    Args:
        rank: the solver's rank (context).
        fill: replace exact zeros by the mean (NNDSVDa).
        seed: the seed of the padding columns (rank > min(M, N)).
    """

    reads_values = True

    def __init__(self, *, rank: int | float | None = None, fill: bool = True, seed: int = 0):
        super().__init__()
        self.fill = fill
        self.seed = seed

    def forward(self, x: Tensor, rank: int) -> Tensor:
        """``U0: (*batch, M, rank)``, non-negative."""
        u, s, v = _svd(x, rank)
        up, un, vp, vn = u.clamp_min(0), (-u).clamp_min(0), v.clamp_min(0), (-v).clamp_min(0)
        nup, nun = up.norm(dim=-2, keepdim=True), un.norm(dim=-2, keepdim=True)
        nvp, nvn = vp.norm(dim=-2, keepdim=True), vn.norm(dim=-2, keepdim=True)
        mp, mn = nup * nvp, nun * nvn
        tiny = torch.finfo(x.dtype).tiny
        pos = up / nup.clamp_min(tiny) * (s.unsqueeze(-2) * mp).sqrt()
        neg = un / nun.clamp_min(tiny) * (s.unsqueeze(-2) * mn).sqrt()
        u0 = torch.where(mp >= mn, pos, neg)
        if self.fill:
            mean = u0.mean((-2, -1), keepdim=True)
            u0 = torch.where(u0 > 0, u0, mean)
        return _pad(u0, x, rank, self.seed)
