"""Kneedle rank selection: known ranks recovered, agreement with the ``kneed`` package."""

from __future__ import annotations

import pytest
import torch

from lowrank.solvers.rank_selection import kneedle, relative_errors, select_rank


def _low_rank(ranks, m=30, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.rand(m, r, generator=g) @ torch.rand(n, r, generator=g).mT for r in ranks])


SOLVER = "nmf(update=hals, init=nndsvd, iters=30)"


def test_recovers_known_ranks_batched():
    x = _low_rank([2, 4, 3])
    ranks = list(range(1, 8))
    errors = relative_errors(x, ranks, SOLVER)
    assert kneedle(ranks, errors).tolist() == [2, 4, 3]
    pytest.importorskip("kneed")
    assert kneedle(ranks, errors, method="kneed").tolist() == [2, 4, 3]
    assert select_rank(x[:1], max_rank=6, solver=SOLVER).tolist() == [2]


def test_relative_errors_are_decreasing_and_zero_for_zero_matrices():
    x = torch.cat([_low_rank([3]), torch.zeros(1, 30, 40)])
    errors = relative_errors(x, [1, 2, 3, 4], SOLVER)
    assert errors.shape == (2, 4)
    assert bool((errors[0, 1:] <= errors[0, :-1] + 1e-3).all())
    assert errors[0, 2] < 0.05 < errors[0, 0]
    assert bool((errors[1] == 0).all())
    assert select_rank(torch.zeros(2, 5, 6), solver=SOLVER).tolist() == [1, 1]


def test_kneedle_matches_kneed_on_convex_curves():
    kneed = pytest.importorskip("kneed")
    ranks = list(range(1, 21))
    r = torch.tensor(ranks, dtype=torch.float64)
    curves = torch.stack([torch.exp(-r / tau) + 0.01 * r / 20 for tau in (1.5, 3.0, 5.0)])
    ours = kneedle(ranks, curves)
    for curve, pick in zip(curves.tolist(), ours.tolist()):
        reference = kneed.KneeLocator(ranks, curve, curve="convex", direction="decreasing").knee
        assert pick == reference


def test_bad_ranks_raise():
    with pytest.raises(ValueError, match="at least 3"):
        kneedle([1, 2], torch.rand(2))
    with pytest.raises(ValueError, match="increasing"):
        kneedle([1, 3, 2], torch.rand(3))
