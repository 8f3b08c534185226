"""The Factorizer's MLP branch ``x + W2 gelu(W1 x̂ + b1) + b2`` (LayerNorm without affine: folded
into W1, b1), dispatched: ``cpu`` the chunked node of :mod:`.cpu.mlp` (float32/64, no autocast),
``triton`` one kernel each way (:mod:`.triton.mlp_ops`: exact GELU, C <= 64, hidden <= 128; float32
compute for every input dtype and under autocast), else ``reference``."""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from ._switch import backend_for
from .cpu import mlp as _cpu

__all__ = ["fused_mlp", "mlp_backend", "norm_project", "norm_project_backend"]


def mlp_backend(x: Tensor, w1: Tensor, approximate: str = "none") -> str:
    """The backend :func:`fused_mlp` runs for ``x (B, C, *S)`` and ``w1 (H, C)``."""
    from .triton.mlp_ops import supports_mlp

    cpu_ok = x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled("cpu")
    return backend_for(x.device, cpu_ok=cpu_ok, triton_ok=supports_mlp(x, w1, approximate))


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
    """``x + W2 gelu(W1 x̂ + b1) + b2`` with ``x̂`` the channel-standardized ``x: (B, C, *S)``.

    Args:
        x: ``(B, C, *S)``.
        w1: ``(H, C)``; b1: ``(H,)``; w2: ``(C, H)``; b2: ``(C,)``.
        eps: the LayerNorm's eps.
        approximate: GELU's ``approximate``.
        chunk_elements: hidden elements per chunk on ``cpu`` (default :data:`.cpu.mlp.CHUNK_ELEMENTS`).

    Returns:
        ``(B, C, *S)``.
    """
    backend = mlp_backend(x, w1, approximate)
    if backend == "cpu":
        return _cpu.fused_mlp(x, w1, b1, w2, b2, eps, approximate, chunk_elements)
    if backend == "triton":
        from .triton.mlp_ops import fused_mlp as run

        return run(x, w1, b1, w2, b2, eps)
    return reference.fused_mlp(x, w1, b1, w2, b2, eps, approximate)


def norm_project_backend(x: Tensor, weight: Tensor) -> str:
    """The backend :func:`norm_project` runs for ``x (B, C, *S)`` and ``weight (O, C)`` (``cpu`` has
    no node of its own: the callers' projection of the standardized map is that path)."""
    from .triton.mlp_ops import supports_norm_project

    return backend_for(x.device, cpu_ok=False, triton_ok=supports_norm_project(x, weight))


def norm_project(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float, relu: bool = False) -> Tensor:
    """``act(W x̂ + b)``, ``x̂`` the channel-standardized ``x (B, C, *S)``, act ReLU or none.

    Args:
        x: ``(B, C, *S)``.
        weight: ``W (O, C)``; bias: ``(O,)`` or ``None``.
        eps: the LayerNorm's eps.
        relu: apply ReLU.

    Returns:
        ``(B, O, *S)``.
    """
    if norm_project_backend(x, weight) == "triton":
        from .triton.mlp_ops import norm_project as run

        return run(x, weight, bias, eps, relu)
    return reference.norm_project(x, weight, bias, eps, relu)
