"""GroupNorm and InstanceNorm that stay correct on inputs of any finite magnitude.

PyTorch's group and instance norms accumulate squares in float32 (also for bfloat16 and float16
inputs), so an input above about ``1e18`` overflows the variance and the output is silently all
zeros, or NaN (for GroupNorm from ``1e18``, for InstanceNorm from ``1e19``). Both norms are
invariant to the scale of their input (up to ``eps``), so these subclasses divide the input by

``s = max(1, max|x| / 2**50)``

first, a detached scalar: for every input up to ``2**50 ≈ 1.1e15`` it is exactly 1 and the result
is bit-identical to the plain layer; above, the layer sees values below ``2**50`` (whose squares
sum without overflow) and its ``eps`` acts as ``eps · s²`` on the original scale. The parameters and
``state_dict`` keys are those of the PyTorch layer they subclass.

BatchNorm is not wrapped: in training its running statistics would be recorded on the divided
scale. :func:`lowrank.norm_act.make_norm` builds these in place of MONAI's group and instance
norms.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SafeGroupNorm", "SafeInstanceNorm1d", "SafeInstanceNorm2d", "SafeInstanceNorm3d", "range_safe"]

_LIMIT = 2.0**50


def _unit_scale(x: Tensor) -> Tensor:
    """``x / max(1, max|x| / 2**50)`` (the divisor detached; exactly ``x`` below ``2**50``)."""
    peak = x.detach().abs().amax(dim=tuple(range(x.ndim))).float()  # explicit dims: ONNX-exportable
    return x / (peak * (1.0 / _LIMIT)).clamp_min(1.0).to(x.dtype)


class SafeGroupNorm(nn.GroupNorm):
    """:class:`torch.nn.GroupNorm` for inputs of any finite magnitude (see the module docstring).

    Shapes:
        ``(B, C, *S) -> (B, C, *S)``.
    """

    def forward(self, input: Tensor) -> Tensor:
        """Normalize ``input: (B, C, *S)`` per group of channels."""
        return super().forward(_unit_scale(input))


class _SafeInstance:
    """Mixin: scale the input before an instance norm without running statistics."""

    def forward(self, input: Tensor) -> Tensor:
        """Normalize ``input: (B, C, *S)`` per sample and channel."""
        return super().forward(_unit_scale(input))  # type: ignore[misc]


class SafeInstanceNorm1d(_SafeInstance, nn.InstanceNorm1d):
    """:class:`torch.nn.InstanceNorm1d` for inputs of any finite magnitude. ``(B, C, L)``."""


class SafeInstanceNorm2d(_SafeInstance, nn.InstanceNorm2d):
    """:class:`torch.nn.InstanceNorm2d` for inputs of any finite magnitude. ``(B, C, H, W)``."""


class SafeInstanceNorm3d(_SafeInstance, nn.InstanceNorm3d):
    """:class:`torch.nn.InstanceNorm3d` for inputs of any finite magnitude. ``(B, C, D, H, W)``."""


_INSTANCE = {
    nn.InstanceNorm1d: SafeInstanceNorm1d,
    nn.InstanceNorm2d: SafeInstanceNorm2d,
    nn.InstanceNorm3d: SafeInstanceNorm3d,
}


def range_safe(norm: nn.Module) -> nn.Module:
    """The range-safe counterpart of a freshly built group or instance norm (others unchanged).

    Instance norms that track running statistics are left as they are (like BatchNorm, their
    statistics would be recorded on the divided scale).

    Args:
        norm: a norm layer as built by MONAI's factory.

    Returns:
        A :class:`SafeGroupNorm` / ``SafeInstanceNorm{1,2,3}d`` with the same settings and
        parameters, or ``norm`` itself.
    """
    if type(norm) is nn.GroupNorm:
        safe: nn.Module = SafeGroupNorm(norm.num_groups, norm.num_channels, norm.eps, norm.affine)
    elif type(norm) in _INSTANCE and not norm.track_running_stats:
        safe = _INSTANCE[type(norm)](norm.num_features, norm.eps, norm.momentum, norm.affine, False)
    else:
        return norm
    safe.load_state_dict(norm.state_dict())
    return safe
