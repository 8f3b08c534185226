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

import inspect
import operator
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .hints import (
    BlockSpec,
    ConvSpec,
    HintMismatch,
    InitSpec,
    LayerSpec,
    MatricizeSpec,
    MonaiLayer,
    NetSpec,
    PartOf,
    RangeMismatch,
    SolverSpec,
    UpdateSpec,
    coerce,
    range_of,
)
from .registry import did_you_mean, get_part_info
from .spec import MAX_DEPTH, NAME_RE, Spec, SpecError, SpecKeywordError, parse_spec, spec_depth

__all__ = [
    "PartOf",
    "MonaiLayer",
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


#: Per kind, the arguments the *caller* supplies (a block's channels, a net's in/out
#: channels, ...). They are passed only if the constructor accepts them, a spec that sets
#: one to a different value is an error, and they are left out of the recorded spec.
KIND_CONTEXT: dict[str, tuple[str, ...]] = {
    "solver": (),
    "update": (),
    "init": ("rank",),
    "matricize": ("channels", "spatial_dims"),
    "block": ("channels", "spatial_dims"),
    "conv": (
        "in_channels",
        "out_channels",
        "kernel_size",
        "spatial_dims",
        "stride",
        "padding",
        "dilation",
        "groups",
        "bias",
    ),
    "net": ("in_channels", "out_channels", "spatial_dims"),
}


def as_spec(spec: Any) -> Spec | Callable | nn.Module:
    """Normalize the accepted spec forms to a :class:`Spec` (callables/modules pass through).

    Args:
        spec: a string, ``Spec``, ``(name, {kwargs})`` tuple/list, ``{"name": ...}`` dict,
            class/callable or module.

    Returns:
        A :class:`Spec`, or the callable/module unchanged.

    Raises:
        SpecError: a malformed string or a form that is not a spec.
    """
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, str):
        return parse_spec(spec)
    if isinstance(spec, (tuple, list)):
        if len(spec) in (1, 2) and isinstance(spec[0], str):
            kwargs = dict(spec[1]) if len(spec) == 2 else {}
            if len(spec) == 2 and not isinstance(spec[1], Mapping):
                raise SpecError(f"a (name, kwargs) spec needs a dict of kwargs, got {spec[1]!r}")
            return Spec(spec[0], kwargs)
        raise SpecError(f"a tuple/list spec must be (name, {{kwargs}}), got {spec!r}")
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise SpecError(f"a dict spec needs a 'name' key, got keys {sorted(spec)}")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        return Spec(spec["name"], kwargs)
    if isinstance(spec, nn.Module) or callable(spec):
        return spec
    raise SpecError(f"cannot read a spec from {type(spec).__name__} {spec!r}")


def _what(value: Any) -> str:
    if isinstance(value, Spec):
        return f"name {value.name!r}" if not value.kwargs else f"spec {value}"
    return f"{type(value).__name__} {value!r}"


#: constructors that take no arguments of their own (a part class without an ``__init__``)
_NO_ARGUMENTS = (nn.Module.__init__, object.__init__)


def _signature(obj: Callable) -> tuple[inspect.Signature, dict[str, Any]]:
    target = obj.__init__ if isinstance(obj, type) else obj
    if inspect.unwrap(target) in _NO_ARGUMENTS:  # nn.Module's (*args, **kwargs) takes nothing
        return inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)]), {}
    signature = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable forward references: validate names only
        hints = {}
    return signature, hints


def _accepted(signature: inspect.Signature) -> tuple[list[str], bool]:
    names, var_kw = [], False
    for i, (name, param) in enumerate(signature.parameters.items()):
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif param.kind is not inspect.Parameter.VAR_POSITIONAL and not (i == 0 and name == "self"):
            names.append(name)
    return names, var_kw


def _passable(obj: Callable, context: Mapping[str, Any]) -> dict[str, Any]:
    """The caller-context arguments that ``obj``'s constructor (or signature) accepts."""
    accepted, var_kw = _accepted(_signature(obj)[0])
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


def _check_depth(spec: Spec) -> None:
    if spec_depth(spec) > MAX_DEPTH:
        raise SpecError(
            f"the spec {spec.name}(...) nests deeper than {MAX_DEPTH} levels: flatten it "
            "(real configurations nest a few levels)"
        )


def _located(spec: Spec, name: str, err: Exception, cls: type[SpecError] = SpecError) -> SpecError:
    """A constructor's error as a :class:`SpecError` with the spec and a caret under the first
    keyword the message names (or under the part's name)."""
    message = err.message if isinstance(err, SpecError) else str(err).strip()
    message = message.splitlines()[0] if message else type(err).__name__
    key = next((k for k in spec.kwargs if re.search(rf"\b{re.escape(k)}\b", message)), None)
    if not message.startswith(name):
        message = f"{name}(...): {message}"
    return spec.error(message, key, "key", cls)


