"""The ``reference`` backend: the kernel operations in plain PyTorch autograd, like their formulas.

These are the oracles the ``cpu`` and ``triton`` backends are tested against (values and
gradients), and what runs where no other backend applies (other devices, ``torch.compile``
without triton, shapes a kernel does not cover). Short and literal on purpose: speed lives in
the other backends.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..solvers._iterations import run_iterations
from ..solvers._numerics import inverse_scale

__all__ = ["nmf_rank1", "nmf_iterations", "mu_update", "hals_update", "fused_mlp", "norm_project"]


def _normalize(w: Tensor, delta: float) -> Tensor:
    """``relu(w) / sqrt(‖relu(w)‖² + δ)`` over the last dim."""
    r = w.clamp_min(0)
    return r / (r.square().sum(-1, keepdim=True) + delta).sqrt()


def nmf_rank1(x: Tensor, u0: Tensor, iters: int, diff: int, eps: float) -> tuple[Tensor, Tensor]:
    """Rank-1 NMF (MU ≡ HALS at R = 1) as the scaled power iteration; ``(P X, u_T)``.

    With ``X̃ = X / max|X|`` and ``δ = eps²``: ``v = X̃ᵀ u``, ``u ← relu(X̃ v) / ‖·‖`` T times,
    then ``out = u (uᵀ X) / (‖u‖² + δ)``. Only the last ``diff`` iterations are differentiated;
    when ``diff < iters`` the first of them reads ``v`` detached (the solver's ``grad_steps``).

    Args:
        x: ``(B, M, N)`` >= 0 (masked columns zero).
        u0: ``(B, M)`` >= 0.
        iters: T >= 1.
        diff: differentiated iterations, 1..T.
        eps: the guard (``δ = eps²``).

    Returns:
        ``(out (B, M, N), u (B, M))`` with ``u`` detached.
    """
    delta = eps * eps
    xs = x * inverse_scale(x)
    u, free = u0, iters - diff
    if free > 0:
        with torch.no_grad():
            for _ in range(free):
                u = _normalize((xs @ (xs.mT @ u.unsqueeze(-1))).squeeze(-1), delta)
    for t in range(free, iters):
        v = xs.mT @ u.unsqueeze(-1)  # (B, N, 1)
        if t == free and free > 0:
            v = v.detach()  # the first differentiated step updates U from the detached V
        u = _normalize((xs @ v).squeeze(-1), delta)
    c = u / (u.square().sum(-1, keepdim=True) + delta)
    out = u.unsqueeze(-1) * (c.unsqueeze(-2) @ x)
    return out, u.detach()


def mu_update(x: Tensor, w: Tensor, h: Tensor, eps: float, s: Tensor) -> Tensor:
    """Lee–Seung: ``W ⊙ (s X H) ⊘ (W HᵀH + eps)``."""
    return w * ((x @ h) * s) / (w @ (h.mT @ h) + eps)


def hals_update(x: Tensor, w: Tensor, h: Tensor, eps: float, s: Tensor) -> Tensor:
    """HALS (Gauss–Seidel over the columns of W): ``W_r ← relu((A_r − Σ_{l≠r} B_lr W_l) / B_rr)``.

    ``A = s X H``, ``B = HᵀH``; a column with ``B_rr <= eps · max B + tiny`` (collapsed) is 0.
    """
    a, b = (x @ h) * s, h.mT @ h
    d = torch.diagonal(b, dim1=-2, dim2=-1)
    ok = d > eps * d.amax(-1, keepdim=True) + torch.finfo(d.dtype).tiny
    inv = torch.where(ok, 1.0 / torch.where(ok, d, torch.ones_like(d)), torch.zeros_like(d))
    cols = list(w.unbind(-1))
    for r in range(len(cols)):
        others = sum(b[..., l, r, None] * cols[l] for l in range(len(cols)) if l != r)  # noqa: E741
        cols[r] = torch.relu((a[..., r] - others) * inv[..., r, None])
    return torch.stack(cols, -1)


_UPDATES = {"mu": (mu_update, 1.0), "hals": (hals_update, 0.0)}


def nmf_iterations(
    x: Tensor, u0: Tensor, iters: int, diff: int, eps: float, update: str
) -> tuple[Tensor, Tensor, Tensor]:
    """NMF from ``U0``: V from its start value (1 for MU, 0 for HALS) updated once, then T times
    U then V; ``(U Vᵀ · max|X|, U, V)`` (V of the scaled problem ``X / max|X|``).

    The updates read ``X`` as ``s X`` with ``s = 1/max|X|`` (detached). Only the last ``diff``
    iterations are differentiated (``diff = iters``: also the first V update and ``U0``).

    Args:
        x: ``(B, M, N)`` >= 0 (masked columns zero: V's rows there stay 0).
        u0: ``(B, M, R)`` >= 0.
        iters: T >= 1.
        diff: differentiated iterations, 1..T.
        eps: the guard.
        update: ``"mu"`` or ``"hals"``.

    Returns:
        ``(out (B, M, N), U (B, M, R), V (B, N, R))``; the factors in X's scale are
        ``(U, V · max|X|)``.
    """
    rule, start = _UPDATES[update]
    s = inverse_scale(x)

    def initial() -> tuple[Tensor, Tensor]:
        v = torch.full((*x.shape[:-2], x.shape[-1], u0.shape[-1]), start, dtype=x.dtype, device=x.device)
        return u0, rule(x.mT, v, u0, eps, s)

    def step(state: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        u = rule(x, state[0], state[1], eps, s)
        return u, rule(x.mT, state[1], u, eps, s)

    u, v = run_iterations(initial, step, iters, diff)
    return (u @ v.mT) / s, u, v


def fused_mlp(
    x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, eps: float, approximate: str
) -> Tensor:
    """``x + W2 gelu(W1 x̂ + b1) + b2``, ``x̂`` the channel-standardized ``x: (B, C, *S)``."""
    flat = x.reshape(*x.shape[:2], -1)
    xhat = F.layer_norm(flat.mT, flat.shape[1:2], eps=eps).mT
    hidden = F.gelu(w1 @ xhat + b1[:, None], approximate=approximate)
    return (flat + w2 @ hidden + b2[:, None]).view(x.shape)


def norm_project(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float, relu: bool) -> Tensor:
    """``act(W x̂ + b)``, ``x̂`` the channel-standardized ``x: (B, C, *S)``, act ReLU or none."""
    flat = x.reshape(*x.shape[:2], -1)
    xhat = F.layer_norm(flat.mT, flat.shape[1:2], eps=eps).mT
    out = weight @ xhat if bias is None else weight @ xhat + bias[:, None]
    return (out.relu() if relu else out).view(x.shape[0], -1, *x.shape[2:])
