"""Validation of specs against the registry and the constructors' signatures and type hints.

:func:`validate` checks every keyword of a spec (recursively) before anything is built;
:func:`coerce` checks one value against a parameter's hint (:mod:`lowrank.hints`) and converts
grammar values to what the constructor expects (a bare name given to a ``str`` parameter becomes
the string; a nested part's spec is validated against its kind).
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union

from torch import nn

from .hints import (
    PARAMETER_RANGES,
    HintMismatch,
    MonaiLayer,
    PartOf,
    Range,
    RangeMismatch,
    describe_hint,
    range_of,
    strip_annotated,
)
from .norm_act import LAYER_NORM_NAMES, layer_class, layer_names
from .registry import did_you_mean, get_part_info
from .spec import MAX_DEPTH, Spec, SpecError, SpecKeywordError, spec_depth
from .spec_values import KIND_CONTEXT, as_spec

# signature_of, accepted_arguments and located are the builder's helpers (importable, not documented)
__all__ = ["coerce", "validate"]


def _what(value: Any) -> str:
    if isinstance(value, Spec):
        return f"name {value.name!r}" if not value.kwargs else f"spec {value}"
    return f"{type(value).__name__} {value!r}"


#: constructors that take no arguments of their own (a part class without an ``__init__``)
_NO_ARGUMENTS = (nn.Module.__init__, object.__init__)


def signature_of(obj: Callable) -> tuple[inspect.Signature, dict[str, Any]]:
    target = obj.__init__ if isinstance(obj, type) else obj
    if inspect.unwrap(target) in _NO_ARGUMENTS:  # nn.Module's (*args, **kwargs) takes nothing
        return inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)]), {}
    signature = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable forward references: validate names only
        hints = {}
    return signature, hints


def accepted_arguments(signature: inspect.Signature) -> tuple[list[str], bool]:
    names, var_kw = [], False
    for i, (name, param) in enumerate(signature.parameters.items()):
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif param.kind is not inspect.Parameter.VAR_POSITIONAL and not (i == 0 and name == "self"):
            names.append(name)
    return names, var_kw


def _check_depth(spec: Spec) -> None:
    if spec_depth(spec) > MAX_DEPTH:
        raise SpecError(
            f"the spec {spec.name}(...) nests deeper than {MAX_DEPTH} levels: flatten it "
            "(real configurations nest a few levels)"
        )


def located(spec: Spec, name: str, err: Exception, cls: type[SpecError] = SpecError) -> SpecError:
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
    signature, hints = signature_of(info.obj)
    accepted, var_kw = accepted_arguments(signature)
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
            if key in info.fixed:  # a preset pins it: say where it can be chosen
                takes = f"this preset of {info.base} fixes {key} (set it in {info.base}(...)); {takes}"
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


def _check_layer_kwargs(name: str, kwargs: Mapping[str, Any], spec: Spec | None) -> None:
    """Check a MONAI layer's keyword arguments against its class and :data:`PARAMETER_RANGES`.

    Raises:
        SpecError: when ``spec`` (the layer as written in a spec text) locates the problem.
        HintMismatch: otherwise.
    """
    cls, caller = layer_class(name)
    accepted: list[str] = []
    var_kw = True
    if cls is not None:
        try:
            params = inspect.signature(cls.__init__ if isinstance(cls, type) else cls).parameters
        except (TypeError, ValueError):
            params = {}
        var_kw = not params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        accepted = [n for n in params if n not in ("self", *caller)]
        if name.lower() in ("group", "groupnorm"):
            accepted.append("group_size")  # lowrank's extension: channels per group
    for key, item in kwargs.items():
        if not var_kw and key not in accepted:
            from .registry import did_you_mean

            message = (
                f"{name}() has no keyword {key!r};{did_you_mean(key, accepted)} "
                f"accepted: {', '.join(accepted) or '(none)'}"
            )
            if spec is not None and spec.where is not None:
                from .spec import SpecKeywordError

                raise spec.error(message, key, "key", SpecKeywordError)
            raise HintMismatch(f"a layer without the keyword {key!r} ({message})")
        bounds = PARAMETER_RANGES.get(key)
        if bounds is not None:
            try:
                bounds.check(item)
            except HintMismatch as err:
                if spec is not None and spec.where is not None:
                    raise spec.error(
                        f"{name}({key}=...): {key} must be {err}, got {item!r}", key, "value"
                    ) from None
                raise HintMismatch(f"{name}({key}=...) with {key} {err}") from None


def coerce(value: Any, annotation: Any) -> Any:
    """Check ``value`` against ``annotation`` and convert grammar values to what it expects."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return value
    base, meta = strip_annotated(annotation)
    for marker in meta:
        if isinstance(marker, PartOf):
            if value is None:
                return None
            normalized = as_spec(value) if not isinstance(value, bool) else value
            if isinstance(normalized, Spec):
                return validate(marker.kind, normalized)
            if isinstance(normalized, nn.Module) or callable(normalized):
                return normalized
            raise HintMismatch(f"a {marker.kind} spec")
        if isinstance(marker, MonaiLayer):
            written = value if isinstance(value, Spec) else None
            if isinstance(value, Spec):
                value = (value.name, dict(value.kwargs)) if value.kwargs else value.name
            if value is None:
                return None
            name = value if isinstance(value, str) else value[0] if isinstance(value, tuple) else None
            if not isinstance(name, str):
                raise HintMismatch("a layer name or (name, {kwargs})")
            known = layer_names()
            if name.lower() not in known:
                from .registry import did_you_mean

                raise HintMismatch(f"a MONAI norm/act/dropout name;{did_you_mean(name.lower(), known)}")
            extension = name.lower() in LAYER_NORM_NAMES or (
                isinstance(value, tuple) and len(value) > 1 and "group_size" in dict(value[1])
            )
            if extension and not marker.extensions:
                raise HintMismatch(
                    "a norm MONAI builds (this part hands it to a MONAI network: 'layer' and "
                    "group_size are lowrank's; use batch, instance or group(num_groups=...))"
                )
            if isinstance(value, tuple) and len(value) > 1:
                if not isinstance(value[1], Mapping):
                    raise HintMismatch("a layer name or (name, {kwargs})")
                _check_layer_kwargs(name, value[1], written)
            return value
    result = _coerce_base(value, base)
    for marker in meta:
        if isinstance(marker, Range):
            marker.check(result)
    return result


