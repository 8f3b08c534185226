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

import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Union

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
    "MonaiLayerSpec",
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
    "describe_hint",
    "range_of",
    "strip_annotated",
]


class PartOf:
    """Type-hint marker: the parameter takes a spec of a part of ``kind``."""

    def __init__(self, kind: str):
        self.kind = kind

    def __repr__(self) -> str:
        return f"PartOf({self.kind!r})"


class MonaiLayer:
    """Type-hint marker: a norm/act/dropout layer name, ``str | (name, {kwargs})``.

    Args:
        extensions: whether lowrank's additions to MONAI's names are accepted (``"layer"`` as
            :class:`~lowrank.norm_act.ChannelLayerNorm`, ``group(group_size=...)``): ``True`` for
            parts that build their layers with :mod:`lowrank.norm_act`, ``False`` for parts that
            hand the spec to a MONAI network (:data:`MonaiLayerSpec`).
    """

    def __init__(self, extensions: bool = True):
        self.extensions = extensions

    def __repr__(self) -> str:
        return "MonaiLayer()" if self.extensions else "MonaiLayer(extensions=False)"


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
#: A norm/act that a MONAI network builds itself: MONAI's names only (no ``layer``, no ``group_size``)
MonaiLayerSpec = Annotated[Union[str, tuple, None], MonaiLayer(extensions=False)]

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


def describe_hint(annotation: Any) -> str:
    if typing.get_origin(annotation) is Annotated:
        base, *meta = typing.get_args(annotation)
        ranges = [m.describe() for m in meta if isinstance(m, Range)]
        return describe_hint(base) + "".join(f" {r}" for r in ranges)
    if typing.get_origin(annotation) is None and hasattr(annotation, "__name__"):
        return annotation.__name__
    return repr(annotation).replace("typing.", "").replace("collections.abc.", "")


def strip_annotated(annotation: Any) -> tuple[Any, list]:
    if typing.get_origin(annotation) is Annotated:
        base, *meta = typing.get_args(annotation)
        return base, meta
    return annotation, []
