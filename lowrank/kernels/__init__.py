"""The kernel layer: every fast path of the library, one function per operation, three backends.

Solvers, matricizers, blocks and convs call these functions; which implementation runs is
chosen here, per call, from the switch :func:`use_kernels` (or the environment variable
``LOWRANK_KERNELS``) and the tensors' device:

=============  ==============================================================================
backend        what runs
=============  ==============================================================================
``reference``  plain PyTorch autograd, written like the formulas (:mod:`.reference`): the oracle
               every other backend is tested against; any device, ``torch.compile``, ``meta``
``cpu``        today's fused CPU nodes (:mod:`.cpu`): hand-written backward, cache-sized in-place
               chunks, direct oneDNN calls. CPU tensors in eager mode only
``triton``     Triton kernels registered as ``torch.library`` custom ops (:mod:`.triton`, fake
               implementations for ``meta`` / ``torch.compile``): CUDA tensors (CPU tensors under
               ``TRITON_INTERPRET=1``); shapes a kernel does not cover run ``reference``
``auto``       (default) ``cpu`` for CPU tensors, ``triton`` for CUDA tensors when triton
               imports, else ``reference``
=============  ==============================================================================

Operations:

* NMF layer: :func:`nmf_rank1`, :func:`nmf_rank1_factors`, :func:`nmf_iterations`
  (``cpu``: rank 1 and HALS; ``triton``: rank 1 and MU/HALS up to rank 16, M <= 128);
* the Factorizer's MLP branch :func:`fused_mlp` (``cpu``, ``triton``) and LayerNorm + projection
  :func:`norm_project` (``triton``); the channel LayerNorm (:mod:`.norm`: ``cpu``, ``triton``);
* the inference fold of windowed matricizers: :class:`LazyWindows`, :func:`fold_rank1`
  (cache-sized chunks on ``cpu``, one chunk elsewhere); the two-view window fold of ``swin``
  (``triton``: :mod:`.triton.window_ops`, called by :mod:`lowrank.matricize._windows`);
* :func:`convolution` (``cpu``: small one-sample 3-D convs straight to oneDNN).

The other factorization layers (semi-NMF, weak NMF, VQ, CD) run ``reference`` on every backend
(their steps are a few batched matmuls and element-wise ops; ``torch.compile`` fuses the
element-wise parts).

Example:
    >>> import lowrank
    >>> with lowrank.use_kernels("reference"):  # every operation in plain autograd
    ...     pass
"""

from ._switch import BACKENDS, ENV_VAR, backend_for, current, triton_available, use_kernels
from .conv import convolution
from .mlp import fused_mlp, mlp_backend, norm_project, norm_project_backend
from .nmf import nmf_backend, nmf_iterations, nmf_rank1, nmf_rank1_factors
from .windows import LazyWindows, chunk_elements, fold_rank1

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "LazyWindows",
    "backend_for",
    "chunk_elements",
    "convolution",
    "current",
    "fold_rank1",
    "fused_mlp",
    "mlp_backend",
    "nmf_backend",
    "nmf_iterations",
    "nmf_rank1",
    "nmf_rank1_factors",
    "norm_project",
    "norm_project_backend",
    "triton_available",
    "use_kernels",
]
