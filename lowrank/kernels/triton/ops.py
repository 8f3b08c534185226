"""The NMF layer's Triton kernels as ``torch.library`` custom ops (forward, backward, fake, autograd).

``lowrank::nmf_rank1`` (rank 1, the scaled power iteration) and ``lowrank::nmf_iterations``
(MU or HALS, rank <= :data:`MAX_RANK`) take ``X: (B, M, N)`` (masked, unscaled, float32 or
float64) and return the reconstruction and the factors; their backward ops recompute the
iterates in registers (see :mod:`._nmf_kernels`). Shapes outside :func:`supports_nmf` are not
sent here (the dispatcher in :mod:`lowrank.kernels.nmf` runs ``reference`` for them).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MAX_M", "MAX_RANK", "MAX_TILE", "nmf_iterations", "nmf_rank1", "supports_nmf"]

#: the largest M, rank and padded M×N tile (elements) one program holds in registers
MAX_M, MAX_RANK, MAX_TILE = 128, 16, 1 << 14


def _pow2(n: int, least: int) -> int:
    return max(least, 1 << max(0, (n - 1).bit_length()))


def _blocks(m: int, n: int) -> tuple[int, int]:
    return _pow2(m, 16), _pow2(n, 16)


def supports_nmf(x: Tensor, rank: int) -> bool:
    """Whether the Triton kernels cover ``x: (*batch, M, N)`` at ``rank`` (they compute in X's
    dtype: the layers pass float32 or float64)."""
    m, n = x.shape[-2:]
    bm, bn = _blocks(m, n)
    return 1 <= rank <= MAX_RANK and m <= MAX_M and bm * bn <= MAX_TILE and x.numel() > 0


def _warps(m: int, n: int) -> int:
    bm, bn = _blocks(m, n)
    return 4 if bm * bn <= 4096 else 8


# ------------------------------------------------------------------------------------------ rank 1
@torch.library.custom_op("lowrank::nmf_rank1", mutates_args=())
def _rank1(x: Tensor, u0: Tensor, iters: int, diff: int, eps: float) -> tuple[Tensor, Tensor]:
    from . import _nmf_kernels as k

    b, m, n = x.shape
    out, u = torch.empty_like(x), torch.empty(b, m, dtype=x.dtype, device=x.device)
    bm, bn = _blocks(m, n)
    k.rank1_fwd[(b,)](x, u0, out, u, m, n, iters, eps * eps, BM=bm, BN=bn, num_warps=_warps(m, n))
    return out, u


@_rank1.register_fake
def _(x, u0, iters, diff, eps):
    return torch.empty_like(x), x.new_empty(x.shape[:2])


@torch.library.custom_op("lowrank::nmf_rank1_backward", mutates_args=())
def _rank1_bwd(x: Tensor, u0: Tensor, g: Tensor, iters: int, diff: int, eps: float) -> tuple[Tensor, Tensor]:
    from . import _nmf_kernels as k

    b, m, n = x.shape
    dx, du0 = torch.empty_like(x), torch.empty(b, m, dtype=x.dtype, device=x.device)
    bm, bn = _blocks(m, n)
    k.rank1_bwd[(b,)](x, u0, g, dx, du0, m, n, iters, diff, eps * eps, BM=bm, BN=bn, num_warps=_warps(m, n))
    return dx, du0


@_rank1_bwd.register_fake
def _(x, u0, g, iters, diff, eps):
    return torch.empty_like(x), x.new_empty(x.shape[:2])


def _rank1_setup(ctx, inputs, output):
    x, u0, iters, diff, eps = inputs
    ctx.save_for_backward(x, u0)
    ctx.args = (iters, diff, eps)


def _rank1_backward(ctx, g_out, g_u):
    x, u0 = ctx.saved_tensors
    if g_out is None:
        return None, None, None, None, None
    dx, du0 = _rank1_bwd(x, u0, g_out.contiguous(), *ctx.args)
    return dx, du0, None, None, None


_rank1.register_autograd(_rank1_backward, setup_context=_rank1_setup)


def nmf_rank1(x: Tensor, u0: Tensor, iters: int, diff: int, eps: float) -> tuple[Tensor, Tensor]:
    """``(P X (B, M, N), u (B, M))``; see :func:`lowrank.kernels.reference.nmf_rank1`."""
    out, u = _rank1(x.contiguous(), u0.to(x.dtype).contiguous(), iters, diff, eps)
    return out, u.detach()


# ------------------------------------------------------------------------------------ rank <= 16
_START = {"mu": 1.0, "hals": 0.0}


@torch.library.custom_op("lowrank::nmf_iterations", mutates_args=())
def _nmf(
    x: Tensor, u0: Tensor, iters: int, diff: int, eps: float, update: str, need_v: bool
) -> tuple[Tensor, Tensor, Tensor]:
    from . import _nmf_kernels as k

    b, m, n = x.shape
    rank = u0.shape[-1]
    out, u = torch.empty_like(x), torch.empty(b, m, rank, dtype=x.dtype, device=x.device)
    v = torch.empty(b, n if need_v else 0, rank, dtype=x.dtype, device=x.device)
    bm, bn = _blocks(m, n)
    k.nmf_fwd[(b,)](
        x, u0, out, u, v, m, n, iters, eps, rank,
        HALS=update == "hals", START=_START[update], NEED_V=need_v,
        BM=bm, BN=bn, RB=16, num_warps=_warps(m, n),
    )  # fmt: skip
    return out, u, v


@_nmf.register_fake
def _(x, u0, iters, diff, eps, update, need_v):
    b, m, n = x.shape
    return (
        torch.empty_like(x),
        x.new_empty(b, m, u0.shape[-1]),
        x.new_empty(b, n if need_v else 0, u0.shape[-1]),
    )


@torch.library.custom_op("lowrank::nmf_iterations_backward", mutates_args=())
def _nmf_bwd(
    x: Tensor, u0: Tensor, g: Tensor, gu: Tensor, gv: Tensor, iters: int, diff: int, eps: float, update: str
) -> tuple[Tensor, Tensor]:
    from . import _nmf_kernels as k

    b, m, n = x.shape
    rank = u0.shape[-1]
    dx, du0 = torch.empty_like(x), torch.empty(b, m, rank, dtype=x.dtype, device=x.device)
    bm, bn = _blocks(m, n)
    k.nmf_bwd[(b,)](
        x, u0, g, gu, gv, dx, du0, m, n, iters, diff, eps, rank,
        HALS=update == "hals", START=_START[update], HAS_GU=gu.numel() > 0, HAS_GV=gv.numel() > 0,
        BM=bm, BN=bn, RB=16, num_warps=_warps(m, n),
    )  # fmt: skip
    return dx, du0


@_nmf_bwd.register_fake
def _(x, u0, g, gu, gv, iters, diff, eps, update):
    return torch.empty_like(x), torch.empty_like(u0)


def _nmf_setup(ctx, inputs, output):
    x, u0, iters, diff, eps, update, _need_v = inputs
    ctx.save_for_backward(x, u0)
    ctx.args = (iters, diff, eps, update)


def _nmf_backward(ctx, g_out, g_u, g_v):
    x, u0 = ctx.saved_tensors
    empty = x.new_empty(0)
    g = torch.zeros_like(x) if g_out is None else g_out.contiguous()
    gu = empty if g_u is None else g_u.contiguous()
    gv = empty if g_v is None or g_v.numel() == 0 else g_v.contiguous()
    dx, du0 = _nmf_bwd(x, u0, g, gu, gv, *ctx.args)
    return dx, du0, None, None, None, None, None


_nmf.register_autograd(_nmf_backward, setup_context=_nmf_setup)


def nmf_iterations(
    x: Tensor, u0: Tensor, iters: int, diff: int, eps: float, update: str, need_v: bool = True
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(U Vᵀ/s, U, V or None)``; see :func:`lowrank.kernels.reference.nmf_iterations`."""
    out, u, v = _nmf(x.contiguous(), u0.to(x.dtype).contiguous(), iters, diff, eps, update, need_v)
    return out, u, v if need_v else None
