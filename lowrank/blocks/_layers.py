"""Small layers shared by the blocks and nets: norms/acts from MONAI specs, pointwise convs.

Not a part module (the leading underscore keeps it out of the auto-import); import what you need.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..norm_act import ChannelLayerNorm, channel_standardize, make_act, make_norm
from ..registry import get_part_info
from ..spec import Spec
from ..spec_values import as_spec

__all__ = [
    "ChannelLayerNorm",
    "PointwiseConv",
    "channel_standardize",
    "pointwise",
    "make_norm",
    "make_act",
    "accepts",
    "as_tuple",
]


def as_tuple(value: int | Sequence[int], n: int, what: str = "value") -> tuple[int, ...]:
    """``value`` repeated ``n`` times, or checked to have ``n`` entries.

    Raises:
        ValueError: a sequence of the wrong length.
    """
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{what} needs 1 or {n} values (one per spatial axis), got {len(value)}: {value}")
    return value


def _autocast(device: torch.device) -> bool:
    """Whether autocast is on for ``device`` (``False`` for devices without autocast, e.g. meta)."""
    if device.type not in ("cpu", "cuda", "xpu", "mps", "hpu"):
        return False
    return torch.is_autocast_enabled(device.type)


def pointwise(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    *more: torch.Tensor,
    residual: torch.Tensor | None = None,
    relu: bool = False,
) -> torch.Tensor:
    """``residual + bias + W @ cat([x, *more], 1)`` over the channels, as batched matrix products.

    Args:
        weight: ``W (C_out, C_in)``.
        bias: ``(C_out,)`` or ``None``.
        x: ``(B, C_x, *S)``; ``more`` are further channel pieces (the columns of ``W`` are split
            by the pieces' channels, so the concatenation is never materialized).
        residual: ``(B, C_out, *S)`` added in the same output buffer (``bias + residual`` first,
            then the products accumulated in place), or ``None``.
        relu: apply ReLU in place to the result (on the product's own buffer, not on a view of
            it, so that autograd keeps no copy of the gradient).

    Returns:
        ``(B, C_out, *S)``.
    """
    pieces = (x, *more)
    batch, spatial, cout = x.shape[0], x.shape[2:], weight.shape[0]
    weights = weight.to(x.dtype).split([p.shape[1] for p in pieces], dim=1)
    flats = [p.reshape(batch, p.shape[1], -1) for p in pieces]
    mats = [w.unsqueeze(0).expand(batch, -1, -1) for w in weights]
    fuse = residual is not None and residual.dtype == x.dtype and not _autocast(x.device)
    if fuse:
        res = residual.reshape(batch, cout, -1)
        out = res + bias.to(x.dtype).view(1, -1, 1) if bias is not None else res.clone()
        for w, flat in zip(mats, flats):
            out.baddbmm_(w, flat)
        return (torch.relu_(out) if relu else out).view(batch, cout, *spatial)
    out = None
    for w, flat in zip(mats, flats):
        if out is None:
            if bias is None:
                out = torch.bmm(w, flat)
            else:
                out = torch.baddbmm(bias.to(flat.dtype).view(1, -1, 1).expand(batch, -1, 1), w, flat)
        else:
            out = torch.baddbmm(out, w, flat)
    if relu and residual is None:
        out = torch.relu_(out)
    out = out.view(batch, cout, *spatial)
    if residual is None:
        return out
    return torch.relu_(residual + out) if relu else residual + out


class PointwiseConv(nn.Module):
    """A 1×1 convolution as one batched matrix product over the channels.

    Equivalent to ``nn.ConvNd(in_channels, out_channels, 1)`` (same initialization), but computed
    as ``bias + W @ x.flatten(2)`` with ``baddbmm``, which is faster on CPU than a 1×1×1 conv.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        bias: learn a bias.

    Shapes:
        ``(B, C_in, *S) -> (B, C_out, *S)``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The default init of ``nn.ConvNd`` (Kaiming-uniform with a=√5; uniform bias)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels) if self.in_channels > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(
        self, x: torch.Tensor, *more: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply to ``x: (B, C_in, *S)``, or to ``torch.cat([x, *more], 1)`` without the concat.

        With ``more``, the inputs are the channel pieces of the input (their channels add up to
        ``C_in``): each piece is multiplied by its block of columns of the weight and the
        products are accumulated, so the concatenation is never materialized (nor saved).
        With ``residual: (B, C_out, *S)``, returns ``residual + conv(x)`` in one output buffer.
        """
        sizes = [p.shape[1] for p in (x, *more)]
        if sum(sizes) != self.in_channels:
            raise ValueError(
                f"PointwiseConv({self.in_channels}, {self.out_channels}) got inputs with {sizes} channels"
            )
        return pointwise(self.weight, self.bias, x, *more, residual=residual)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}"


def accepts(kind: str, spec: Any, key: str) -> bool:
    """Whether the part ``spec`` of ``kind`` names takes the keyword ``key``.

    For a built module it is ``False``; for a class or callable its signature decides.
    """
    normalized = as_spec(spec)
    if isinstance(normalized, nn.Module):
        return False
    if isinstance(normalized, Spec):
        target = get_part_info(kind, normalized.name).obj
    else:
        target = normalized
    target = target.__init__ if isinstance(target, type) else target
    params = inspect.signature(target).parameters
    return key in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
