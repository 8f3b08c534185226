"""Small layers shared by the blocks and nets: norms/acts from MONAI specs, pointwise convs.

Not a part module (the leading underscore keeps it out of the auto-import); import what you need.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from ..build import LayerSpec, as_spec
from ..registry import get_part_info
from ..spec import Spec

__all__ = [
    "ChannelLayerNorm",
    "PointwiseConv",
    "make_norm",
    "make_act",
    "accepts",
    "as_tuple",
    "CONVS",
    "TRANSPOSED_CONVS",
    "MAXPOOLS",
]

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
TRANSPOSED_CONVS = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
MAXPOOLS = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}


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


class _ChannelLayerNormFn(torch.autograd.Function):
    """LayerNorm over dim 1 that saves only the normalized input and ``1/σ`` for backward.

    Autograd through the elementwise formula keeps three full-size tensors per norm; this keeps
    one (``x̂``), which matters at the highest resolutions of a 3-D net.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float):
        dtype = x.dtype
        xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        # two passes (mean, then mean square of the deviations): exact for large offsets and
        # about twice as fast on CPU as var_mean over a non-innermost dimension
        xhat = xf - xf.mean(1, keepdim=True)
        rstd = torch.rsqrt(xhat.square().mean(1, keepdim=True) + eps)
        xhat.mul_(rstd)
        if weight is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            out = torch.addcmul(bias.view(shape).to(xf.dtype), xhat, weight.view(shape).to(xf.dtype))
        else:
            out = xhat
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.has_affine = weight is not None
        return out.to(dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        xhat, rstd, weight = ctx.saved_tensors
        g = grad.to(xhat.dtype)
        reduce = [0, *range(2, g.ndim)]
        grad_weight = grad_bias = None
        if ctx.has_affine:
            shape = (1, -1) + (1,) * (g.ndim - 2)
            if ctx.needs_input_grad[1]:
                grad_weight = (g * xhat).sum(reduce).to(weight.dtype)
            if ctx.needs_input_grad[2]:
                grad_bias = g.sum(reduce).to(weight.dtype)
            g = g * weight.view(shape).to(g.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            mean_g = g.mean(1, keepdim=True)
            mean_gx = (g * xhat).mean(1, keepdim=True)
            grad_x = ((g - mean_g - xhat * mean_gx) * rstd).to(grad.dtype)
        return grad_x, grad_weight, grad_bias, None


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a channels-first map (the Factorizer's LayerNorm).

    Each position is normalized over its ``C`` channels, then scaled and shifted per channel.
    The statistics are computed in float32 for half-precision inputs. The backward is
    hand-written and keeps a single full-size tensor (see :class:`_ChannelLayerNormFn`).

    Args:
        channels: ``C``.
        eps: added to the variance; ``None`` uses ``1e-5`` (PyTorch's LayerNorm default).
        affine: learn a per-channel scale and shift.

    Shapes:
        ``(B, C, *S) -> (B, C, *S)``.
    """

    def __init__(self, channels: int, eps: float | None = None, affine: bool = True):
        super().__init__()
        self.channels = channels
        self.eps = 1e-5 if eps is None else float(eps)
        if affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x: (B, C, *S)`` over ``C``."""
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"ChannelLayerNorm({self.channels}) expects (B, {self.channels}, *S), got {tuple(x.shape)}"
            )
        return _ChannelLayerNormFn.apply(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}, affine={self.weight is not None}"


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

    def forward(self, x: torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
        """Apply to ``x: (B, C_in, *S)``, or to ``torch.cat([x, *more], 1)`` without the concat.

        With ``more``, the inputs are the channel pieces of the input (their channels add up to
        ``C_in``): each piece is multiplied by its block of columns of the weight and the
        products are accumulated, so the concatenation is never materialized (nor saved).
        """
        pieces = (x, *more)
        batch, spatial = x.shape[0], x.shape[2:]
        sizes = [p.shape[1] for p in pieces]
        if sum(sizes) != self.in_channels:
            raise ValueError(
                f"PointwiseConv({self.in_channels}, {self.out_channels}) got inputs with {sizes} channels"
            )
        weights = self.weight.to(x.dtype).split(sizes, dim=1)
        out = None
        for piece, weight in zip(pieces, weights):
            flat = piece.reshape(batch, piece.shape[1], -1)
            w = weight.unsqueeze(0).expand(batch, -1, -1)
            if out is None:
                if self.bias is None:
                    out = torch.bmm(w, flat)
                else:
                    bias = self.bias.to(flat.dtype).view(1, -1, 1).expand(batch, -1, 1)
                    out = torch.baddbmm(bias, w, flat)
            else:
                out = torch.baddbmm(out, w, flat)
        return out.view(batch, self.out_channels, *spatial)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}"


def _split(spec: Any) -> tuple[str, dict]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Spec):
        return spec.name, dict(spec.kwargs)
    if isinstance(spec, (tuple, list)) and len(spec) in (1, 2) and isinstance(spec[0], str):
        return spec[0], dict(spec[1]) if len(spec) == 2 else {}
    raise ValueError(f"a norm/act spec must be a name or (name, {{kwargs}}), got {spec!r}")


def make_norm(spec: LayerSpec, channels: int, spatial_dims: int) -> nn.Module:
    """Build a normalization layer from a MONAI-style spec.

    Besides MONAI's names (``"batch"``, ``"instance"``, ``("group", {"num_groups": 8})``, ...):

    - ``"layer"`` is a LayerNorm over the channels of a channels-first map
      (:class:`ChannelLayerNorm`; kwargs ``eps``, ``affine``);
    - ``("group", {"group_size": g})`` is a GroupNorm with ``g`` channels per group
      (``channels // g`` groups, at least one).

    Args:
        spec: ``None`` (identity), a name or ``(name, {kwargs})``.
        channels: the channels the norm sees.
        spatial_dims: 1, 2 or 3.

    Returns:
        The norm module.

    Raises:
        ValueError: an unknown norm, or groups that do not divide the channels.
    """
    if spec is None:
        return nn.Identity()
    name, kwargs = _split(spec)
    lname = name.lower()
    if lname in ("layer", "layernorm", "channel_layer"):
        return ChannelLayerNorm(channels, **kwargs)
    if lname in ("group", "groupnorm") and "group_size" in kwargs:
        size = int(kwargs.pop("group_size"))
        groups = max(1, channels // max(1, size))
        while channels % groups:
            groups -= 1
        kwargs["num_groups"] = groups
    if lname in ("group", "groupnorm"):
        groups = kwargs.get("num_groups", 1)
        if channels % groups:
            raise ValueError(
                f"GroupNorm with num_groups={groups} does not divide {channels} channels; use a "
                "divisor of the channels or ('group', {'group_size': 8}) for 8 channels per group"
            )
    try:
        return get_norm_layer((name, kwargs), spatial_dims=spatial_dims, channels=channels)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(
            f"cannot build the norm layer {spec!r} ({err}); use 'layer', a MONAI norm name like "
            "'batch', 'instance', 'group', or a (name, {kwargs}) pair"
        ) from None


def make_act(spec: LayerSpec) -> nn.Module:
    """Build an activation from a MONAI-style spec (``None`` → identity).

    Raises:
        ValueError: an unknown activation.
    """
    if spec is None:
        return nn.Identity()
    name, kwargs = _split(spec)
    try:
        return get_act_layer((name, kwargs))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(
            f"cannot build the activation {spec!r} ({err}); use a MONAI activation name like "
            "'relu', 'gelu', 'leakyrelu', or a (name, {kwargs}) pair"
        ) from None


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
