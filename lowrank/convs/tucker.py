"""Tucker convolution: a small core kernel between 1x1 projections (Kim et al.'s Tucker-2 and full Tucker)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ..registry import register
from . import _tensorly
from ._base import LowRankConv, contract, conv_nd, path_cost

__all__ = ["TuckerConv"]

_SPATIAL, _SPATIAL_RANK = "abc", "xyz"


@register("conv", "tucker_conv", test_size=8)
class TuckerConv(LowRankConv):
    """Convolution whose kernel is in Tucker form: a core contracted with one factor per mode.

    Per group, ``W[o, i, a, b, c] = sum_{p,q} core[p, q, a, b, c] U_out[o, p] U_in[i, q]``
    (Tucker-2: the spatial modes are kept whole), or with spatial ranks given,
    ``W = core x_1 U_out x_2 U_in x_3 A x_4 B x_5 C`` (full Tucker). The factorized path is a 1x1
    convolution ``C_in -> R_in``, the core convolution ``R_in -> R_out`` (with this conv's stride,
    padding, dilation; spatial factors are folded into the small core kernel first) and a 1x1
    convolution ``R_out -> C_out`` with the bias.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: kernel size, an int or one per axis.
        stride: stride, an int or one per axis.
        padding: zero padding, an int, one per axis, ``"same"`` (stride 1) or ``"valid"``.
        dilation: dilation, an int or one per axis.
        groups: blocked connections, as in ``nn.ConvNd``; each group has its own core and factors.
        bias: add a learnable bias.
        spatial_dims: 1, 2 or 3.
        rank: an int ``R`` (``R_out = R_in = R``); a float ``alpha`` (``R_in = round(alpha * C_in)``,
            ``R_out = round(alpha * C_out)``); ``"same"`` / ``"NN%"`` (the largest such ranks within
            that fraction of the dense parameter count); or a sequence ``(R_out, R_in)`` or
            ``(R_out, R_in, r_1, ..., r_n)`` (full Tucker with spatial ranks). Ranks are totals over
            groups (multiples of ``groups``).
        implementation: ``"factorized"``, ``"reconstructed"`` or ``"auto"`` (see :mod:`lowrank.convs`).

    Shapes:
        ``(B, C_in, *S) -> (B, C_out, *S')``.

    Parameters:
        ``core (G, R_out/G, R_in/G, *k or *r)``, ``out_factor (G, C_out/G, R_out/G)``,
        ``in_factor (G, C_in/G, R_in/G)``, ``spatial_factors[j] (G, k_j, r_j)`` (full Tucker only).
    """

    _format = "Tucker"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        *,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        spatial_dims: int = 3,
        rank: int | float | str | Sequence[int] = 0.5,
        implementation: Literal["factorized", "reconstructed", "auto"] = "auto",
    ):
        super().__init__()
        self._setup(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            spatial_dims,
            implementation,
        )
        n, g = spatial_dims, groups
        self.full = isinstance(rank, Sequence) and not isinstance(rank, str) and len(rank) == 2 + n
        if self.full:
            ranks = tuple(rank)
            if any(r > k for r, k in zip(ranks[2:], self.kernel_size)):
                raise ValueError(
                    f"spatial Tucker ranks {ranks[2:]} must not exceed kernel_size {self.kernel_size}"
                )
            group_ranks = (*self._resolve_rank(ranks[:2], 2), *ranks[2:])
        else:
            group_ranks = self._resolve_rank(rank, 2)
        self.group_ranks = group_ranks
        self.ranks = (group_ranks[0] * g, group_ranks[1] * g, *group_ranks[2:])
        r_out, r_in = group_ranks[:2]
        core_spatial = group_ranks[2:] if self.full else self.kernel_size
        self.core = nn.Parameter(torch.empty(g, r_out, r_in, *core_spatial))
        self.out_factor = nn.Parameter(torch.empty(g, out_channels // g, r_out))
        self.in_factor = nn.Parameter(torch.empty(g, in_channels // g, r_in))
        self.spatial_factors = nn.ParameterList(
            nn.Parameter(torch.empty(g, k, r)) for k, r in zip(self.kernel_size, group_ranks[2:])
        )
        self._init_factors(self._factor_list(), internal=r_out * r_in * math.prod(group_ranks[2:]))

    # ----------------------------------------------------------------------------- hooks
    def _scalar_ranks(self, m: int) -> tuple[int, ...]:
        ratio = (self.out_channels // self.groups) / (self.in_channels // self.groups)
        return (max(1, math.floor(m * ratio + 0.5)), m)

    def _int_ranks(self, m: int) -> tuple[int, ...]:
        return (m, m)

    def _count(self, ranks: tuple[int, ...]) -> int:
        r_out, r_in = ranks[:2]
        g = self.groups
        spatial = ranks[2:]
        core = r_out * r_in * math.prod(spatial or self.kernel_size)
        factors = sum(k * r for k, r in zip(self.kernel_size, spatial))
        return g * (core + factors + r_out * self.out_channels // g + r_in * self.in_channels // g)

    def _factor_list(self) -> list[torch.Tensor]:
        return [self.core, self.out_factor, self.in_factor, *self.spatial_factors]

    def _decompose(self, block) -> list:
        modes = list(range(2 + (self.spatial_dims if self.full else 0)))
        core, factors = _tensorly.tucker(block, self.group_ranks, modes)
        return [core, *factors]

    def _core_equation(self) -> str:
        n = self.spatial_dims
        axes, ranks = _SPATIAL[:n], _SPATIAL_RANK[:n]
        return f"gpq{ranks}," + ",".join(f"g{a}{r}" for a, r in zip(axes, ranks)) + f"->gpq{axes}"

    def _equation(self) -> str:
        n = self.spatial_dims
        axes = _SPATIAL[:n]
        core = _SPATIAL_RANK[:n] if self.full else axes
        spatial = "".join(f",g{a}{r}" for a, r in zip(axes, _SPATIAL_RANK[:n])) if self.full else ""
        return f"gpq{core},gop,giq{spatial}->goi{axes}"

    def _reconstruction_flops(self) -> float:
        shapes = tuple(tuple(f.shape) for f in self._factor_list())
        return path_cost(self._equation(), shapes)

    def reconstruct(self) -> torch.Tensor:
        """The dense kernel ``(C_out, C_in/groups, *kernel_size)``."""
        kernel = contract(self._equation(), *self._factor_list())
        return kernel.reshape(
            self.out_channels, self.in_channels // self.groups, *self.kernel_size
        ).contiguous()

    def _factorized_cost(self, size: tuple[int, ...]) -> tuple[float, float]:
        r_out, r_in = self.ranks[:2]
        n_in, n_out = math.prod(size), math.prod(self.output_size(size))
        g = self.groups
        macs = n_in * self.in_channels * (r_in // g) + n_out * self.out_channels * (r_out // g)
        macs += n_out * r_out * (r_in // g) * math.prod(self.kernel_size)
        return float(macs), float(n_in * r_in + n_out * r_out + n_out * self.out_channels)

    # ----------------------------------------------------------------------------- forward
    def _forward_factorized(self, x: torch.Tensor) -> torch.Tensor:
        n, g = self.spatial_dims, self.groups
        conv = conv_nd(n)
        ones = [1] * n
        r_out, r_in = self.ranks[:2]
        z = conv(x, self.in_factor.transpose(1, 2).reshape(r_in, -1, *ones), None, 1, 0, 1, g)
        core = self.core
        if self.full:
            core = contract(self._core_equation(), core, *self.spatial_factors)
        core = core.reshape(r_out, r_in // g, *self.kernel_size)
        z = conv(z, core, None, self.stride, self.padding, self.dilation, g)
        return conv(z, self.out_factor.reshape(self.out_channels, -1, *ones), self.bias, 1, 0, 1, g)
