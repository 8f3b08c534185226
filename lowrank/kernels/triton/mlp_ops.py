"""The Factorizer MLP branch's Triton kernels as ``torch.library`` custom ops (fake, autograd).

``lowrank::fused_mlp`` maps ``x (B, C, V)`` and the weights to ``x + W2 gelu(W1 x̂ + b1) + b2``
(exact GELU; ``x̂`` the channel-standardized ``x``); ``lowrank::fused_mlp_backward`` returns ``dx``
and per-program partial weight gradients, which the autograd formula here sums (one reduction,
visible to the op counter). C <= :data:`MAX_CHANNELS`, hidden <= :data:`MAX_HIDDEN`; the
dispatcher :mod:`lowrank.kernels.mlp` sends other calls to ``reference``.

Precision: the kernels compute in float32 (float64 for float64 input; ``tl.dot`` in IEEE
precision, no TF32), also for bfloat16 / float16 input and under autocast: half inputs and the
weights are cast to float32 on the way in (the casts' backward casts the gradients back), and
the result is cast to the dtype the plain ops would return (``fused_mlp``: the input's, as the
residual sets it; ``norm_project`` under autocast: the autocast dtype, as a projection's).

``lowrank::norm_project`` is the same for one projection: ``act(W x̂ + b)`` (ReLU or none; the
Factorizer's LayerNorm + ``in_proj``), the standardized map never in memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MAX_CHANNELS", "MAX_HIDDEN", "fused_mlp", "norm_project", "supports_mlp", "supports_norm_project"]

#: the widths one program holds in registers (the Factorizer's first two stages at BraTS widths)
MAX_CHANNELS, MAX_HIDDEN = 64, 128
#: programs of the backward (each walks a strided set of tiles, then writes one partial row)
PROGRAMS = 512


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 input, else float32 (half inputs and autocast included)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The autocast dtype active for ``x``'s device (``cuda`` for meta tensors), or ``None``."""
    device = "cuda" if x.device.type == "meta" else x.device.type
    if device not in ("cuda", "cpu") or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def supports_mlp(x: Tensor, w1: Tensor, approximate: str) -> bool:
    """Whether the kernels cover ``x (B, C, *S)`` with ``w1 (H, C)``: exact GELU, a floating dtype."""
    return (
        approximate == "none"
        and x.dtype in _FLOATS
        and x.ndim >= 3
        and x.numel() > 0
        and 1 <= x.shape[1] <= MAX_CHANNELS
        and 1 <= w1.shape[0] <= MAX_HIDDEN
    )


