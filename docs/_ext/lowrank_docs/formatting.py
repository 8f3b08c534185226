"""Formatting for the generated reference: type hints, defaults in spec form, escaping.

Used by :mod:`.reference` to write the parameter tables of the parts.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

__all__ = [
    "escape_rst",
    "format_annotation",
    "format_default",
    "part_parameters",
    "spec_value",
]


def escape_rst(text: str) -> str:
    """Escape inline markup characters (``*``, ``|``, trailing ``_``) outside ````literal```` spans.

    Args:
        text: one line of reStructuredText.

    Returns:
        The line with ``*`` and ``|`` escaped outside double-backtick literals, so shape notation
        such as ``(*batch, M, N)`` written in plain text does not start emphasis.
    """
    parts = text.split("``")
    for i in range(0, len(parts), 2):  # even pieces are outside literals
        parts[i] = parts[i].replace("\\", "\\\\").replace("*", "\\*").replace("|", "\\|")
    return "``".join(parts)


def _literal(text: str) -> str:
    text = text.replace("\n", " ")
    if "``" in text or text != text.strip() or not text:
        return f":code:`{text}`" if text.strip() and "`" not in text else repr(text)
    return f"``{text}``"


def _annotated_markers(annotation: Any) -> tuple[list[Any], bool]:
    """The ``Annotated`` metadata of a hint, also inside ``X | None``; and whether None is allowed."""
    if typing.get_origin(annotation) is typing.Annotated:
        return list(typing.get_args(annotation)[1:]), False
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        args = typing.get_args(annotation)
        annotated = [a for a in args if typing.get_origin(a) is typing.Annotated]
        if len(annotated) == 1:
            return list(typing.get_args(annotated[0])[1:]), type(None) in args
    return [], False


def format_annotation(annotation: Any) -> str:
    """Render a type hint readably (``int | Sequence[int]``, ``solver spec``, ``'mu' | 'hals'``).

    Args:
        annotation: an evaluated type hint (possibly ``Annotated`` with a ``PartOf`` marker, or
            such a hint ``| None``).

    Returns:
        reStructuredText for a table cell.
    """
    from lowrank.build import MonaiLayer, PartOf
    from lowrank.spec import format_value

    if annotation is inspect.Parameter.empty:
        return ""
    markers, optional = _annotated_markers(annotation)
    suffix = " or ``None``" if optional else ""
    for marker in markers:
        if isinstance(marker, PartOf):
            return f":ref:`{marker.kind} spec <kind-{marker.kind}>`{suffix}"
        if isinstance(marker, MonaiLayer):
            return "MONAI layer ``str | (name, {kwargs})``" + suffix
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return _literal(_type_text(annotation, format_value))


def _type_text(annotation: Any, format_value: Callable[[Any], str]) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None) or annotation is None:
        return "None"
    if annotation is typing.Any:
        return "Any"
    if origin is typing.Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        return " | ".join(_type_text(a, format_value) for a in args)
    if origin is typing.Literal:
        return " | ".join(format_value(a) if not isinstance(a, str) else a for a in args)
    if origin is typing.Annotated:
        return _type_text(args[0], format_value)
    if origin is not None:
        name = getattr(origin, "__name__", None) or str(origin).replace("typing.", "")
        inner = ", ".join("..." if a is Ellipsis else _type_text(a, format_value) for a in args)
        return f"{name}[{inner}]" if args else name
    if isinstance(annotation, type):
        if annotation.__module__ in ("builtins",):
            return annotation.__name__
        return f"{annotation.__module__}.{annotation.__qualname__}".replace("torch.nn.modules.module.", "nn.")
    if isinstance(annotation, str):
        return annotation
    return str(annotation).replace("typing.", "")


def spec_value(value: Any, annotation: Any = inspect.Parameter.empty) -> Any:
    """A default value as the spec grammar writes it.

    A part-spec parameter's string default (``"nmf(rank=1)"``) becomes a
    :class:`~lowrank.spec.Spec`, and a MONAI layer default (``("group", {"group_size": 8})``)
    becomes ``group(group_size=8)``, so the docs show what a user would type.

    Args:
        value: the default.
        annotation: the parameter's type hint.

    Returns:
        The value to format with :func:`lowrank.spec.format_value`.
    """
    from lowrank.build import MonaiLayer, PartOf
    from lowrank.spec import NAME_RE, Spec, SpecError, parse_spec

    markers, _ = _annotated_markers(annotation)
    if not markers:
        return value
    try:
        if any(isinstance(m, PartOf) for m in markers) and isinstance(value, str):
            return parse_spec(value)
        if any(isinstance(m, MonaiLayer) for m in markers):
            if isinstance(value, str) and NAME_RE.fullmatch(value):
                return Spec(value)
            if (
                isinstance(value, tuple)
                and len(value) == 2
                and isinstance(value[0], str)
                and isinstance(value[1], dict)
            ):
                return Spec(value[0], dict(value[1]))
    except SpecError:
        return value
    return value


def format_default(value: Any, annotation: Any = inspect.Parameter.empty) -> str:
    """Render a default value in the spec grammar when it has a spec form, else its ``repr``.

    Args:
        value: the parameter's default (``inspect.Parameter.empty`` for a required one).
        annotation: the parameter's type hint (see :func:`spec_value`).

    Returns:
        reStructuredText for a table cell.
    """
    from lowrank.spec import format_value

    if value is inspect.Parameter.empty:
        return "*required*"
    try:
        text = format_value(spec_value(value, annotation))
    except (ValueError, TypeError):
        text = repr(value)
    return _literal(text)


def part_parameters(obj: Callable[..., Any]) -> list[tuple[str, Any, Any, str]]:
    """The keyword parameters of a part: ``(name, annotation, default, kind)`` tuples.

    Args:
        obj: a registered class (its ``__init__`` is read) or factory.

    Returns:
        One tuple per parameter (``self`` and ``*args`` left out); ``kind`` is
        ``"positional"``, ``"keyword"`` or ``"var"`` (for ``**kwargs``).
    """
    target = obj.__init__ if isinstance(obj, type) else obj
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {}
    rows = []
    for i, (name, param) in enumerate(signature.parameters.items()):
        if (i == 0 and name == "self") or param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        kind = {
            inspect.Parameter.VAR_KEYWORD: "var",
            inspect.Parameter.KEYWORD_ONLY: "keyword",
        }.get(param.kind, "positional")
        rows.append((name, hints.get(name, param.annotation), param.default, kind))
    return rows
