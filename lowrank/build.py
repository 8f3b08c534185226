"""Building parts from specs: validation against constructor signatures, then construction.

A spec may be given as

- a string in the grammar of :mod:`lowrank.spec`,
- a :class:`~lowrank.spec.Spec`,
- a MONAI-style ``(name, {kwargs})`` tuple or list,
- a dict ``{"name": ..., **kwargs}``,
- a class or callable (called with the context and overrides), or an ``nn.Module`` instance
  (returned unchanged).

Each keyword is checked against the part constructor's signature and type hints *before*
anything is built, so a typo deep inside a nested spec is reported with a caret under it.
Which registry a nested name is looked up in is decided by the parameter's declared type
(:data:`SolverSpec`, :data:`MatricizeSpec`, ...), never by guessing.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from .hints import (
    BlockSpec,
    ConvSpec,
    InitSpec,
    LayerSpec,
    MatricizeSpec,
    MonaiLayer,
    MonaiLayerSpec,
    NetSpec,
    PartOf,
    SolverSpec,
    UpdateSpec,
)
from .registry import get_part_info
from .spec import Spec, SpecError
from .spec_values import KIND_CONTEXT, as_spec, spec_as_written, spec_from_call, to_spec_value
from .validate import accepted_arguments, located, signature_of, validate

__all__ = [
    "PartOf",
    "MonaiLayer",
    "MonaiLayerSpec",
    "SolverSpec",
    "UpdateSpec",
    "InitSpec",
    "MatricizeSpec",
    "BlockSpec",
    "ConvSpec",
    "NetSpec",
    "LayerSpec",
    "KIND_CONTEXT",
    "as_spec",
    "validate",
    "build",
    "build_solver",
    "build_matricize",
    "build_block",
    "build_conv",
    "build_net",
    "spec_from_call",
]


def _passable(obj: Callable, context: Mapping[str, Any]) -> dict[str, Any]:
    """The caller-context arguments that ``obj``'s constructor (or signature) accepts."""
    accepted, var_kw = accepted_arguments(signature_of(obj)[0])
    return {k: v for k, v in context.items() if var_kw or k in accepted}


def _check_context(kind: str, context: Mapping[str, Any]) -> None:
    """The caller's channel counts and spatial dims (not part of any spec text)."""
    for key in ("channels", "in_channels", "out_channels"):
        if key not in context:
            continue
        value = context[key]
        try:
            count = operator.index(value) if not isinstance(value, bool) else None
        except TypeError:
            count = None
        if count is None or count < 1:
            raise ValueError(f"building a {kind}: {key} must be an int >= 1, got {value!r}")
    if "spatial_dims" in context and context["spatial_dims"] not in (1, 2, 3):
        raise ValueError(
            f"building a {kind}: spatial_dims must be 1, 2 or 3, got {context['spatial_dims']!r}"
        )


def build(kind: str, spec: Any, **arguments: Any) -> Any:
    """Build a part of ``kind`` from any accepted spec form.

    Args:
        kind: the part kind.
        spec: a spec in any accepted form (see the module docstring).
        **arguments: the kind's context arguments (see :data:`KIND_CONTEXT`; passed only if the
            constructor takes them) and keyword overrides (win over the spec; ``None`` dropped).

    Returns:
        The built part.

    Raises:
        SpecError, SpecKeywordError: see :func:`validate`; also a spec that contradicts a
            context argument, and the constructor's own ``ValueError`` (e.g. a head_dim that
            does not divide the channels), shown with the spec and a caret.
    """
    normalized = as_spec(spec)
    context_keys = KIND_CONTEXT.get(kind, ())
    context = {k: v for k, v in arguments.items() if k in context_keys and v is not None}
    _check_context(kind, context)
    overrides = {k: v for k, v in arguments.items() if k not in context_keys and v is not None}
    if not isinstance(normalized, Spec):
        if isinstance(normalized, nn.Module) and not isinstance(normalized, type):
            if overrides:
                raise TypeError(f"cannot apply overrides {sorted(overrides)} to a built module")
            return normalized
        return normalized(**_passable(normalized, context), **overrides)
    merged = normalized.replace(**overrides)
    checked = validate(kind, Spec(merged.name, merged.kwargs, normalized.where))
    info = get_part_info(kind, checked.name)
    for key, value in context.items():
        if key in checked.kwargs and checked.kwargs[key] != value:
            raise checked.error(
                f"{key}={checked.kwargs[key]!r} in the spec contradicts {key}={value!r} given by "
                f"the caller: leave {key!r} out of the spec",
                key,
                "key",
            )
    unset = {k: v for k, v in context.items() if k not in checked.kwargs}
    written = Spec(info.name, {k: to_spec_value(v) for k, v in merged.kwargs.items() if k not in context})
    recording = spec_as_written(info.obj, written) if isinstance(info.obj, type) else contextlib.nullcontext()
    try:
        with recording:
            part = info.obj(**_passable(info.obj, unset), **checked.kwargs)
    except SpecError as err:
        own = checked.where.text if checked.where is not None else None
        if err.text is None or own is None or err.text == own:
            raise
        # a spec the constructor wrote itself (e.g. a net's inner ``global(head_dim=3)``):
        # shown in the user's spec, under the keyword it came from
        raise located(checked, info.name, SpecError(f"{err.message} (in {err.text})"), type(err)) from err
    except (ValueError, TypeError, OverflowError, MemoryError, RuntimeError) as err:
        # the constructor's own checks (or an allocation a value made impossible), located
        raise located(checked, info.name, err) from err
    if isinstance(part, nn.Module) and not isinstance(info.obj, type):
        # a registered class recorded its spec when constructed; a factory's module gets it here
        object.__setattr__(part, "spec", written)
    return part