def validate(kind: str, spec: Spec) -> Spec:
    """Check a spec (recursively) against the registry and constructor signatures.

    Args:
        kind: the kind the spec's name is looked up in.
        spec: a parsed spec.

    Returns:
        A spec whose values are converted to what the constructor expects (e.g. bare names
        for string parameters become strings, MONAI layer specs become ``(name, kwargs)``).

    Raises:
        SpecError: unknown part name (with "did you mean"), a value of the wrong type.
        SpecKeywordError: a keyword the part does not accept (with the accepted ones).
    """
    _check_depth(spec)
    try:
        info = get_part_info(kind, spec.name)
    except ValueError as err:
        raise spec.error(str(err)) from None
    signature, hints = _signature(info.obj)
    accepted, var_kw = _accepted(signature)
    context = KIND_CONTEXT.get(kind, ())
    coerced: dict[str, Any] = {}
    for key, value in spec.kwargs.items():
        if key not in accepted and not var_kw:
            options = [a for a in accepted if a not in context]
            given_by_caller = [a for a in accepted if a in context]
            caller_note = f" (set by the caller: {', '.join(given_by_caller)})" if given_by_caller else ""
            takes = f"accepted: {', '.join(options)}" if options else f"{info.name}() takes no arguments"
            if kind == "update" and not options:
                takes += " (eps and iters belong to the solver, e.g. nmf(update=hals, eps=1e-6))"
            raise spec.error(
                f"{info.name}() has no keyword {key!r};{did_you_mean(key, accepted)} {takes}{caller_note}",
                key,
                "key",
                SpecKeywordError,
            )
        hint = hints.get(
            key, signature.parameters.get(key).annotation if key in signature.parameters else Any
        )
        try:
            coerced[key] = coerce(value, hint)
            bounds = range_of(key, hint)
            if bounds is not None:
                bounds.check(coerced[key])
        except RangeMismatch as err:
            raise spec.error(
                f"{info.name}({key}=...): {key} must be {err}, got {_what(value)}", key, "value"
            ) from None
        except HintMismatch as err:
            raise spec.error(
                f"{info.name}({key}=...) expects {err}, got {_what(value)}", key, "value"
            ) from None
    return Spec(info.name, coerced, spec.where)


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
    try:
        part = info.obj(**_passable(info.obj, unset), **checked.kwargs)
    except SpecError as err:
        own = checked.where.text if checked.where is not None else None
        if err.text is None or own is None or err.text == own:
            raise
        # a spec the constructor wrote itself (e.g. a net's inner ``global(head_dim=3)``):
        # shown in the user's spec, under the keyword it came from
        raise _located(checked, info.name, SpecError(f"{err.message} (in {err.text})"), type(err)) from err
    except (ValueError, TypeError, OverflowError, MemoryError, RuntimeError) as err:
        # the constructor's own checks (or an allocation a value made impossible), located
        raise _located(checked, info.name, err) from err
    if isinstance(part, nn.Module):  # the spec as written, with overrides, less the caller's context
        written = {k: _to_spec_value(v) for k, v in merged.kwargs.items() if k not in context}
        object.__setattr__(part, "spec", Spec(info.name, written))
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


def _to_spec_value(value: Any) -> Any:
    if isinstance(value, str) and NAME_RE.fullmatch(value) and value not in ("true", "false", "none"):
        return Spec(value)  # written bare, as a user would: mode=mul, norm=instance
    if isinstance(value, Spec):
        return Spec(value.name, {k: _to_spec_value(v) for k, v in value.kwargs.items()})
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        return _to_spec_value(as_spec(value))
    spec = getattr(value, "spec", None)
    if isinstance(value, nn.Module) and isinstance(spec, Spec):
        return spec
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], Mapping)
    ):
        if NAME_RE.fullmatch(value[0]) and all(isinstance(k, str) and NAME_RE.fullmatch(k) for k in value[1]):
            return Spec(value[0], {k: _to_spec_value(v) for k, v in value[1].items()})
    if isinstance(value, (list, tuple)):
        return type(value)(_to_spec_value(v) for v in value)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return f"<{type(value).__name__}>"


def spec_from_call(name: str, arguments: Mapping[str, Any], kind: str = "") -> Spec:
    """The spec of a part constructed with ``arguments``.

    Args:
        name: the part's registered name.
        arguments: the constructor arguments as given.
        kind: the part's kind; its caller-context arguments are left out.

    Returns:
        A spec whose values are written in the grammar (built modules by their spec).
    """
    context = KIND_CONTEXT.get(kind, ())
    return Spec(name, {k: _to_spec_value(v) for k, v in arguments.items() if k not in context})
