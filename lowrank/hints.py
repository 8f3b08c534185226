"""Type hints of part parameters, and the checking of spec values against them.

A part's constructor declares with these hints what each keyword takes: a nested part of a
given kind (:data:`SolverSpec`, :data:`ConvSpec`, ...), a MONAI layer name (:data:`LayerSpec`),
or a plain type (``int``, ``float``, ``Literal[...]``, ``Sequence[int]``, ...). The builder
checks spec values against the hints before anything is built and converts grammar values to
what the constructor expects (a bare name given to a ``str`` parameter becomes the string).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, Union

from torch import nn

from .spec import Spec

__all__ = [
    "BlockSpec",
    "ConvSpec",
    "HintMismatch",
    "InitSpec",
    "LayerSpec",
    "MatricizeSpec",
    "MonaiLayer",
    "NetSpec",
    "PartOf",
    "SolverSpec",
    "UpdateSpec",
    "coerce",
]


class PartOf:
    """Type-hint marker: the parameter takes a spec of a part of ``kind``."""

    def __init__(self, kind: str):
        self.kind = kind

    def __repr__(self) -> str:
        return f"PartOf({self.kind!r})"


class MonaiLayer:
    """Type-hint marker: a MONAI layer name, ``str | (name, {kwargs})`` (norm, act, ...)."""


_SpecLike = Union[str, Spec, tuple, list, dict, Callable, nn.Module]
SolverSpec = Annotated[_SpecLike, PartOf("solver")]
UpdateSpec = Annotated[_SpecLike, PartOf("update")]
InitSpec = Annotated[_SpecLike, PartOf("init")]
MatricizeSpec = Annotated[_SpecLike, PartOf("matricize")]
BlockSpec = Annotated[_SpecLike, PartOf("block")]
ConvSpec = Annotated[_SpecLike, PartOf("conv")]
NetSpec = Annotated[_SpecLike, PartOf("net")]
LayerSpec = Annotated[Union[str, tuple, None], MonaiLayer()]


class HintMismatch(Exception):
    """A value does not fit a type hint (the message says what was expected)."""


def _monai_layer_names() -> list[str]:
    """Lower-case names of MONAI's norm, activation and dropout factories."""
    from monai.networks.layers.factories import Act, Dropout, Norm

    return sorted(n.lower() for factory in (Norm, Act, Dropout) for n in factory.names)


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is None and hasattr(annotation, "__name__"):
        return annotation.__name__
    return repr(annotation).replace("typing.", "").replace("collections.abc.", "")


def _strip_annotated(annotation: Any) -> tuple[Any, list]:
    if typing.get_origin(annotation) is Annotated:
        base, *meta = typing.get_args(annotation)
        return base, meta
    return annotation, []


def coerce(value: Any, annotation: Any) -> Any:
    """Check ``value`` against ``annotation`` and convert grammar values to what it expects."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return value
    base, meta = _strip_annotated(annotation)
    for marker in meta:
        if isinstance(marker, PartOf):
            if value is None:
                return None
            from .build import as_spec, validate

            normalized = as_spec(value) if not isinstance(value, bool) else value
            if isinstance(normalized, Spec):
                return validate(marker.kind, normalized)
            if isinstance(normalized, nn.Module) or callable(normalized):
                return normalized
            raise HintMismatch(f"a {marker.kind} spec")
        if isinstance(marker, MonaiLayer):
            if isinstance(value, Spec):
                value = (value.name, dict(value.kwargs)) if value.kwargs else value.name
            if value is None:
                return None
            name = value if isinstance(value, str) else value[0] if isinstance(value, tuple) else None
            if not isinstance(name, str):
                raise HintMismatch("a layer name or (name, {kwargs})")
            known = _monai_layer_names()
            if name.lower() not in known:
                from .registry import did_you_mean

                raise HintMismatch(f"a MONAI norm/act/dropout name;{did_you_mean(name.lower(), known)}")
            return value
    origin = typing.get_origin(base)
    args = typing.get_args(base)
    if base is type(None):
        if value is None:
            return None
        raise HintMismatch("none")
    if origin is Union or (origin is not None and origin.__name__ == "UnionType"):
        for arm in sorted(args, key=lambda a: a is type(None)):
            try:
                return coerce(value, arm)
            except HintMismatch:
                continue
        raise HintMismatch(" | ".join(_describe(a) for a in args))
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
            raise HintMismatch(_describe(base))
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
                raise HintMismatch(f"{_describe(base)} (item {i}: expected {err})") from None
        return tuple(items) if (origin is tuple or base is tuple) else items
    if origin in (dict, Mapping) or base in (dict, Mapping):
        if isinstance(value, Mapping):
            return dict(value)
        raise HintMismatch("a mapping")
    if isinstance(base, type):
        if isinstance(value, base):
            return value
        raise HintMismatch(_describe(base))
    return value
