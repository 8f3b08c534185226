"""The channel LayerNorm (over dim 1 of ``(B, C, *S)``), dispatched.

* :func:`standardize`: ``x -> (x̂, rstd)``, ``x̂ = (x - mean) · rstd``, ``rstd = 1/sqrt(var + eps)``
  (statistics over the channels, float32 for half-precision ``x``);
* :func:`standardize_backward`: ``dx`` from the gradient of ``w ⊙ x̂``.

``reference`` is the formula op by op (mean, deviations, mean square, in-place scaling); ``cpu``
the same with the mean square in cache-sized chunks (:mod:`.cpu.norm`, no full-size
temporary); ``triton`` one kernel each way (:mod:`.triton.norm_ops`: two passes over the map
forward, three backward). The autograd function is :class:`lowrank.norm_act._ChannelLayerNormFn`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._switch import backend_for
from .cpu import norm as _cpu

__all__ = ["channel_mean_square", "standardize", "standardize_backward"]


def _backend(t: Tensor) -> str:
    from .triton.norm_ops import supports_norm

    return backend_for(t.device, triton_ok=supports_norm(t))


def channel_mean_square(xhat: Tensor) -> Tensor:
    """``mean(xhat², dim=1)`` of ``xhat: (B, C, *S)``, shape ``(B, 1, *S)`` (chunked on ``cpu``)."""
    if backend_for(xhat.device) == "cpu":
        return _cpu.channel_mean_square(xhat)
    return xhat.square().mean(1, keepdim=True)


def standardize(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``x (B, C, *S) -> (x̂ (B, C, *S), rstd (B, 1, *S))``, without autograd (the caller's).

    Two passes (mean, then mean square of the deviations): exact for large offsets, and on CPU
    about twice as fast as ``var_mean`` over a non-innermost dimension.
    """
    if _backend(x) == "triton":
        from .triton.norm_ops import channel_standardize

        return channel_standardize(x, eps)
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    xhat = xf - xf.mean(1, keepdim=True)
    rstd = torch.rsqrt(channel_mean_square(xhat) + eps)
    return xhat.mul_(rstd), rstd


def _weighted_mean(weight: Tensor | None, t: Tensor) -> Tensor:
    """``mean(w ⊙ t, dim=1)`` (``w`` per channel, or none): a reduction without a full-size temporary."""
    if weight is None:
        return t.mean(1, keepdim=True)
    b, c = t.shape[:2]
    w = (weight.to(t.dtype) / c).view(1, 1, c).expand(b, 1, c)
    return torch.bmm(w, t.reshape(b, c, -1)).view(b, 1, *t.shape[2:])


def standardize_backward(
    g: Tensor, xhat: Tensor, rstd: Tensor, weight: Tensor | None, gx: Tensor | None = None
) -> Tensor:
    """``dx = (w⊙g - mean(w⊙g) - x̂ · mean(w⊙g⊙x̂)) · rstd`` (means over the channels), x̂'s dtype.

    Args:
        g: the gradient of ``w ⊙ x̂`` (or of ``x̂``), ``(B, C, *S)``, x̂'s dtype.
        xhat: ``(B, C, *S)``; rstd: ``(B, 1, *S)``.
        weight: ``w (C,)`` or ``None``.
        gx: ``g ⊙ x̂`` if the caller formed it (reused as the result's buffer), else ``None``.
    """
    if _backend(xhat) == "triton":
        from .triton.norm_ops import channel_standardize_backward

        return channel_standardize_backward(g, xhat, rstd, weight)
    if gx is None:
        gx = g * xhat
    mean_g = _weighted_mean(weight, g)
    mean_gx = _weighted_mean(weight, gx)
    if weight is None:
        torch.sub(g, mean_g, out=gx)
    else:
        shape = (1, -1) + (1,) * (g.ndim - 2)
        torch.addcmul(mean_g.neg(), g, weight.view(shape).to(g.dtype), out=gx)
    return gx.addcmul_(xhat, mean_gx, value=-1).mul_(rstd)
