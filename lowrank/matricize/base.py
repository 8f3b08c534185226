"""The matricizer protocol, its context object and the helpers every matricizer shares.

A matricizer turns a feature map ``x: (B, C, *S)`` (1, 2 or 3 spatial axes) into a batch of
matrices and back:

- ``forward(x) -> (matrices (B', M, N), ctx)``;
- ``inverse(matrices, ctx) -> (B, C, *S)``, exact: ``inverse(*forward(x)) == x``;
- ``inverse_rank1(u, w, ctx)``: ``inverse(u wᵀ, ctx)`` from the factors of rank-1 matrices;
- ``component_map(factors, ctx) -> (B, heads * R, *S)``: the spatial factor of each matrix
  (``V`` of ``U Vᵀ`` for the spatial views) put back in space, for interpretability figures.

The spatial size is read from the input at run time (and kept in ``ctx``), so one module serves
every input size. ``ctx.mask`` is ``None`` when no column is padding, else a ``(B', N)`` bool
tensor, ``True`` for the columns that hold a voxel of the input; a solver given it
(``solver(matrices, mask=ctx.mask)``) treats the padded (all-zero) columns as absent, so padding
does not change the factorization of the valid part.

Example:
    >>> import torch
    >>> from lowrank import build_matricize
    >>> m = build_matricize("local(patch=4, head_dim=2)", 4, spatial_dims=2)
    >>> x = torch.randn(1, 4, 6, 8)
    >>> matrices, ctx = m(x)
    >>> matrices.shape, ctx.mask.shape
    (torch.Size([8, 2, 16]), torch.Size([8, 16]))
    >>> torch.equal(m.inverse(matrices, ctx), x)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "DTYPES",
    "MatricizeContext",
    "MatricizeProtocol",
    "Matricize",
    "resolve_heads",
    "per_axis",
    "check_spatial_dims",
    "spatial_factor",
    "check_matrices",
]

#: dtypes every matricizer supports (they only move data)
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@dataclass
class MatricizeContext:
    """What :meth:`Matricize.inverse` needs to undo a forward pass (the runtime sizes).

    Attributes:
        shape: the input's shape ``(B, C, *S)``.
        heads: the number of channel groups the channels were split into.
        mask: ``None`` when every column holds an input voxel, else ``(B', N)`` bool, ``True`` on
            the valid columns (the others are zero padding, to be ignored by the solver).
        layout: variant-specific layout (e.g. the window plan of ``local``/``swin``), or ``None``.
    """

    shape: tuple[int, ...]
    heads: int
    mask: Tensor | None = None
    layout: Any = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The input's spatial size ``S``."""
        return tuple(self.shape[2:])


@runtime_checkable
class MatricizeProtocol(Protocol):
    """The interface of every matricizer (structural: any object with these methods fits)."""

    def forward(self, x: Tensor) -> tuple[Tensor, MatricizeContext]:
        """``(B, C, *S) -> (matrices (B', M, N), ctx)``."""
        ...

    def inverse(self, matrices: Tensor, ctx: MatricizeContext) -> Tensor:
        """``(B', M, N) -> (B, C, *S)``, the exact inverse of :meth:`forward`."""
        ...


def check_spatial_dims(spatial_dims: int | None) -> int | None:
    """Validate a ``spatial_dims`` argument (1, 2, 3 or None).

    Raises:
        ValueError: any other value.
    """
    if spatial_dims is not None and spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    return spatial_dims


def resolve_heads(
    name: str, channels: int | None, heads: int | None, head_dim: int | None
) -> tuple[int | None, int | None]:
    """Check ``heads``/``head_dim`` (at most one given; positive) against ``channels`` if known.

    Args:
        name: the part name, for messages.
        channels: the channel count ``C`` when the caller knows it, else None.
        heads: number of channel groups, or None.
        head_dim: channels per group ``E``, or None.

    Returns:
        ``(heads, head_dim)`` with exactly one set: ``heads=1`` when neither was given.

    Raises:
        ValueError: both given, a non-positive value, or ``channels`` not divisible.
    """
    if heads is not None and head_dim is not None:
        raise ValueError(f"{name}: give heads or head_dim, not both (got heads={heads}, head_dim={head_dim})")
    if heads is None and head_dim is None:
        heads = 1
    for key, value in (("heads", heads), ("head_dim", head_dim)):
        if value is not None and value < 1:
            raise ValueError(f"{name}: {key} must be a positive integer, got {value}")
    if channels is not None:
        if channels < 1:
            raise ValueError(f"{name}: channels must be positive, got {channels}")
        _split_channels(name, channels, heads, head_dim)
    return heads, head_dim


def _split_channels(name: str, channels: int, heads: int | None, head_dim: int | None) -> tuple[int, int]:
    """``(heads, E)`` for ``channels`` channels; a clear error when they do not divide."""
    if head_dim is not None:
        if channels % head_dim:
            raise ValueError(
                f"{name}: channels={channels} is not divisible by head_dim={head_dim}; "
                f"choose a head_dim that divides {channels} (or change the channel count)"
            )
        return channels // head_dim, head_dim
    assert heads is not None
    if channels % heads:
        raise ValueError(
            f"{name}: channels={channels} is not divisible by heads={heads}; "
            f"choose a number of heads that divides {channels} (or change the channel count)"
        )
    return heads, channels // heads


def per_axis(name: str, key: str, value: int | Sequence[int], ndim: int, *, minimum: int) -> tuple[int, ...]:
    """Broadcast an int (or check a sequence) to one value per spatial axis.

    Raises:
        ValueError: a sequence of the wrong length or a value below ``minimum``.
    """
    values = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(values) != ndim:
        raise ValueError(
            f"{name}: {key}={list(values)} has {len(values)} values but the input has {ndim} "
            f"spatial axes; give one value per axis or a single int"
        )
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise ValueError(f"{name}: {key} values must be integers >= {minimum}, got {list(values)}")
    return values


def spatial_factor(factors: Tensor | Sequence[Tensor], index: int) -> Tensor:
    """Pick the spatial factor out of a solver's ``(U, V)`` (a single tensor passes through)."""
    if isinstance(factors, Tensor):
        return factors
    if len(factors) != 2:
        raise ValueError(f"factors must be a tensor or a (U, V) pair, got {len(factors)} items")
    return factors[index]


class Matricize(nn.Module):
    """Base class of the matricizers (see the module docstring for the protocol).

    Subclasses implement :meth:`forward` and :meth:`inverse`; this class holds the head split and
    the input checks.

    Args:
        heads: number of channel groups (matrices per sample and window), or None.
        head_dim: channels per group ``E``, or None; give at most one of ``heads``/``head_dim``
            (neither: one group holding all channels).
        channels: the channel count, when the caller knows it (checked at build time).
        spatial_dims: the number of spatial axes, when the caller knows it (1, 2 or 3).

    Raises:
        ValueError: both ``heads`` and ``head_dim``, or ``channels`` not divisible by them.
    """

    #: which of a solver's ``(U, V)`` factors indexes the voxels (``V`` for the spatial views)
    spatial_factor_index: int = 1

    #: optional capability: ``lazy(x)`` returns the matrices as windows read on demand
    #: (:class:`lowrank.kernels.LazyWindows`, used by the inference fold); ``None`` where a
    #: matricizer has none. Capabilities are declared here, not discovered with ``getattr``.
    lazy: Callable[[Tensor], Any] | None = None

    def __init__(
        self,
        *,
        heads: int | None = None,
        head_dim: int | None = None,
        channels: int | None = None,
        spatial_dims: int | None = None,
    ):
        super().__init__()
        name = getattr(getattr(type(self), "_lowrank_part", None), "name", type(self).__name__)
        self._name = name
        self.heads, self.head_dim = resolve_heads(name, channels, heads, head_dim)
        self.channels = channels
        self.spatial_dims = check_spatial_dims(spatial_dims)

    def _check_input(self, x: Tensor) -> tuple[int, int]:
        """Check ``x: (B, C, *S)`` and return ``(heads, E)`` for its channel count."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{self._name}: expected a tensor (B, C, *S), got {type(x).__name__}")
        nd = x.dim() - 2
        if self.spatial_dims is not None and nd != self.spatial_dims:
            raise ValueError(
                f"{self._name}: built for spatial_dims={self.spatial_dims}, so it expects a "
                f"{self.spatial_dims + 2}-D input (B, C, *S), got shape {tuple(x.shape)}"
            )
        if nd not in (1, 2, 3):
            raise ValueError(
                f"{self._name}: expected an input (B, C, *S) with 1, 2 or 3 spatial axes, "
                f"got shape {tuple(x.shape)}"
            )
        if self.channels is not None and x.shape[1] != self.channels:
            raise ValueError(
                f"{self._name}: built for channels={self.channels}, got an input with "
                f"{x.shape[1]} channels (shape {tuple(x.shape)})"
            )
        return _split_channels(self._name, x.shape[1], self.heads, self.head_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, MatricizeContext]:  # pragma: no cover - abstract
        """``x: (B, C, *S) -> (matrices (B', M, N), ctx)``."""
        raise NotImplementedError

    def inverse(self, matrices: Tensor, ctx: MatricizeContext) -> Tensor:  # pragma: no cover
        """``matrices: (B', M, N) -> (B, C, *S)``."""
        raise NotImplementedError

    def inverse_rank1(self, u: Tensor, w: Tensor, ctx: MatricizeContext) -> Tensor:
        """``inverse(u wᵀ)``: the inverse of rank-1 matrices given by their factors.

        The default forms the ``(B', M, N)`` product; windowed views override it to write the
        map straight from the factors (no product and no window-to-voxel copy of it).

        Args:
            u: ``(B', M)``.
            w: ``(B', N)``.
            ctx: the context of the forward pass that made the matrices.

        Returns:
            ``(B, C, *S)``, equal to ``inverse(u[..., None] * w[..., None, :], ctx)`` (possibly
            in a channels-last memory layout).
        """
        return self.inverse(u.unsqueeze(-1) * w.unsqueeze(-2), ctx)

    def component_map(self, factors: Tensor | Sequence[Tensor], ctx: MatricizeContext) -> Tensor:
        """Put the spatial factor of each matrix back in space (for component figures).

        Args:
            factors: a solver's ``(U (B', M, R), V (B', N, R))`` (e.g. ``solver.factors``), or the
                spatial factor alone (``V`` for the spatial views, ``U`` for ``channel``).
            ctx: the context of the forward pass that made the matrices.

        Returns:
            ``(B, heads * R, *S)``: channel ``h * R + r`` is component ``r`` of head ``h``; for
            window views each window's factor fills its window, averaged over shifted views.
        """
        spatial = spatial_factor(factors, self.spatial_factor_index)
        return self._component_inverse(spatial.transpose(-1, -2), ctx)

    def _component_inverse(self, rows: Tensor, ctx: MatricizeContext) -> Tensor:
        """``(B', R, N)`` spatial rows -> ``(B, heads * R, *S)`` (the inverse with R rows)."""
        return self.inverse(rows, ctx)

    def extra_repr(self) -> str:
        return ""


def check_matrices(name: str, matrices: Tensor, ctx: MatricizeContext, batch: int, columns: int) -> None:
    """Check that ``matrices`` has the ``(B', M, N)`` layout ``ctx`` expects.

    Raises:
        ValueError: a different batch or column count (e.g. matrices from another input size).
    """
    if matrices.dim() != 3 or matrices.shape[0] != batch or matrices.shape[2] != columns:
        raise ValueError(
            f"{name}.inverse: expected matrices (B'={batch}, M, N={columns}) for an input of shape "
            f"{tuple(ctx.shape)}, got {tuple(matrices.shape)}; pass the ctx of the forward pass "
            f"that made these matrices"
        )
