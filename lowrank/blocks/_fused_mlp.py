"""Moved to the kernel layer (:func:`lowrank.kernels.fused_mlp`, CPU node in
:mod:`lowrank.kernels.cpu.mlp`); re-exported for existing imports."""

from ..kernels import fused_mlp
from ..kernels.cpu.mlp import CHUNK_ELEMENTS

__all__ = ["fused_mlp", "CHUNK_ELEMENTS"]
