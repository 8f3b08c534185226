"""The Factorizer's MLP branch ``x + fc2(gelu(fc1(LayerNorm(x))))`` as one chunked kernel.

The branch is element-wise work around two 1×1 convs, memory-bound at the highest resolutions
of a 3-D net: run op by op it allocates (and page-faults) several full-size tensors, among them
two of the hidden width, and keeps the normalized input, the pre-activation and the activation
for backward. Here the voxels are processed in chunks whose temporaries stay in cache; only the
input and the per-voxel LayerNorm statistics are saved, and the backward recomputes each chunk's
normalized input, pre-activation and activation (one extra ``fc1`` product per chunk).

Not a part module (the leading underscore keeps it out of the auto-import).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["fused_mlp", "CHUNK_ELEMENTS"]

#: elements of the hidden activation per chunk (``B · hidden · voxels``): 4 MiB in float32, so a
#: chunk's temporaries come from the heap (no page faults) and a 64³ map at 32 channels (hidden 64)
#: takes 16 chunks (few enough parallel regions when the OpenMP threads share their cores)
CHUNK_ELEMENTS = 1 << 20


def _expand(w: Tensor, batch: int) -> Tensor:
    return w.unsqueeze(0).expand(batch, -1, -1)


def _mm(w: Tensor, t: Tensor) -> Tensor:
    """``w (O, I) @ t (B, I, n) -> (B, O, n)``."""
    return torch.bmm(_expand(w, t.shape[0]), t)


def _standardize(x: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    return (x - mean).mul_(rstd)


class _FusedMLP(torch.autograd.Function):
    """``(x (B, C, n), W1 (H, C), b1, W2 (C, H), b2) -> x + W2 gelu(W1 x̂ + b1) + b2``."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, eps: float, approximate: str, chunk: int):
        batch = x.shape[0]
        out = torch.empty_like(x)
        mean = x.mean(1, keepdim=True)
        rstd = torch.empty_like(mean)
        bias1 = b1.view(1, -1, 1).expand(batch, -1, 1)
        for start in range(0, x.shape[2], chunk):
            part = slice(start, start + chunk)
            xc = x[:, :, part]
            xhat = xc - mean[:, :, part]
            r = torch.rsqrt(xhat.square().mean(1, keepdim=True) + eps)
            rstd[:, :, part] = r
            xhat.mul_(r)
            act = F.gelu(torch.baddbmm(bias1, _expand(w1, batch), xhat), approximate=approximate)
            # the residual and bias, then the product accumulated in place, in the output's columns
            torch.add(xc, b2.view(1, -1, 1), out=out[:, :, part]).baddbmm_(_expand(w2, batch), act)
        ctx.save_for_backward(x, mean, rstd, w1, b1, w2)
        ctx.approximate, ctx.chunk = approximate, chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, mean, rstd, w1, b1, w2 = ctx.saved_tensors
        batch = x.shape[0]
        grad = grad.contiguous()
        grad_x = torch.empty_like(x)
        grad_w1, grad_w2 = torch.zeros_like(w1), torch.zeros_like(w2)
        grad_b1 = torch.zeros_like(b1)
        grad_b2 = grad.sum((0, 2))
        bias1 = b1.view(1, -1, 1).expand(batch, -1, 1)
        for start in range(0, x.shape[2], ctx.chunk):
            part = slice(start, start + ctx.chunk)
            g = grad[:, :, part]
            r = rstd[:, :, part]
            xhat = _standardize(x[:, :, part], mean[:, :, part], r)
            pre = torch.baddbmm(bias1, _expand(w1, batch), xhat)
            act = F.gelu(pre, approximate=ctx.approximate)
            grad_w2 += torch.bmm(g, act.mT).sum(0)
            grad_pre = torch.ops.aten.gelu_backward(_mm(w2.T, g), pre, approximate=ctx.approximate)
            grad_w1 += torch.bmm(grad_pre, xhat.mT).sum(0)
            grad_b1 += grad_pre.sum((0, 2))
            gxhat = _mm(w1.T, grad_pre)
            # LayerNorm backward (no affine: it is folded into W1, b1), plus the residual
            mean_g = gxhat.mean(1, keepdim=True)
            mean_gx = (gxhat * xhat).mean(1, keepdim=True)
            out = grad_x[:, :, part]
            torch.sub(gxhat, mean_g, out=out)
            out.addcmul_(xhat, mean_gx, value=-1).mul_(r).add_(g)
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None, None, None


def fused_mlp(
    x: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    eps: float,
    approximate: str = "none",
    chunk_elements: int | None = None,
) -> Tensor:
    """``x + W2 gelu(W1 x̂ + b1) + b2`` with ``x̂`` the channel-standardized ``x`` (LayerNorm, no affine).

    Args:
        x: ``(B, C, *S)``, float32 or float64.
        w1: ``(H, C)``; a LayerNorm's scale ``γ`` folds in as ``W1 diag(γ)``.
        b1: ``(H,)``; the LayerNorm's shift folds in as ``W1 β + b1``.
        w2: ``(C, H)``.
        b2: ``(C,)``.
        eps: the LayerNorm's ``eps``.
        approximate: GELU's ``approximate`` (``"none"`` or ``"tanh"``).
        chunk_elements: hidden elements per chunk; default :data:`CHUNK_ELEMENTS`.

    Returns:
        ``(B, C, *S)``; differentiable once w.r.t. every tensor argument.
    """
    batch, channels = x.shape[:2]
    flat = x.reshape(batch, channels, -1)
    if chunk_elements is None:
        chunk_elements = CHUNK_ELEMENTS
    chunk = max(1, chunk_elements // max(1, batch * w1.shape[0]))
    out = _FusedMLP.apply(flat, w1, b1, w2, b2, float(eps), approximate, chunk)
    return out.view(x.shape)
