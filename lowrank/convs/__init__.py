"""Convolutions: dense, and low-rank (CP / Tucker / tensor-train) kernels.

Every module in this package is imported here, so its parts register on import; add a part by
adding a module.
"""

from .._autoimport import import_submodules

__all__ = import_submodules(__name__, __path__)
