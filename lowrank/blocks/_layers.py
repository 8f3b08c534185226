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
from torch.utils import flop_counter as _flop_counter

from ..build import LayerSpec, as_spec
from ..registry import get_part_info
from ..spec import Spec

__all__ = [
    "ChannelLayerNorm",
    "PointwiseConv",
    "channel_standardize",
    "pointwise",
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


_CHUNK = 1 << 20  # elements per chunk of the square-mean (a small temporary, reused from the heap)


def _channel_mean_square(xhat: torch.Tensor) -> torch.Tensor:
    """``mean(xhat², dim=1)`` through chunks along the last axis (no full-size temporary)."""
    if xhat.numel() <= _CHUNK or xhat.ndim < 3:
        return xhat.square().mean(1, keepdim=True)
    flat = xhat.flatten(2) if xhat.ndim > 3 else xhat
    out = flat.new_empty((flat.shape[0], 1, flat.shape[2]))
    step = max(1, _CHUNK // (flat.shape[0] * flat.shape[1]))
    for start in range(0, flat.shape[2], step):
        piece = flat[..., start : start + step]
        torch.mean(piece.square(), 1, keepdim=True, out=out[..., start : start + step])
    return out.view(xhat.shape[0], 1, *xhat.shape[2:])


def _channel_weighted_mean(weight: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
    """``mean(w ⊙ t, dim=1)`` (``w`` per channel, or none): a reduction without a full-size temporary."""
    if weight is None:
        return t.mean(1, keepdim=True)
    b, c = t.shape[:2]
    w = (weight.to(t.dtype) / c).view(1, 1, c).expand(b, 1, c)
    return torch.bmm(w, t.reshape(b, c, -1)).view(b, 1, *t.shape[2:])


class _ChannelLayerNormFn(torch.autograd.Function):
    """LayerNorm over dim 1 that saves only the normalized input and ``1/σ`` for backward.

    Autograd through the elementwise formula keeps three full-size tensors per norm and
    allocates about seven in backward; this keeps one (``x̂``, which is also the output when
    there is no affine part) and allocates one full-size tensor in each direction (large
    fresh allocations cost a page-fault pass on CPU).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float):
        dtype = x.dtype
        xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        # two passes (mean, then mean square of the deviations): exact for large offsets and
        # about twice as fast on CPU as var_mean over a non-innermost dimension
        xhat = xf - xf.mean(1, keepdim=True)
        rstd = torch.rsqrt(_channel_mean_square(xhat) + eps)
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
        w = weight if ctx.has_affine else None
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, g.sum(reduce).to(weight.dtype) if ctx.needs_input_grad[2] else None, None
        gx = g * xhat  # the one full-size allocation; reused for the result
        if ctx.has_affine:
            if ctx.needs_input_grad[1]:
                grad_weight = gx.sum(reduce).to(weight.dtype)
            if ctx.needs_input_grad[2]:
                grad_bias = g.sum(reduce).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            # dx = (w⊙g - mean(w⊙g) - x̂ · mean(w⊙g⊙x̂)) / σ, the means over the channels
            mean_g = _channel_weighted_mean(w, g)
            mean_gx = _channel_weighted_mean(w, gx)
            if w is None:
                torch.sub(g, mean_g, out=gx)
            else:
                shape = (1, -1) + (1,) * (g.ndim - 2)
                torch.addcmul(mean_g.neg(), g, w.view(shape).to(g.dtype), out=gx)
            gx.addcmul_(xhat, mean_gx, value=-1).mul_(rstd)
            grad_x = gx.to(grad.dtype)
        return grad_x, grad_weight, grad_bias, None


def channel_standardize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over dim 1 of ``x: (B, C, *S)`` (a LayerNorm without affine)."""
    return _ChannelLayerNormFn.apply(x, None, None, eps)


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


# ``pointwise`` accumulates into its output with the in-place ``baddbmm_``; count its FLOPs like
# ``baddbmm``'s in ``torch.utils.flop_counter.FlopCounterMode`` (which knows the out-of-place op only)
if torch.ops.aten.baddbmm_ not in _flop_counter.flop_registry:
    _flop_counter.register_flop_formula(torch.ops.aten.baddbmm_, get_raw=True)(
        _flop_counter.flop_registry[torch.ops.aten.baddbmm]
    )


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
