"""Spec forms and spec values: what a spec may be given as, and how a value is written in one.

:func:`as_spec` reads the accepted forms of a spec; :func:`spec_from_call` writes the spec of a
part built with given arguments (what ``module.spec`` holds). Used by the registry, which records
each registered module's spec when it is constructed, and by the builder.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .spec import NAME_RE, Spec, SpecError, parse_spec

__all__ = [
    "KIND_CONTEXT",
    "as_spec",
    "spec_as_written",
    "spec_from_call",
    "spec_text",
    "taken_spec",
    "to_spec_value",
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


def to_spec_value(value: Any) -> Any:
    """``value`` as written in a spec (names bare, built modules by their spec, dtypes by name)."""
    if isinstance(value, str) and NAME_RE.fullmatch(value) and value not in ("true", "false", "none"):
        return Spec(value)  # written bare, as a user would: mode=mul, norm=instance
    if isinstance(value, Spec):
        return Spec(value.name, {k: to_spec_value(v) for k, v in value.kwargs.items()})
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        return to_spec_value(as_spec(value))
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
            return Spec(value[0], {k: to_spec_value(v) for k, v in value[1].items()})
    if isinstance(value, (list, tuple)):
        return type(value)(to_spec_value(v) for v in value)
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
    return Spec(name, {k: to_spec_value(v) for k, v in arguments.items() if k not in context})


def spec_text(spec: Any) -> str:
    """The canonical text of a spec (``str`` of the parsed spec; callables by qualified name)."""
    parsed = as_spec(spec)
    if callable(parsed) and not hasattr(parsed, "kwargs"):
        return f"<{getattr(parsed, '__module__', '')}.{getattr(parsed, '__qualname__', parsed)}>"
    return str(parsed)


#: the spec the builder is constructing, as the user wrote it: ``(class, spec)`` or None
_AS_WRITTEN: contextvars.ContextVar[tuple[type, Spec] | None] = contextvars.ContextVar(
    "lowrank_spec_as_written", default=None
)


@contextlib.contextmanager
def spec_as_written(cls: type, spec: Spec) -> Iterator[None]:
    """While the builder constructs ``cls``, the instance records ``spec`` (the spec as written,
    with overrides, less the caller's context) instead of its constructor arguments."""
    token = _AS_WRITTEN.set((cls, spec))
    try:
        yield
    finally:
        _AS_WRITTEN.reset(token)


def taken_spec(cls: type) -> Spec | None:
    """The spec :func:`spec_as_written` holds for ``cls`` (taken once), else None."""
    pending = _AS_WRITTEN.get()
    if pending is None or pending[0] is not cls:
        return None
    _AS_WRITTEN.set(None)
    return pending[1]