def build_solver(spec: Any, **overrides: Any) -> nn.Module:
    """Build a factorization layer (``X: (*batch, M, N) -> (*batch, M, N)``).

    Args:
        spec: the part, in any accepted form (string, ``Spec``, ``(name, {kwargs})``, dict,
            class/callable, module).
        **overrides: keyword arguments that win over the spec (``None`` values are dropped).

    Returns:
        The solver module.

    Raises:
        SpecError: a malformed spec, an unknown part (with "did you mean"), a value of the wrong
            type, or a spec value that contradicts a caller argument.
        SpecKeywordError: a keyword the part does not accept (also a ``TypeError``).
    """
    return build("solver", spec, **overrides)


def build_matricize(
    spec: Any, channels: int | None = None, *, spatial_dims: int | None = None, **overrides: Any
) -> nn.Module:
    """Build a matricizer (``(B, C, *S) -> (matrices (B', M, N), ctx)`` and back).

    Args:
        spec: the part, in any accepted form (string, ``Spec``, ``(name, {kwargs})``, dict,
            class/callable, module).
        channels: the channels ``C`` it will see, if known (checked against its heads).
        spatial_dims: the number of spatial axes, if known.
        **overrides: keyword arguments that win over the spec (``None`` values are dropped).

    Returns:
        The matricizer module.

    Raises:
        SpecError: a malformed spec, an unknown part (with "did you mean"), a value of the wrong
            type, or a spec value that contradicts a caller argument.
        SpecKeywordError: a keyword the part does not accept (also a ``TypeError``).
    """
    return build("matricize", spec, channels=channels, spatial_dims=spatial_dims, **overrides)


def build_block(spec: Any, channels: int, *, spatial_dims: int = 3, **overrides: Any) -> nn.Module:
    """Build a shape-preserving block ``(B, channels, *S) -> (B, channels, *S)``.

    Args:
        spec: the part, in any accepted form (string, ``Spec``, ``(name, {kwargs})``, dict,
            class/callable, module).
        channels: the channels ``C`` of the feature maps.
        spatial_dims: 1, 2 or 3.
        **overrides: keyword arguments that win over the spec (``None`` values are dropped).

    Returns:
        The block module.

    Raises:
        SpecError: a malformed spec, an unknown part (with "did you mean"), a value of the wrong
            type, or a spec value that contradicts a caller argument.
        SpecKeywordError: a keyword the part does not accept (also a ``TypeError``).


    Example:
        >>> import torch
        >>> from lowrank import build_block
        >>> block = build_block("factorizer(mixer=nmf(rank=1), matricize=swin(patch=4, head_dim=8))", 16)
        >>> block(torch.randn(1, 16, 8, 8, 8)).shape
        torch.Size([1, 16, 8, 8, 8])
    """
    return build("block", spec, channels=channels, spatial_dims=spatial_dims, **overrides)


def build_conv(
    spec: Any,
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int] = 3,
    *,
    spatial_dims: int = 3,
    **overrides: Any,
) -> nn.Module:
    """Build a convolution ``(B, in_channels, *S) -> (B, out_channels, *S')``.

    Args:
        spec: the part, in any accepted form (string, ``Spec``, ``(name, {kwargs})``, dict,
            class/callable, module).
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: kernel size, an int or one per axis.
        spatial_dims: 1, 2 or 3.
        **overrides: ``stride``, ``padding``, ``dilation``, ``groups``, ``bias`` (caller
            arguments), or keyword arguments of the part that win over the spec.

    Returns:
        The convolution module.

    Raises:
        SpecError: a malformed spec, an unknown part (with "did you mean"), a value of the wrong
            type, or a spec value that contradicts a caller argument.
        SpecKeywordError: a keyword the part does not accept (also a ``TypeError``).
    """
    context = {k: overrides.pop(k) for k in list(overrides) if k in KIND_CONTEXT["conv"]}
    return build(
        "conv",
        spec,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernel_size,
        spatial_dims=spatial_dims,
        **context,
        **overrides,
    )


def build_net(
    spec: Any, in_channels: int, out_channels: int, *, spatial_dims: int = 3, **overrides: Any
) -> nn.Module:
    """Build a network ``(B, in_channels, *S) -> (B, out_channels, *S)``.

    Args:
        spec: the part, in any accepted form (string, ``Spec``, ``(name, {kwargs})``, dict,
            class/callable, module).
        in_channels: input channels (image modalities).
        out_channels: output channels (classes).
        spatial_dims: 1, 2 or 3.
        **overrides: keyword arguments that win over the spec (``None`` values are dropped).

    Returns:
        The network module.

    Raises:
        SpecError: a malformed spec, an unknown part (with "did you mean"), a value of the wrong
            type, or a spec value that contradicts a caller argument.
        SpecKeywordError: a keyword the part does not accept (also a ``TypeError``).
    """
    return build(
        "net",
        spec,
        in_channels=in_channels,
        out_channels=out_channels,
        spatial_dims=spatial_dims,
        **overrides,
    )
