"""Tensor-train convolution: the kernel as a chain of cores, input channels -> axes -> output channels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..registry import register
from . import _tensorly
from ._base import LowRankConv, contract, conv_nd, path_cost

__all__ = ["TTConv"]

_SPATIAL, _BONDS = "abc", "pqrs"


@register("conv", "tt_conv", test_size=8)
class TTConv(LowRankConv):
    """Convolution whose kernel is a tensor train ordered ``(C_in, k_1, ..., k_n, C_out)``.

    Per group, ``W[o, i, a, b, c] = sum G_in[i, p] G_1[p, a, q] G_2[q, b, r] G_3[r, c, s] G_out[s, o]``
    with bond ranks ``(r_1, ..., r_{n+1})``. The factorized path is a 1x1 convolution
    ``C_in -> r_1``, one 1-D convolution ``r_j -> r_{j+1}`` along each spatial axis (with that
    axis's stride, dilation and padding: exact, as the cores of different axes are chained) and a
    1x1 convolution ``r_{n+1} -> C_out`` with the bias.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: kernel size, an int or one per axis.
        stride: stride, an int or one per axis.
        padding: zero padding, an int, one per axis, ``"same"`` (stride 1) or ``"valid"``.
        dilation: dilation, an int or one per axis.
        groups: blocked connections, as in ``nn.ConvNd``; each group has its own cores.
        bias: add a learnable bias.
        spatial_dims: 1, 2 or 3.
        rank: an int (every bond rank), a float ``alpha`` (every bond ``round(alpha * C_in)``),
            ``"same"`` / ``"NN%"`` (equal bonds within that fraction of the dense parameter
            count), or ``n + 1`` ints ``(r_1, ..., r_{n+1})``. Totals over groups (multiples of
            ``groups``).
        implementation: ``"factorized"``, ``"reconstructed"`` or ``"auto"`` (see :mod:`lowrank.convs`).

    Shapes:
        ``(B, C_in, *S) -> (B, C_out, *S')``.

    Parameters:
        ``in_core (G, C_in/G, r_1)``, ``axis_cores[j] (G, r_j, k_j, r_{j+1})``,
        ``out_core (G, r_{n+1}, C_out/G)`` (ranks per group).
    """

    _format = "tensor-train"

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
        self.group_ranks = self._resolve_rank(rank, n + 1)
        self.ranks = tuple(r * g for r in self.group_ranks)
        bonds = self.group_ranks
        self.in_core = nn.Parameter(torch.empty(g, in_channels // g, bonds[0]))
        self.axis_cores = nn.ParameterList(
            nn.Parameter(torch.empty(g, bonds[j], k, bonds[j + 1])) for j, k in enumerate(self.kernel_size)
        )
        self.out_core = nn.Parameter(torch.empty(g, bonds[-1], out_channels // g))
        self._init_factors(self._factor_list(), internal=math.prod(bonds))

    # ----------------------------------------------------------------------------- hooks
    def _scalar_ranks(self, m: int) -> tuple[int, ...]:
        return (m,) * (self.spatial_dims + 1)

    def _count(self, ranks: tuple[int, ...]) -> int:
        g = self.groups
        cores = sum(a * k * b for a, k, b in zip(ranks[:-1], self.kernel_size, ranks[1:]))
        return g * (self.in_channels // g * ranks[0] + cores + ranks[-1] * self.out_channels // g)

    def _factor_list(self) -> list[torch.Tensor]:
        return [self.in_core, *self.axis_cores, self.out_core]

    def _decompose(self, block) -> list:
        n = self.spatial_dims
        ordered = np.moveaxis(block, 0, -1)  # (C_in, *k, C_out)
        cores = _tensorly.tensor_train(ordered, self.group_ranks)
        return [cores[0][0], *cores[1 : n + 1], cores[-1][..., 0]]

    def _equation(self) -> str:
        n = self.spatial_dims
        axes, bonds = _SPATIAL[:n], _BONDS[: n + 1]
        middle = ",".join(f"g{bonds[j]}{axes[j]}{bonds[j + 1]}" for j in range(n))
        return f"gi{bonds[0]},{middle},g{bonds[-1]}o->goi{axes}"

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
        g, ranks = self.groups, self.ranks
        n_in = math.prod(size)
        numels = self._axis_numels(size, range(self.spatial_dims))
        macs = n_in * self.in_channels * (ranks[0] // g) + numels[-1] * self.out_channels * (ranks[-1] // g)
        macs += sum(m * ranks[j + 1] * (ranks[j] // g) * self.kernel_size[j] for j, m in enumerate(numels))
        elements = n_in * ranks[0] + sum(m * ranks[j + 1] for j, m in enumerate(numels))
        return float(macs), float(elements + numels[-1] * self.out_channels)

    # ----------------------------------------------------------------------------- forward
    def _forward_factorized(self, x: torch.Tensor) -> torch.Tensor:
        n, g = self.spatial_dims, self.groups
        conv = conv_nd(n)
        ones = [1] * n
        z = conv(x, self.in_core.transpose(1, 2).reshape(self.ranks[0], -1, *ones), None, 1, 0, 1, g)
        for axis, core in enumerate(self.axis_cores):
            weight = core.permute(0, 3, 1, 2).reshape(self.ranks[axis + 1], core.shape[1], core.shape[2])
            z = self._axis_conv(z, weight, axis, g)
        out = self.out_core.transpose(1, 2).reshape(self.out_channels, -1, *ones)
        return conv(z, out, self.bias, 1, 0, 1, g)