def _blocks(c: int, h: int) -> tuple[int, int, int]:
    bc = max(16, 1 << (c - 1).bit_length())
    bh = max(16, 1 << (h - 1).bit_length())
    return bc, bh, max(16, min(128, 4096 // bh))


def _programs(b: int, v: int, bv: int) -> int:
    return max(1, min(PROGRAMS, b * -(-v // bv)))


@torch.library.custom_op("lowrank::fused_mlp", mutates_args=())
def _fwd(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, eps: float) -> Tensor:
    from . import _mlp_kernels as k

    b, c, v = x.shape
    h = w1.shape[0]
    y = torch.empty_like(x)
    bc, bh, bv = _blocks(c, h)
    k.mlp_fwd[(-(-v // bv), b)](
        x, w1, b1, w2, b2, y, c, h, v, eps, BC=bc, BH=bh, BV=bv, num_warps=4 if bh <= 64 else 8
    )
    return y


@_fwd.register_fake
def _(x, w1, b1, w2, b2, eps):
    return torch.empty_like(x)


@torch.library.custom_op("lowrank::fused_mlp_backward", mutates_args=())
def _bwd(x: Tensor, g: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    from . import _mlp_kernels as k

    b, c, v = x.shape
    h = w1.shape[0]
    bc, bh, bv = _blocks(c, h)
    programs = _programs(b, v, bv)
    dx = torch.empty_like(x)
    part = torch.empty(programs, 2 * h * c + h + c, dtype=x.dtype, device=x.device)
    k.mlp_bwd[(programs,)](
        x, g, w1, b1, w2, dx, part, b, c, h, v, eps, BC=bc, BH=bh, BV=bv, num_warps=4 if bh <= 64 else 8
    )
    return dx, part


@_bwd.register_fake
def _(x, g, w1, b1, w2, eps):
    b, c, v = x.shape
    h = w1.shape[0]
    programs = _programs(b, v, _blocks(c, h)[2])
    return torch.empty_like(x), x.new_empty((programs, 2 * h * c + h + c))


def _setup(ctx, inputs, output):
    x, w1, b1, w2, _, eps = inputs
    ctx.save_for_backward(x, w1, b1, w2)
    ctx.eps = eps


def _backward(ctx, g):
    x, w1, b1, w2 = ctx.saved_tensors
    h, c = w1.shape
    dx, part = _bwd(x, g.contiguous(), w1, b1, w2, ctx.eps)
    total = part.sum(0)
    dw1, db1, dw2, db2 = total.split([h * c, h, c * h, c])
    return dx, dw1.view(h, c), db1, dw2.view(c, h), db2, None


_fwd.register_autograd(_backward, setup_context=_setup)


def fused_mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, eps: float) -> Tensor:
    """``x + W2 gelu(W1 x̂ + b1) + b2`` for ``x (B, C, *S)`` (see :func:`lowrank.kernels.fused_mlp`)."""
    b, c = x.shape[:2]
    ct = _compute_dtype(x)
    args = [t.to(ct).contiguous() for t in (w1, b1, w2, b2)]
    y = _fwd(x.to(ct).contiguous().view(b, c, -1), *args, float(eps)).view(x.shape)
    return y.to(x.dtype)


# ------------------------------------------------------------- LayerNorm + projection (+ ReLU)
def supports_norm_project(x: Tensor, weight: Tensor) -> bool:
    """Whether the kernels cover ``act(W x̂ + b)`` for ``x (B, C, *S)``, ``W (O, C)``."""
    return (
        x.dtype in _FLOATS
        and x.ndim >= 3
        and x.numel() > 0
        and 1 <= x.shape[1] <= MAX_CHANNELS
        and 1 <= weight.shape[0] <= MAX_HIDDEN
    )


@torch.library.custom_op("lowrank::norm_project", mutates_args=())
def _proj(x: Tensor, w: Tensor, b: Tensor, eps: float, relu: bool) -> Tensor:
    from . import _mlp_kernels as k

    batch, c, v = x.shape
    o = w.shape[0]
    y = x.new_empty((batch, o, v))
    bc, bo, bv = _blocks(c, o)
    k.proj_fwd[(-(-v // bv), batch)](
        x, w, b, y, c, o, v, eps, RELU=relu, BC=bc, BO=bo, BV=bv, num_warps=4 if bo <= 64 else 8
    )
    return y


@_proj.register_fake
def _(x, w, b, eps, relu):
    return x.new_empty((x.shape[0], w.shape[0], x.shape[2]))


@torch.library.custom_op("lowrank::norm_project_backward", mutates_args=())
def _proj_bwd(x: Tensor, g: Tensor, w: Tensor, b: Tensor, eps: float, relu: bool) -> tuple[Tensor, Tensor]:
    from . import _mlp_kernels as k

    batch, c, v = x.shape
    o = w.shape[0]
    bc, bo, bv = _blocks(c, o)
    programs = _programs(batch, v, bv)
    dx = torch.empty_like(x)
    part = torch.empty(programs, o * c + o, dtype=x.dtype, device=x.device)
    k.proj_bwd[(programs,)](
        x,
        g,
        w,
        b,
        dx,
        part,
        batch,
        c,
        o,
        v,
        eps,
        RELU=relu,
        BC=bc,
        BO=bo,
        BV=bv,
        num_warps=4 if bo <= 64 else 8,
    )
    return dx, part


@_proj_bwd.register_fake
def _(x, g, w, b, eps, relu):
    batch, c, v = x.shape
    o = w.shape[0]
    programs = _programs(batch, v, _blocks(c, o)[2])
    return torch.empty_like(x), x.new_empty((programs, o * c + o))


def _proj_setup(ctx, inputs, output):
    x, w, b, eps, relu = inputs
    ctx.save_for_backward(x, w, b)
    ctx.args = (eps, relu)


def _proj_backward(ctx, g):
    x, w, b = ctx.saved_tensors
    o, c = w.shape
    dx, part = _proj_bwd(x, g.contiguous(), w, b, *ctx.args)
    dw, db = part.sum(0).split([o * c, o])
    return dx, dw.view(o, c), db, None, None


_proj.register_autograd(_proj_backward, setup_context=_proj_setup)


def norm_project(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float, relu: bool) -> Tensor:
    """``act(W x̂ + b)`` for ``x (B, C, *S)`` (see :func:`lowrank.kernels.norm_project`)."""
    b, c = x.shape[:2]
    ct = _compute_dtype(x)
    w = weight.to(ct).contiguous()
    bias = w.new_zeros(w.shape[0]) if bias is None else bias.to(ct).contiguous()
    y = _proj(x.to(ct).contiguous().view(b, c, -1), w, bias, float(eps), bool(relu))
    autocast = _autocast_dtype(x)
    out = autocast if autocast is not None and x.dtype != torch.float64 else x.dtype
    return y.view(b, w.shape[0], *x.shape[2:]).to(out)
