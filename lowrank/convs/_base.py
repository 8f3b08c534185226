"""Shared machinery of the low-rank convolutions (CP, Tucker, tensor-train).

A low-rank convolution keeps its kernel ``W: (C_out, C_in/groups, *kernel_size)`` as a small
tensor network (per group of channels) and runs it either

- ``"factorized"``: as a chain of small convolutions read off the network (cheap in FLOPs when
  the rank is small), or
- ``"reconstructed"``: by contracting the network into the dense kernel with :mod:`opt_einsum`
  (the contraction path is computed once per shape and cached) and running one convolution, or
- ``"auto"``: whichever of the two a FLOP + memory-traffic estimate says is cheaper for the
  input size at hand, decided per call (the choice is cached per input shape).

Ranks (the ``rank`` argument of every low-rank conv) are written as

- an ``int``: the rank itself (for ``groups > 1`` the total over the groups, a multiple of
  ``groups``);
- a ``float`` ``alpha``: the thesis's ``R = alpha * C_in`` (ch. 8; ``alpha = 0.5`` there), rounded
  half up, at least 1 per group;
- ``"same"`` or a percentage such as ``"25%"``: the largest rank whose parameter count stays
  within that fraction of the dense kernel's (at least rank 1);
- a sequence of ints: one rank per bond of the network (Tucker, tensor-train; see each part).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any

import opt_einsum
import torch
import torch.nn.functional as F
from torch import nn

from ._convert import ConvertMixin

__all__ = ["LowRankConv", "contract", "path_cost", "conv_nd", "channels_last"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_PERCENT_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*")


def conv_nd(spatial_dims: int):
    """``F.conv1d``, ``F.conv2d`` or ``F.conv3d``."""
    return _CONV[spatial_dims]


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x (B, C, *S)`` in channels-last memory order (2-D and 3-D; 1-D unchanged)."""
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


@functools.lru_cache(maxsize=512)
def _expression(equation: str, shapes: tuple[tuple[int, ...], ...]):
    return opt_einsum.contract_expression(equation, *shapes, optimize="optimal")


@functools.lru_cache(maxsize=512)
def path_cost(equation: str, shapes: tuple[tuple[int, ...], ...]) -> float:
    """FLOP count of the optimal contraction path of ``equation`` (opt_einsum's ``opt_cost``)."""
    _, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="optimal")
    return float(info.opt_cost)


def contract(equation: str, *operands: torch.Tensor) -> torch.Tensor:
    """``einsum`` with an opt_einsum contraction path computed once per shape and cached."""
    shapes = tuple(tuple(op.shape) for op in operands)
    return _expression(equation, shapes)(*operands, backend="torch")


