"""Norms and activations: the one place that turns a norm/act spec into a layer.

Every part taking ``norm=``/``act=`` declares it as :data:`~lowrank.hints.LayerSpec` and builds the
layer with :func:`make_norm`/:func:`make_act`; the validator checks the same vocabulary
(:func:`layer_names`, :func:`layer_class`), so a value that passes validation builds. The names
are MONAI's norm/act/dropout factory names plus ``"layer"`` (:class:`ChannelLayerNorm`, a LayerNorm
over the channels of a channels-first map) and ``("group", {"group_size": g})``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.networks.layers.factories import Act, Dropout, Norm
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from .safe_norm import range_safe
from .spec import Spec

__all__ = [
    "ChannelLayerNorm",
    "LAYER_NORM_NAMES",
    "channel_standardize",
    "layer_class",
    "layer_names",
    "make_act",
    "make_norm",
]

#: the names of :class:`ChannelLayerNorm` in a norm spec
LAYER_NORM_NAMES = ("layer", "layernorm", "channel_layer")


def layer_names() -> list[str]:
    """Lower-case names of every accepted norm, activation and dropout layer."""
    return sorted({*LAYER_NORM_NAMES, *(n.lower() for f in (Norm, Act, Dropout) for n in f.names)})


class _ChannelLayerNormFn(torch.autograd.Function):
    """LayerNorm over dim 1 that saves only the normalized input and ``1/σ`` for backward.

    Autograd through the elementwise formula keeps three full-size tensors per norm and
    allocates about seven in backward; this keeps one (``x̂``, which is also the output when
    there is no affine part) and allocates one full-size tensor in each direction (large
    fresh allocations cost a page-fault pass on CPU).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float):
        from .kernels.norm import standardize  # the kernel layer imports the solvers: not at import

        dtype = x.dtype
        xhat, rstd = standardize(x, eps)
        if weight is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            out = torch.addcmul(bias.view(shape).to(xhat.dtype), xhat, weight.view(shape).to(xhat.dtype))
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
        gx = None
        if ctx.has_affine and ctx.needs_input_grad[1]:
            gx = g * xhat  # the one full-size allocation; reused for the result
            grad_weight = gx.sum(reduce).to(weight.dtype)
        if ctx.has_affine and ctx.needs_input_grad[2]:
            grad_bias = g.sum(reduce).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            from .kernels.norm import standardize_backward

            grad_x = standardize_backward(g, xhat, rstd, w, gx).to(grad.dtype)
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


def layer_class(name: str) -> tuple[Callable | None, tuple[str, ...]]:
    """The class a MONAI norm/act/dropout name builds, and the arguments its caller supplies."""
    lname = name.lower()
    if lname in LAYER_NORM_NAMES:
        return ChannelLayerNorm, ("channels",)
    for factory, caller in (
        (Norm, ("num_features", "normalized_shape", "num_channels")),
        (Dropout, ()),
        (Act, ()),
    ):
        if lname in (n.lower() for n in factory.names):
            try:
                cls = factory[lname, 1] if factory is not Act else factory[lname]
            except Exception:  # a factory that needs an optional dependency: names only
                return None, ()
            return cls, caller
    return None, ()


def _split(spec: Any) -> tuple[str, dict]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Spec):
        return spec.name, dict(spec.kwargs)
    if isinstance(spec, (tuple, list)) and len(spec) in (1, 2) and isinstance(spec[0], str):
        return spec[0], dict(spec[1]) if len(spec) == 2 else {}
    raise ValueError(f"a norm/act spec must be a name or (name, {{kwargs}}), got {spec!r}")


def make_norm(spec: Any, channels: int, spatial_dims: int) -> nn.Module:
    """Build a normalization layer from a MONAI-style spec.

    Besides MONAI's names (``"batch"``, ``"instance"``, ``("group", {"num_groups": 8})``, ...):

    - ``"layer"`` is a LayerNorm over the channels of a channels-first map
      (:class:`ChannelLayerNorm`; kwargs ``eps``, ``affine``);
    - ``("group", {"group_size": g})`` is a GroupNorm with ``g`` channels per group
      (``channels // g`` groups, at least one);
    - group and instance norms are the range-safe subclasses of :mod:`lowrank.safe_norm`
      (correct for inputs of any finite magnitude, bit-identical below ``2**50``).

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
    if lname in LAYER_NORM_NAMES:
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
        norm = get_norm_layer((name, kwargs), spatial_dims=spatial_dims, channels=channels)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(
            f"cannot build the norm layer {spec!r} ({err}); use 'layer', a MONAI norm name like "
            "'batch', 'instance', 'group', or a (name, {kwargs}) pair"
        ) from None
    return range_safe(norm)


def make_act(spec: Any) -> nn.Module:
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
