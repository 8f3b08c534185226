"""Type hints of part parameters, and the checking of spec values against them.

A part's constructor declares with these hints what each keyword takes: a nested part of a
given kind (:data:`SolverSpec`, :data:`ConvSpec`, ...), a MONAI layer name (:data:`LayerSpec`),
or a plain type (``int``, ``float``, ``Literal[...]``, ``Sequence[int]``, ...), optionally with
a numeric :class:`Range` (``Annotated[float, Range(gt=0)]``; ready-made: :data:`Eps`,
:data:`Seed`, :data:`Rank`, :data:`Temperature`, ...). The builder checks spec values against
the hints before anything is built and converts grammar values to what the constructor expects
(a bare name given to a ``str`` parameter becomes the string).

A parameter whose hint carries no :class:`Range` gets the conventional range of its name from
:data:`PARAMETER_RANGES` (``eps > 0``, ``kernel_size >= 1``, ``num_groups >= 1``, seeds within
int64, ...), so the names keep one meaning across all parts; an explicit ``Range`` wins.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from torch import nn

from .spec import Spec

__all__ = [
    "BlockSpec",
    "ConvSpec",
    "Eps",
    "HintMismatch",
    "InitSpec",
    "LayerSpec",
    "MatricizeSpec",
    "MonaiLayer",
    "NetSpec",
    "PARAMETER_RANGES",
    "PartOf",
    "Range",
    "RangeMismatch",
    "Rank",
    "Seed",
    "SolverSpec",
    "Temperature",
    "UpdateSpec",
    "coerce",
    "range_of",
]


class PartOf:
    """Type-hint marker: the parameter takes a spec of a part of ``kind``."""

    def __init__(self, kind: str):
        self.kind = kind

    def __repr__(self) -> str:
        return f"PartOf({self.kind!r})"


class MonaiLayer:
    """Type-hint marker: a MONAI layer name, ``str | (name, {kwargs})`` (norm, act, ...)."""


def _numbers(value: Any) -> list[int | float]:
    """The numbers in a value (itself, or the items of nested lists/tuples); bools excluded."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _numbers(item)]
    return []


