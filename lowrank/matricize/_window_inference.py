"""Moved to :mod:`lowrank.kernels.windows` (the kernel layer); re-exported for existing imports."""

from ..kernels.windows import LazyWindows, fold_rank1

__all__ = ["LazyWindows", "fold_rank1"]