def _coerce_base(value: Any, base: Any) -> Any:
    """:func:`coerce` against a hint without ``Annotated`` metadata."""
    origin = typing.get_origin(base)
    args = typing.get_args(base)
    if base is type(None):
        if value is None:
            return None
        raise HintMismatch("none")
    if origin is Union or (origin is not None and origin.__name__ == "UnionType"):
        out_of_range = None
        for arm in sorted(args, key=lambda a: a is type(None)):
            try:
                return coerce(value, arm)
            except RangeMismatch as err:  # the right type, out of range: report the range
                out_of_range = out_of_range or err
            except HintMismatch:
                continue
        if out_of_range is not None:
            raise out_of_range
        raise HintMismatch(" | ".join(describe_hint(a) for a in args))
    if origin is Literal:
        candidate = value.name if isinstance(value, Spec) and not value.kwargs else value
        if candidate in args:
            return candidate
        raise HintMismatch("one of " + ", ".join(repr(a) for a in args))
    if base is bool:
        if isinstance(value, bool):
            return value
        raise HintMismatch("true or false")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise HintMismatch("an integer")
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise HintMismatch("a number")
    if base is str:
        if isinstance(value, Spec) and not value.kwargs:
            return value.name
        if isinstance(value, str):
            return value
        raise HintMismatch("a string")
    if origin in (list, tuple, Sequence) or base in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise HintMismatch(describe_hint(base))
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise HintMismatch(f"{len(args)} values")
            return tuple(coerce(v, a) for v, a in zip(value, args, strict=True))
        item = args[0] if args else Any
        items = []
        for i, v in enumerate(value):
            try:
                items.append(coerce(v, item))
            except HintMismatch as err:
                raise HintMismatch(f"{describe_hint(base)} (item {i}: expected {err})") from None
        return tuple(items) if (origin is tuple or base is tuple) else items
    if origin in (dict, Mapping) or base in (dict, Mapping):
        if isinstance(value, Mapping):
            return dict(value)
        raise HintMismatch("a mapping")
    if isinstance(base, type):
        if isinstance(value, base):
            return value
        raise HintMismatch(describe_hint(base))
    return value
