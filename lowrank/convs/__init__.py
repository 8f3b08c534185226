"""Convolutions: dense, and low-rank (CP / Tucker / tensor-train) kernels.

Parts (kind ``conv``): ``dense`` (alias ``conv``, ``nn.ConvNd``), ``cp_conv``, ``tucker_conv`` and
``tt_conv``, for 1-, 2- and 3-D inputs with per-axis stride, padding, dilation and groups. Any
conv-based net turns low-rank through its ``conv=`` spec, e.g.
``build_net("resunet(conv=cp_conv(rank=0.5), first_level_conv=dense)", 4, 4)``.

``rank`` (every low-rank conv):

- ``int``: the rank itself (a total over groups; a multiple of ``groups``);
- ``float``: ``alpha``, the thesis's ``R = alpha * C_in`` (ch. 8 uses ``alpha = 0.5``);
- ``"same"`` or ``"NN%"``: the largest rank whose parameter count is within that fraction of the
  dense kernel's (``"same"`` = 100%);
- a sequence: one rank per bond (Tucker ``(R_out, R_in[, r_1..r_n])``, tensor-train
  ``(r_1, ..., r_{n+1})``).

``implementation``: ``"factorized"`` (a chain of small convolutions), ``"reconstructed"`` (the
dense kernel contracted with opt_einsum, one convolution) or ``"auto"`` (the cheaper of the two by
a FLOP + memory-traffic estimate, decided per input size). ``from_conv(conv, rank)`` decomposes a
trained dense conv with tensorly (its global backend untouched); ``to_dense()`` goes back.

Example:
    >>> import torch
    >>> from lowrank import build_conv
    >>> conv = build_conv("cp_conv(rank=0.5)", 16, 32, 3, padding=1)
    >>> conv(torch.randn(2, 16, 8, 8, 8)).shape
    torch.Size([2, 32, 8, 8, 8])

Every module in this package is imported here, so its parts register on import; add a part by
adding a module.
"""

from .._autoimport import import_submodules

__all__ = import_submodules(__name__, __path__)