@dataclass(frozen=True)
class Range:
    """Type-hint marker: every number of the value (or of its items) lies in an interval.

    Used as ``Annotated[float, Range(gt=0)]``; the builder checks spec values against it before
    the part is built, so a bad value is reported with a caret under it. Numbers are also
    required to be finite.

    Attributes:
        ge, gt, le, lt: the bounds (``None``: unbounded on that side).
        why: what the range protects, appended to the message (e.g. "exp(1/T) stays finite").
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    why: str = ""

    def contains(self, number: int | float) -> bool:
        """Whether ``number`` is finite and within the bounds."""
        if isinstance(number, float) and not math.isfinite(number):
            return False
        return not (
            (self.ge is not None and not number >= self.ge)
            or (self.gt is not None and not number > self.gt)
            or (self.le is not None and not number <= self.le)
            or (self.lt is not None and not number < self.lt)
        )

    def describe(self) -> str:
        """The bounds in words, e.g. ``'> 0'`` or ``'>= 0 and < 2**63'``."""

        def fmt(bound: float) -> str:
            if isinstance(bound, int) and abs(bound) >= 2**31:
                return f"{'-' if bound < 0 else ''}2**{abs(bound).bit_length() - 1}"
            return f"{bound:g}"

        parts = [
            f"{op} {fmt(b)}"
            for op, b in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if b is not None
        ]
        return " and ".join(parts)

    def check(self, value: Any) -> None:
        """Raise :class:`RangeMismatch` unless every number of ``value`` is in the range."""
        for number in _numbers(value):
            if not self.contains(number):
                why = f" ({self.why})" if self.why else ""
                raise RangeMismatch(f"{self.describe()}{why}")


#: The conventional range of a parameter name, for hints that declare no :class:`Range`: the
#: names mean the same in every part (sizes and counts are >= 1, eps and ratios > 0, ...).
PARAMETER_RANGES: dict[str, Range] = {
    "eps": Range(gt=0),
    "seed": Range(ge=-(2**63), lt=2**63, why="a seed fits in int64"),
    "rank": Range(gt=0),
    "iters": Range(ge=1),
    "eval_iters": Range(ge=1),
    "grad_steps": Range(ge=1),
    "temperature": Range(ge=1e-6, le=1e6, why="keeps exp(similarity / temperature) and its gradient finite"),
    "momentum": Range(ge=0, le=1),
    "kernel_size": Range(ge=1),
    "stride": Range(ge=1),
    "dilation": Range(ge=1),
    "groups": Range(ge=1),
    "padding": Range(ge=0),
    "num_groups": Range(ge=1),
    "group_size": Range(ge=1),
    "pos_embed_size": Range(ge=1),
    "patch": Range(ge=1),
    "head_dim": Range(ge=1),
    "heads": Range(ge=1),
    "dim": Range(ge=1),
    "channels": Range(ge=1),
    "ham_channels": Range(ge=1),
    "head_channels": Range(ge=1),
    "mlp_ratio": Range(ge=0, le=64),
    "inner_ratio": Range(ge=0, le=64),
    "dropout": Range(ge=0, lt=1),
    "p": Range(ge=0, le=1),
    "beta": Range(gt=0),
    "lam": Range(ge=0),
    "eta": Range(ge=0, le=1),
    "deep_supervision": Range(ge=1),
}


def range_of(name: str, annotation: Any) -> Range | None:
    """The :class:`Range` a parameter's values must lie in: declared in its hint (anywhere in
    it, e.g. on one arm of a union), else the convention of its name, else ``None``."""
    if _declares_range(annotation):
        return None  # checked by coerce where it is declared
    return PARAMETER_RANGES.get(name)


def _declares_range(annotation: Any) -> bool:
    if typing.get_origin(annotation) is Annotated:
        base, *meta = typing.get_args(annotation)
        return any(isinstance(m, Range) for m in meta) or _declares_range(base)
    return any(_declares_range(a) for a in typing.get_args(annotation))


_SpecLike = Union[str, Spec, tuple, list, dict, Callable, nn.Module]
SolverSpec = Annotated[_SpecLike, PartOf("solver")]
UpdateSpec = Annotated[_SpecLike, PartOf("update")]
InitSpec = Annotated[_SpecLike, PartOf("init")]
MatricizeSpec = Annotated[_SpecLike, PartOf("matricize")]
BlockSpec = Annotated[_SpecLike, PartOf("block")]
ConvSpec = Annotated[_SpecLike, PartOf("conv")]
NetSpec = Annotated[_SpecLike, PartOf("net")]
LayerSpec = Annotated[Union[str, tuple, None], MonaiLayer()]

#: A denominator guard: ``eps > 0``.
Eps = Annotated[float, Range(gt=0)]
#: A seed of the counter-based RNG: fits in int64.
Seed = Annotated[int, Range(ge=-(2**63), lt=2**63, why="a seed fits in int64")]
#: A rank: an int ``R >= 1`` or a float compression ratio ``c > 0`` (see ``resolve_rank``).
Rank = Union[Annotated[int, Range(ge=1)], Annotated[float, Range(gt=0)]]
#: A softmax temperature: ``1e-6 <= T <= 1e6`` keeps ``exp(s / T)`` and its gradient finite.
Temperature = Annotated[
    float, Range(ge=1e-6, le=1e6, why="keeps exp(similarity / temperature) and its gradient finite")
]


class HintMismatch(Exception):
    """A value does not fit a type hint (the message says what was expected)."""


class RangeMismatch(HintMismatch):
    """A number outside a :class:`Range` (the message is the range in words)."""


def _monai_layer_names() -> list[str]:
    """Lower-case names of MONAI's norm, activation and dropout factories."""
    from monai.networks.layers.factories import Act, Dropout, Norm

    return sorted(n.lower() for factory in (Norm, Act, Dropout) for n in factory.names)


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is Annotated:
        base, *meta = typing.get_args(annotation)
        ranges = [m.describe() for m in meta if isinstance(m, Range)]
        return _describe(base) + "".join(f" {r}" for r in ranges)
    if typing.get_origin(annotation) is None and hasattr(annotation, "__name__"):
        return annotation.__name__
    return repr(annotation).replace("typing.", "").replace("collections.abc.", "")


def _strip_annotated(annotation: Any) -> tuple[Any, list]:
    if typing.get_origin(annotation) is Annotated:
        base, *meta = typing.get_args(annotation)
        return base, meta
    return annotation, []


def _layer_class(name: str) -> tuple[Callable | None, tuple[str, ...]]:
    """The class a MONAI norm/act/dropout name builds, and the arguments its caller supplies."""
    from monai.networks.layers.factories import Act, Dropout, Norm

    lname = name.lower()
    if lname in ("layer", "layernorm", "channel_layer"):
        from .blocks._layers import ChannelLayerNorm

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


def _check_layer_kwargs(name: str, kwargs: Mapping[str, Any], spec: Spec | None) -> None:
    """Check a MONAI layer's keyword arguments against its class and :data:`PARAMETER_RANGES`.

    Raises:
        SpecError: when ``spec`` (the layer as written in a spec text) locates the problem.
        HintMismatch: otherwise.
    """
    cls, caller = _layer_class(name)
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
            written = value if isinstance(value, Spec) else None
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