def _ntuple(value: Any, n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or {n} ints, got {value!r}")
    if isinstance(value, int):
        values = (value,) * n
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == n:
        values = tuple(value)
    else:
        raise ValueError(f"{name} must be an int or a sequence of {n} ints (spatial_dims={n}), got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{name} must hold ints, got {value!r}")
    return tuple(int(v) for v in values)


class LowRankConv(ConvertMixin, nn.Module):
    """Base of the low-rank convolutions: argument checks, bias, dispatch, ``to_dense``, ``from_conv``.

    Subclasses create their factors after :meth:`_setup` and :meth:`_resolve_rank`, then call
    :meth:`_init_factors`; they define the rank forms (``_scalar_ranks``, ``_int_ranks``), the
    parameter count per rank (``_count``), the factors in tensorly's mode order
    (``_factor_list``), the tensorly decomposition of one group's kernel (``_decompose``), the
    dense kernel (``reconstruct``) and its FLOPs (``_reconstruction_flops``), and the factorized
    forward (``_forward_factorized``) with its cost (``_factorized_cost``).
    """

    #: name of the tensor format, for messages
    _format = "low-rank"
    #: Cost of writing (and reading back) one element of an intermediate tensor, in multiply-adds,
    #: for the ``auto`` choice. Calibrated with bench/bench_convs.py on one core of an x86-64 CPU
    #: (C = 32, the closest call): the memory-bound passes of the factorized path cost ~60-100
    #: multiply-adds of a dense convolution per element. Override per class or instance for
    #: other hardware.
    element_cost: float = 100.0

    def _setup(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        padding: int | Sequence[int] | str,
        dilation: int | Sequence[int],
        groups: int,
        bias: bool,
        spatial_dims: int,
        implementation: str,
    ) -> None:
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
        n = spatial_dims
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels={in_channels} and out_channels={out_channels} must both be divisible "
                f"by groups={groups}"
            )
        if implementation not in ("factorized", "reconstructed", "auto"):
            raise ValueError(
                f"implementation must be 'factorized', 'reconstructed' or 'auto', got {implementation!r}"
            )
        self.spatial_dims = n
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _ntuple(kernel_size, n, "kernel_size")
        self.stride = _ntuple(stride, n, "stride")
        self.dilation = _ntuple(dilation, n, "dilation")
        for name, values in (
            ("kernel_size", self.kernel_size),
            ("stride", self.stride),
            ("dilation", self.dilation),
        ):
            if min(values) < 1:
                raise ValueError(f"{name} must be >= 1 on every axis, got {values}")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be an int, {n} ints, 'same' or 'valid', got {padding!r}")
            if padding == "same" and max(self.stride) > 1:
                raise ValueError("padding='same' needs stride 1 on every axis; give explicit padding instead")
            self.padding: tuple[int, ...] | str = padding
            if padding == "valid":
                self._pads = tuple((0, 0) for _ in range(n))
            else:
                totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
                self._pads = tuple((t // 2, t - t // 2) for t in totals)
        else:
            self.padding = _ntuple(padding, n, "padding")
            if min(self.padding) < 0:
                raise ValueError(f"padding must be >= 0, got {self.padding}")
            self._pads = tuple((p, p) for p in self.padding)
        self.implementation = implementation
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self._choices: dict[tuple, str] = {}

    # ----------------------------------------------------------------------------- ranks
    def _resolve_rank(self, rank: Any, bonds: int) -> tuple[int, ...]:
        """Per-group ranks (one per bond of the network) from the user's ``rank``."""
        g = self.groups
        if isinstance(rank, bool):
            raise TypeError(f"rank must be an int, a float alpha, 'same', 'NN%' or a sequence, got {rank!r}")
        if isinstance(rank, int):
            if rank < 1 or rank % g:
                raise ValueError(f"rank={rank} must be a positive multiple of groups={g}")
            return self._int_ranks(rank // g)
        if isinstance(rank, float):
            if not (math.isfinite(rank) and rank > 0):
                raise ValueError(f"rank alpha must be a positive finite float (R = alpha * C_in), got {rank}")
            return self._scalar_ranks(max(1, math.floor(rank * self.in_channels / g + 0.5)))
        if isinstance(rank, str):
            if rank == "same":
                fraction = 1.0
            elif _PERCENT_RE.fullmatch(rank):
                fraction = float(_PERCENT_RE.fullmatch(rank).group(1)) / 100.0
            else:
                raise ValueError(
                    f"rank={rank!r}: a string rank is 'same' (the dense parameter count) or a percentage "
                    "of it such as '25%'; use an int for the rank itself or a float for alpha"
                )
            if fraction <= 0:
                raise ValueError(f"rank={rank!r} must be a positive fraction of the dense parameters")
            return self._ranks_for_budget(fraction * self.dense_parameters)
        if isinstance(rank, Sequence):
            ranks = tuple(rank)
            if len(ranks) != bonds or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
                raise ValueError(f"a {self._format} rank sequence needs {bonds} ints, got {rank!r}")
            if min(ranks) < 1 or any(r % g for r in ranks):
                raise ValueError(f"ranks {ranks} must be positive multiples of groups={g}")
            return tuple(r // g for r in ranks)
        raise TypeError(f"cannot read a rank from {type(rank).__name__} {rank!r}")

    def _ranks_for_budget(self, budget: float) -> tuple[int, ...]:
        """The largest scalar rank whose parameter count is within ``budget`` (at least 1)."""
        lo, hi = 1, 1
        while self._count(self._scalar_ranks(hi * 2)) <= budget and hi < 1 << 20:
            hi *= 2
        hi *= 2
        while hi - lo > 1:  # invariant: count(lo) <= budget or lo == 1; count(hi) > budget
            mid = (lo + hi) // 2
            if self._count(self._scalar_ranks(mid)) <= budget:
                lo = mid
            else:
                hi = mid
        return self._scalar_ranks(lo)

    @property
    def dense_parameters(self) -> int:
        """Number of entries of the equivalent dense kernel."""
        return self.out_channels * (self.in_channels // self.groups) * math.prod(self.kernel_size)

    # ----------------------------------------------------------------------------- init
    def _init_factors(self, factors: Sequence[torch.Tensor], internal: int) -> None:
        """Draw ``factors`` so the reconstructed kernel has the std of a default ``nn.ConvNd``.

        Each factor gets i.i.d. normal entries of one std ``s``; an entry of the kernel is then a
        sum of ``internal`` uncorrelated products of ``len(factors)`` entries, so its variance is
        ``internal * s**(2 * len(factors))``. Off the meta device the result is then rescaled so
        that the empirical std matches exactly.
        """
        fan_in = (self.in_channels // self.groups) * math.prod(self.kernel_size)
        target = 1.0 / math.sqrt(3.0 * fan_in)  # kaiming_uniform(a=sqrt(5)) of nn.ConvNd
        std = (target**2 / internal) ** (1.0 / (2 * len(factors)))
        with torch.no_grad():
            for factor in factors:
                factor.normal_(0.0, std)
            if not any(f.is_meta for f in factors):
                actual = self.reconstruct().double().std().item()
                if actual > 0 and math.isfinite(actual):
                    scale = (target / actual) ** (1.0 / len(factors))
                    for factor in factors:
                        factor.mul_(scale)
            if self.bias is not None:
                bound = 1.0 / math.sqrt(fan_in)
                self.bias.uniform_(-bound, bound)

    # ----------------------------------------------------------------------------- forward
    @property
    def weight(self) -> torch.Tensor:
        """The reconstructed dense kernel ``(C_out, C_in/groups, *kernel_size)``."""
        return self.reconstruct()

    def output_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """Spatial output size for a spatial input size (same formula as ``nn.ConvNd``)."""
        return tuple(
            (s + lo + hi - d * (k - 1) - 1) // st + 1
            for s, (lo, hi), d, k, st in zip(size, self._pads, self.dilation, self.kernel_size, self.stride)
        )

    def reconstructed_cost(self, size: Sequence[int]) -> float:
        """Estimated cost (multiply-adds + ``element_cost`` per element written) of the dense path."""
        n_out = math.prod(self.output_size(size))
        conv = n_out * self.dense_parameters
        return conv + self._reconstruction_flops() + self.element_cost * (n_out * self.out_channels)

    def factorized_cost(self, size: Sequence[int]) -> float:
        """Estimated cost (multiply-adds + ``element_cost`` per element written) of the factorized path."""
        macs, elements = self._factorized_cost(tuple(size))
        return macs + self.element_cost * elements

    def choose(self, size: Sequence[int]) -> str:
        """The implementation ``forward`` runs for an input of spatial size ``size``."""
        if self.implementation != "auto":
            return self.implementation
        key = tuple(size)
        choice = self._choices.get(key)
        if choice is None:
            cheaper = self.factorized_cost(key) < self.reconstructed_cost(key)
            choice = "factorized" if cheaper else "reconstructed"
            self._choices[key] = choice
        return choice

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects (B, {self.in_channels}, *{self.spatial_dims} spatial), "
                f"got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x: (B, C_in, *S)`` to ``(B, C_out, *S')``."""
        self._check_input(x)
        if self.choose(x.shape[2:]) == "factorized":
            return self._forward_factorized(x)
        weight = self.reconstruct()
        return _CONV[self.spatial_dims](
            x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    def _pad_axis(self, z: torch.Tensor, axis: int) -> tuple[torch.Tensor, int]:
        """Pad ``axis`` of ``z (B, C, *S)`` for a per-axis conv; returns the symmetric padding left to do."""
        lo, hi = self._pads[axis]
        if lo == hi:
            return z, lo
        pad = [0, 0] * self.spatial_dims
        pad[2 * (self.spatial_dims - 1 - axis)] = lo
        pad[2 * (self.spatial_dims - 1 - axis) + 1] = hi
        return F.pad(z, pad), 0

    def _axis_conv(self, z: torch.Tensor, weight: torch.Tensor, axis: int, groups: int) -> torch.Tensor:
        """Convolve ``z (B, C, *S)`` along one spatial ``axis`` with ``weight (C', C/groups, k)``."""
        n = self.spatial_dims
        shape = [1] * n
        shape[axis] = weight.shape[-1]
        z, pad = self._pad_axis(z, axis)
        stride, padding, dilation = [1] * n, [0] * n, [1] * n
        stride[axis], padding[axis], dilation[axis] = self.stride[axis], pad, self.dilation[axis]
        return _CONV[n](
            z, weight.reshape(*weight.shape[:-1], *shape), None, stride, padding, dilation, groups
        )

    def _axis_order(self) -> list[int]:
        """Spatial axes, the most shrinking (strided) first, so later convs see smaller tensors."""
        return sorted(range(self.spatial_dims), key=lambda a: (-self.stride[a], a))

    def _axis_numels(self, size: Sequence[int], order: Sequence[int]) -> list[int]:
        """Spatial element counts after each per-axis conv, applied in ``order``."""
        current, out, numels = list(size), self.output_size(size), []
        for axis in order:
            current[axis] = out[axis]
            numels.append(math.prod(current))
        return numels

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"ranks={self.ranks}, implementation={self.implementation!r}"
        )

    # ----------------------------------------------------------------------------- hooks
    def _scalar_ranks(self, m: int) -> tuple[int, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _int_ranks(self, m: int) -> tuple[int, ...]:
        return self._scalar_ranks(m)

    def _count(self, ranks: tuple[int, ...]) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _factor_list(self) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decompose(self, block) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    def _reconstruction_flops(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def reconstruct(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _forward_factorized(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _factorized_cost(self, size: tuple[int, ...]) -> tuple[float, float]:  # pragma: no cover
        raise NotImplementedError
