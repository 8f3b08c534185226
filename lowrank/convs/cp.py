"""CP (canonical polyadic) convolution: the kernel as a sum of rank-1 tensors (thesis ch. 8)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ..registry import register
from . import _tensorly
from ._base import LowRankConv, channels_last, contract, conv_nd, path_cost
from ._ops import depthwise_axis_conv, project_in, project_out

__all__ = ["CPConv"]

_SPATIAL = "abc"


@register("conv", "cp_conv", test_size=8)
class CPConv(LowRankConv):
    """Convolution whose kernel is in CP form, ``W = sum_r u_r(out) o u_r(in) o u_r(axis 1) o ...``.

    Per group of channels, ``W[o, i, a, b, c] = sum_r U_out[o, r] U_in[i, r] A[a, r] B[b, r] C[c, r]``
    (the thesis's LRCONV, eq. 8.3). The factorized path runs it as a 1x1 convolution
    ``C_in -> R``, one depthwise 1-D convolution per spatial axis (``groups=R``, with that axis's
    stride, dilation and padding, which is exact because the kernel is separable) and a 1x1
    convolution ``R -> C_out`` with the bias; the rank-R intermediate is kept channels-last, where
    the depthwise convolutions are fast. For ``groups > 1`` every group has its own factors and
    the 1x1 convolutions are grouped.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: kernel size, an int or one per axis.
        stride: stride, an int or one per axis (anisotropic strides are exact).
        padding: zero padding, an int, one per axis, ``"same"`` (stride 1) or ``"valid"``.
        dilation: dilation, an int or one per axis.
        groups: blocked connections, as in ``nn.ConvNd``; each group has its own CP factors.
        bias: add a learnable bias.
        spatial_dims: 1, 2 or 3.
        rank: the CP rank ``R``: an int (total over groups, a multiple of ``groups``), a float
            ``alpha`` for ``R = round(alpha * C_in)`` (thesis ch. 8 uses 0.5), ``"same"`` or
            ``"NN%"`` for the largest rank within that fraction of the dense parameter count.
        implementation: ``"factorized"``, ``"reconstructed"`` (dense kernel from the factors,
            one convolution) or ``"auto"`` (the cheaper by a FLOP/memory estimate, per input size).

    Shapes:
        ``(B, C_in, *S) -> (B, C_out, *S')`` with ``S'`` as for ``nn.ConvNd``.

    Parameters:
        ``out_factor (G, C_out/G, R/G)``, ``in_factor (G, C_in/G, R/G)``, ``spatial_factors[j]
        (G, k_j, R/G)``, ``bias (C_out,)``.

    Raises:
        ValueError: channels not divisible by groups, a rank that is not a multiple of groups,
            bad kernel/stride/padding/dilation values, ``padding="same"`` with a stride.
    """

    _format = "CP"

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
        rank: int | float | str = 0.5,
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
        if isinstance(rank, Sequence) and not isinstance(rank, str):
            raise ValueError(f"a CP conv has a single rank; got the sequence {rank!r}")
        (r,) = self._resolve_rank(rank, 1)
        g = groups
        self.group_ranks = (r,)
        self.ranks = (r * g,)
        self.out_factor = nn.Parameter(torch.empty(g, out_channels // g, r))
        self.in_factor = nn.Parameter(torch.empty(g, in_channels // g, r))
        self.spatial_factors = nn.ParameterList(nn.Parameter(torch.empty(g, k, r)) for k in self.kernel_size)
        self._init_factors(self._factor_list(), internal=r)

    # ----------------------------------------------------------------------------- hooks
    def _scalar_ranks(self, m: int) -> tuple[int, ...]:
        return (m,)

    def _count(self, ranks: tuple[int, ...]) -> int:
        (r,) = ranks
        g = self.groups
        per_rank = self.in_channels // g + self.out_channels // g + sum(self.kernel_size)
        return g * r * per_rank

    def _factor_list(self) -> list[torch.Tensor]:
        return [self.out_factor, self.in_factor, *self.spatial_factors]

    def _decompose(self, block) -> list:
        return _tensorly.cp(block, self.group_ranks[0])

    def _equation(self) -> str:
        axes = _SPATIAL[: self.spatial_dims]
        inputs = ["gor", "gir", *(f"g{a}r" for a in axes)]
        return ",".join(inputs) + "->goi" + axes

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
        r = self.ranks[0]
        n_in = math.prod(size)
        numels = self._axis_numels(size, self._axis_order())
        group_rank = self.group_ranks[0]
        macs = n_in * self.in_channels * group_rank + numels[-1] * self.out_channels * group_rank
        macs += sum(n * r * self.kernel_size[a] for n, a in zip(numels, self._axis_order()))
        elements = n_in * r + sum(numels) * r + numels[-1] * self.out_channels
        return float(macs), float(elements)

    # ----------------------------------------------------------------------------- forward
    def _depthwise(self, axis: int) -> torch.Tensor:
        factor = self.spatial_factors[axis]  # (G, k, Rg)
        return factor.transpose(1, 2).reshape(self.ranks[0], factor.shape[1])

    def _forward_factorized(self, x: torch.Tensor) -> torch.Tensor:
        n, g, r = self.spatial_dims, self.groups, self.ranks[0]
        batch, size = x.shape[0], x.shape[2:]
        if g == 1:
            # 1x1 in -> R as one matmul, written straight into channels-last (B, N, R) order
            z = project_in(x.reshape(batch, self.in_channels, -1), self.in_factor[0])  # (B, N, R)
            z = z.reshape(batch, *size, r).movedim(-1, 1)  # a channels-last view
        else:
            weight = self.in_factor.transpose(1, 2).reshape(r, -1, *([1] * n))
            z = channels_last(conv_nd(n)(x, weight, None, 1, 0, 1, g))
        for axis in self._axis_order():
            z, pad = self._pad_axis(z, axis)
            z = depthwise_axis_conv(
                z, self._depthwise(axis), axis, self.stride[axis], pad, self.dilation[axis]
            )
        if g == 1:
            out_size = z.shape[2:]
            flat = z.movedim(1, -1).reshape(batch, -1, r)  # a view when z is channels-last
            y = project_out(flat, self.out_factor[0], self.bias)
            return y.reshape(batch, self.out_channels, *out_size)
        weight = self.out_factor.reshape(self.out_channels, -1, *([1] * n))
        return conv_nd(n)(z, weight, self.bias, 1, 0, 1, g).contiguous()
