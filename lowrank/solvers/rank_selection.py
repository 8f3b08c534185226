"""Rank selection for NMF by the Kneedle elbow of relative error vs rank (Ashtari thesis §5.4).

Kneedle (Satopaa et al. 2011): normalize ranks and relative errors to [0, 1], take the chord
between the first and the last point, and pick the rank whose normalized error lies farthest
below it. :func:`kneedle` does this vectorized over any number of curves in torch
(``method="max"``, the thesis's "equivalently" form), or calls the ``kneed`` package per curve
(``method="kneed"``, its local-maximum/threshold rule; ``kneed`` is then imported, an optional
dependency). :func:`select_rank` computes the error curves with any solver, batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ..build import build_solver

__all__ = ["kneedle", "relative_errors", "select_rank"]

DEFAULT_SOLVER = "nmf(update=hals, init=nndsvd, iters=100)"


def relative_errors(x: Tensor, ranks: Sequence[int], solver: Any = DEFAULT_SOLVER) -> Tensor:
    """Relative reconstruction errors ``‖X − X̂_R‖_F / ‖X‖_F`` for every rank, batched.

    Args:
        x: ``(*batch, M, N)`` matrices.
        ranks: the ranks to try.
        solver: a solver spec (``rank`` is overridden) or a callable ``rank -> module``.

    Returns:
        ``(*batch, len(ranks))`` errors (0 for an all-zero matrix).
    """
    errors = []
    norm = torch.linalg.matrix_norm(x)
    with torch.no_grad():
        for rank in ranks:
            layer = solver(rank) if callable(solver) and not isinstance(solver, str) else None
            layer = layer if layer is not None else build_solver(solver, rank=int(rank))
            layer.eval()
            err = torch.linalg.matrix_norm(x - layer(x))
            errors.append(torch.where(norm > 0, err / norm.clamp_min(torch.finfo(x.dtype).tiny), 0.0))
    return torch.stack(errors, dim=-1)


def kneedle(ranks: Sequence[int] | Tensor, errors: Tensor, method: Literal["max", "kneed"] = "max") -> Tensor:
    """The elbow of decreasing error curves.

    Args:
        ranks: ``(K,)`` increasing ranks.
        errors: ``(*batch, K)`` errors (decreasing in rank, roughly convex).
        method: ``"max"``: the rank of maximum distance below the chord of the normalized curve
            (vectorized); ``"kneed"``: ``kneed.KneeLocator(curve="convex",
            direction="decreasing")`` per curve (falls back to ``"max"`` where it finds no knee).

    Returns:
        ``(*batch,)`` int64 ranks. A flat curve (e.g. an all-zero matrix) gives the first rank.

    Raises:
        ValueError: fewer than 3 ranks, or ranks not increasing.
    """
    r = torch.as_tensor(ranks, dtype=torch.float64)
    if r.dim() != 1 or r.numel() < 3:
        raise ValueError(f"kneedle needs at least 3 ranks, got {r.tolist()}")
    if not bool((r[1:] > r[:-1]).all()):
        raise ValueError(f"ranks must be strictly increasing, got {r.tolist()}")
    e = errors.detach().to("cpu", torch.float64)
    xn = (r - r[0]) / (r[-1] - r[0])
    lo, hi = e.amin(-1, keepdim=True), e.amax(-1, keepdim=True)
    span = hi - lo
    yn = torch.where(span > 0, (e - lo) / span.clamp_min(1e-300), torch.zeros_like(e))
    chord_gap = (1.0 - xn) - yn  # how far below the chord from (0, 1) to (1, 0)
    best = chord_gap.argmax(-1)
    best = torch.where(span.squeeze(-1) > 0, best, torch.zeros_like(best))
    picked = r.to(torch.int64)[best]
    if method == "kneed":
        picked = _kneed(r, e, picked)
    elif method != "max":
        raise ValueError(f"method must be 'max' or 'kneed', got {method!r}")
    return picked.to(errors.device)


def _kneed(r: Tensor, e: Tensor, fallback: Tensor) -> Tensor:
    try:
        from kneed import KneeLocator
    except ImportError as err:  # pragma: no cover - kneed is in the dev extra
        raise ImportError("method='kneed' needs the kneed package: pip install kneed") from err
    flat_e, flat_fb = e.reshape(-1, e.shape[-1]), fallback.reshape(-1).clone()
    for i, curve in enumerate(flat_e.tolist()):
        if max(curve) - min(curve) <= 0:
            continue
        knee = KneeLocator(r.tolist(), curve, curve="convex", direction="decreasing").knee
        if knee is not None:
            flat_fb[i] = round(knee)
    return flat_fb.reshape(fallback.shape)


def select_rank(
    x: Tensor,
    max_rank: int | None = None,
    *,
    ranks: Sequence[int] | None = None,
    solver: Any = DEFAULT_SOLVER,
    method: Literal["max", "kneed"] = "max",
) -> Tensor:
    """Pick a rank per matrix by the Kneedle elbow of its relative-error curve.

    Args:
        x: ``(*batch, M, N)`` matrices (non-negative for NMF).
        max_rank: try ranks ``1..max_rank`` (default ``min(M, N)``); ignored if ``ranks`` is given.
        ranks: the ranks to try (at least 3, increasing).
        solver: the solver spec used for the curves (``rank`` is overridden).
        method: see :func:`kneedle`.

    Returns:
        ``(*batch,)`` int64 selected ranks.

    Example:
        >>> import torch
        >>> w, h = torch.rand(2, 30, 4), torch.rand(2, 40, 4)
        >>> select_rank(w @ h.mT, max_rank=10).tolist()
        [4, 4]
    """
    if ranks is None:
        top = max_rank if max_rank is not None else min(x.shape[-2:])
        ranks = list(range(1, top + 1))
    return kneedle(ranks, relative_errors(x, ranks, solver), method)
