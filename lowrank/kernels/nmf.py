"""The NMF layer's operations, dispatched to a backend (see :mod:`lowrank.kernels`).

* :func:`nmf_rank1`: rank-1 NMF (MU ≡ HALS at R = 1) as the scaled power iteration, with the
  solver's ``grad_steps``; ``reference`` is the textbook loop, ``cpu`` the Gram-matrix node with a
  hand-written backward (:mod:`.cpu.rank1`), ``triton`` one program per matrix.
* :func:`nmf_rank1_factors`: the same without gradient, as the factors ``(u, w)``.
* :func:`nmf_iterations`: MU or HALS at rank R from ``U0``; ``cpu`` is the fused HALS node
  (:mod:`.cpu.hals`; MU has none), ``triton`` one program per matrix for R <= 16, M <= 128.

Each returns what :mod:`lowrank.kernels.reference` returns, in every backend.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..solvers._numerics import inverse_scale
from . import reference
from ._switch import backend_for
from .cpu.hals import hals_fused
from .cpu.rank1 import rank1_factors, rank1_projector_nmf

__all__ = ["nmf_backend", "nmf_iterations", "nmf_rank1", "nmf_rank1_factors"]


def _diff(iters: int, grad_steps: int | None) -> int:
    """Differentiated iterations: all without autograd or for ``grad_steps`` None / >= T."""
    if grad_steps is None or grad_steps >= iters or not torch.is_grad_enabled():
        return iters
    return grad_steps


def _triton_ok(x: Tensor, rank: int) -> bool:
    from .triton import supports_nmf

    return supports_nmf(x, rank)


def nmf_backend(x: Tensor, rank: int, update: str | None) -> str:
    """The backend :func:`nmf_rank1` (rank 1) or :func:`nmf_iterations` runs for ``x``.

    Args:
        x: ``(*batch, M, N)``.
        rank: R.
        update: ``"mu"``, ``"hals"`` or ``None`` (another rule: ``reference``).
    """
    if update is None:
        return "reference"
    cpu_ok = rank == 1 or update == "hals"
    return backend_for(x.device, cpu_ok=cpu_ok, triton_ok=_triton_ok(x, rank))


def nmf_rank1(x: Tensor, u0: Tensor, iters: int, grad_steps: int | None, eps: float) -> tuple[Tensor, Tensor]:
    """Rank-1 NMF after ``iters`` iterations: ``(P X, u)``, ``P = u uᵀ / (‖u‖² + eps²)``.

    Args:
        x: ``(*batch, M, N)`` >= 0, masked, unscaled (the iteration reads ``X / max|X|``).
        u0: ``(*batch, M)`` >= 0.
        iters: T.
        grad_steps: ``None`` or k (only the last k iterations carry gradient).
        eps: the guard.

    Returns:
        ``(out (*batch, M, N), u (*batch, M))``, ``u`` the final unit direction (no gradient).
    """
    backend = nmf_backend(x, 1, "mu")
    if backend == "cpu":
        return rank1_projector_nmf(x, u0, iters, grad_steps, eps)
    batch, (m, n) = x.shape[:-2], x.shape[-2:]
    xb, ub, diff = x.reshape(-1, m, n), u0.reshape(-1, m), _diff(iters, grad_steps)
    if backend == "triton":
        from .triton import nmf_rank1 as run
    else:
        run = reference.nmf_rank1
    out, u = run(xb, ub, iters, diff, eps)
    return out.reshape(*batch, m, n), u.reshape(*batch, m)


def nmf_rank1_factors(x: Tensor, u0: Tensor, iters: int, eps: float) -> tuple[Tensor, Tensor]:
    """Without gradient, the rank-1 result as factors ``(u (*batch, M), w (*batch, N))``, ``u wᵀ``
    equal to :func:`nmf_rank1`'s output (bitwise on ``cpu``)."""
    if nmf_backend(x, 1, "mu") == "cpu":
        return rank1_factors(x, u0, iters, eps)
    with torch.no_grad():
        _, u = nmf_rank1(x, u0, iters, None, eps)
        c = u / (u.square().sum(-1, keepdim=True) + eps * eps)
        return u, (c.unsqueeze(-2) @ x).squeeze(-2)


def nmf_iterations(
    x: Tensor,
    u0: Tensor,
    iters: int,
    eps: float,
    update: str,
    *,
    grad_steps: int | None = None,
    v0: Tensor | None = None,
    inv: Tensor | None = None,
    need_out: bool = True,
    need_v: bool = True,
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """NMF (``update`` ``"mu"`` or ``"hals"``) from ``U0``: ``(U Vᵀ, U, V)``, V of ``X / max|X|``.

    ``V`` starts from the rule's start value and is updated once, then U and V T times; see
    :func:`lowrank.kernels.reference.nmf_iterations` (the oracle).

    Args:
        x: ``(*batch, M, N)`` >= 0, masked (V's rows at masked columns stay 0), unscaled.
        u0: ``(*batch, M, R)`` >= 0.
        iters: T.
        eps: the guard.
        update: ``"mu"`` or ``"hals"``.
        grad_steps: ``None`` or k (only the last k iterations carry gradient).
        v0: ``None``, or on the ``cpu`` backend a V (scaled problem's) paired with ``u0`` to
            continue from (then every iteration is differentiated).
        inv: ``(*batch, 1, 1)`` the detached ``1/max|X|`` if the caller has it (``cpu`` reuses it).
        need_out: form the reconstruction (else ``None``; ``cpu`` only).
        need_v: return V (else ``None`` where the backend can skip it).

    Returns:
        ``(out (*batch, M, N) or None, U (*batch, M, R), V (*batch, N, R) or None)``; the
        factors in X's scale are ``(U, V · max|X|)``.
    """
    rank = u0.shape[-1]
    backend = nmf_backend(x, rank, update)
    if v0 is not None and backend != "cpu":
        raise ValueError("nmf_iterations(v0=...) continues a state on the cpu backend only")
    if backend == "cpu":
        return hals_fused(x, u0, v0, inverse_scale(x) if inv is None else inv, iters, eps, need_out)
    batch, (m, n) = x.shape[:-2], x.shape[-2:]
    xb, ub, diff = x.reshape(-1, m, n), u0.reshape(-1, m, rank), _diff(iters, grad_steps)
    if backend == "triton":
        from .triton import nmf_iterations as run

        out, u, v = run(xb, ub, iters, diff, eps, update, need_v)
    else:
        out, u, v = reference.nmf_iterations(xb, ub, iters, diff, eps, update)
    v = None if v is None or not need_v else v.reshape(*batch, n, rank)
    return out.reshape(*batch, m, n), u.reshape(*batch, m, rank), v
