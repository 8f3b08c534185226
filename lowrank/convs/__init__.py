"""Convolutions: dense, and low-rank (CP / Tucker / tensor-train) kernels."""

from .dense import DenseConv

__all__ = ["DenseConv"]
