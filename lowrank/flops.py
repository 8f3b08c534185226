"""FLOP counting of lowrank's layers with ``torch.utils.flop_counter`` (opt-in, scoped).

lowrank's fused layers accumulate into their outputs with in-place ops (``baddbmm_``) that
``FlopCounterMode`` has no formula for. Importing lowrank changes nothing in torch; these helpers
add the formulas for the duration of a ``with`` block and remove them afterwards.

Example:
    >>> import torch
    >>> from lowrank.flops import count_flops
    >>> with count_flops() as counter:
    ...     _ = torch.ones(2, 3, 4).baddbmm_(torch.ones(2, 3, 5), torch.ones(2, 5, 4))
    >>> counter.get_total_flops()
    240
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.utils import flop_counter

__all__ = ["count_flops", "inplace_flop_formulas"]


def _inplace_formulas() -> dict:
    """The in-place ops lowrank uses, each with the out-of-place op whose formula it shares."""
    return {torch.ops.aten.baddbmm_: torch.ops.aten.baddbmm}


@contextlib.contextmanager
def inplace_flop_formulas() -> Iterator[None]:
    """Within the block, ``torch.utils.flop_counter`` counts lowrank's in-place ops.

    Formulas torch already has are left alone; those added are removed on exit.
    """
    added = []
    for inplace, same in _inplace_formulas().items():
        if inplace not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(inplace, get_raw=True)(flop_counter.flop_registry[same])
            added.append(inplace)
    try:
        yield
    finally:
        for op in added:
            flop_counter.flop_registry.pop(op, None)


@contextlib.contextmanager
def count_flops(depth: int | None = None) -> Iterator[flop_counter.FlopCounterMode]:
    """A ``FlopCounterMode`` (no display) that also counts lowrank's in-place ops.

    Args:
        depth: the module depth of the per-module breakdown (``None``: all).

    Yields:
        The counter; read ``counter.get_total_flops()`` after the block.
    """
    with inplace_flop_formulas(), flop_counter.FlopCounterMode(display=False, depth=depth) as counter:
        yield counter
