"""The ``triton`` backend: Triton kernels registered as ``torch.library`` custom ops.

The ops (:mod:`.ops`) are defined without importing triton; their fake (meta) implementations
let them trace on the ``meta`` device and under ``torch.compile``, and the kernels
(:mod:`._nmf_kernels`) are imported at the first real call.
"""

from .ops import MAX_M, MAX_RANK, MAX_TILE, nmf_iterations, nmf_rank1, supports_nmf

__all__ = ["MAX_M", "MAX_RANK", "MAX_TILE", "nmf_iterations", "nmf_rank1", "supports_nmf"]
