"""The gradient modes of an iterative solver in one loop, used by
:class:`~lowrank.solvers.base.Factorization` and the kernel layer's ``reference`` backend."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["State", "run_iterations"]

State = tuple[Tensor, ...]


def run_iterations(
    initial: Callable[[], State],
    step: Callable[[State], State],
    iters: int,
    grad_steps: int | None,
) -> State:
    """Run ``initial()`` then ``iters`` times ``step`` with the gradient mode ``grad_steps``.

    Args:
        initial: returns the initial state.
        step: maps a state to the next one.
        iters: number of steps T.
        grad_steps: ``None`` (all differentiated) or k (only the last k steps differentiated;
            the state entering them is detached).

    Returns:
        The final state.
    """
    free = 0 if grad_steps is None or not torch.is_grad_enabled() else max(iters - grad_steps, 0)
    if free > 0:
        with torch.no_grad():
            state = initial()
            for _ in range(free):
                state = step(state)
        state = tuple(s.detach() for s in state)
    else:
        state = initial()
    for _ in range(iters - free):
        state = step(state)
    return state
