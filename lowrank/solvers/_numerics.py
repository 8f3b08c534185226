"""Numeric helpers of the factorization layers: dtype, eps, rank, scale and a counter-based RNG."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "abs_max",
    "compute_dtype",
    "default_eps",
    "hash_uniform",
    "inverse_scale",
    "matrix_scale",
    "resolve_rank",
]

_M32 = 0xFFFFFFFF


def _mix32(h: Tensor) -> Tensor:
    """A 32-bit integer hash (xorshift-multiply) on int64 tensors; no overflow (< 2**63)."""
    h = h & _M32
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _M32
    h = h ^ (h >> 15)
    h = (h * 0x68E31DA5) & _M32
    return h ^ (h >> 16)


def hash_uniform(
    shape: tuple[int, ...] | torch.Size,
    *,
    seed: int,
    counter: Tensor | int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Counter-based pseudo-random numbers in ``(0, 1]``, never touching the global RNG.

    A hash of (element index, seed, counter) computed with integer tensor ops on ``device``: the
    same arguments give the same numbers on every device, and it compiles without graph breaks
    (unlike a ``torch.Generator`` argument).

    Args:
        shape: output shape.
        seed: a Python int.
        counter: an int or a 0-d int64 tensor (e.g. a buffer advanced once per call).
        device: output device.
        dtype: floating output dtype.

    Returns:
        A tensor of ``shape`` with values in ``(0, 1]`` (24 random bits each; never exactly 0,
        so multiplicative updates cannot start from a dead entry).
    """
    n = math.prod(shape)
    idx = torch.arange(n, device=device, dtype=torch.int64)
    counter = torch.as_tensor(counter, device=device, dtype=torch.int64)
    # only the low 32 bits of the seed term reach the hash (_mix32 masks first): masking here
    # gives the same numbers and keeps any Python int seed within int64
    key = _mix32(counter * 0x2C1B3C6D + ((seed * 0x297A2D39 + 0x5BD1E995) & _M32))
    h = _mix32(_mix32(idx ^ key) + key)
    return (((h >> 8) + 1).to(dtype) * (1.0 / (1 << 24))).reshape(shape)


def abs_max(x: Tensor) -> Tensor:
    """``max |x|`` over the last two dims, ``(*batch, 1, 1)``, without a temporary of x's size."""
    return torch.maximum(x.amax(dim=(-2, -1), keepdim=True), -x.amin(dim=(-2, -1), keepdim=True))


def matrix_scale(x: Tensor) -> Tensor:
    """The factorizations' per-matrix scale ``s = max |x|`` over the last two dims, 1 for an
    all-zero matrix (so dividing by it is always safe), ``(*batch, 1, 1)``; differentiable."""
    s = abs_max(x)
    return torch.where(s > 0, s, torch.ones_like(s))


def inverse_scale(x: Tensor) -> Tensor:
    """``1 / s`` of :func:`matrix_scale`, detached, ``(*batch, 1, 1)``."""
    return 1.0 / matrix_scale(x.detach())


def compute_dtype(dtype: torch.dtype, fp32: bool = True) -> torch.dtype:
    """The dtype a factorization runs in: float64 stays, anything else becomes float32 if ``fp32``."""
    if dtype == torch.float64 or not fp32:
        return dtype
    return torch.float32


def default_eps(dtype: torch.dtype) -> float:
    """``torch.finfo(dtype).eps``: the default eps of the factorizations (data scaled to max 1)."""
    return float(torch.finfo(dtype).eps)


def resolve_rank(rank: int | float, m: int, n: int) -> int:
    """The integer rank for an ``(M, N)`` matrix.

    Args:
        rank: an int ``1 <= R <= max(M, N)`` (returned as is) or a float compression ratio
            ``c > 0``.
        m: rows M.
        n: columns N.

    Returns:
        ``rank``, or for a float ``max(1, floor(M N / (c (M + N))))`` capped at ``min(M, N)``
        (a larger rank reproduces X and only costs memory).

    Raises:
        ValueError: an int rank above ``max(M, N)`` (its factors would be larger than X itself,
            e.g. ``rank=10**9`` would ask for gigabytes), with the largest useful rank.
    """
    if isinstance(rank, bool):
        raise TypeError("rank must be an int or a float compression ratio, not a bool")
    if isinstance(rank, int):
        if rank > max(m, n):
            raise ValueError(
                f"rank={rank} is larger than the ({m} × {n}) matrices it factorizes: use "
                f"rank <= {min(m, n)} (an exact fit), or a float compression ratio such as rank=2.0"
            )
        return rank
    full = min(m, n)
    ratio = m * n / (rank * (m + n))  # may be inf for a tiny ratio: capped before int()
    return max(1, full if not ratio < full else int(ratio))
