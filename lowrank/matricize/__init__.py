"""Matricizers: views of feature maps as batches of matrices, with exact inverses.

Every module in this package is imported here, so its parts register on import; add a part by
adding a module.
"""

from .._autoimport import import_submodules

__all__ = import_submodules(__name__, __path__)
