"""Presets: a named part that is a registered base part with other defaults.

A net or block that only changes defaults is not a copied constructor but a preset, declared
in one decorator over an empty subclass (like timm's variant functions with their
``model_args``)::

    @register_preset("lowrank_resunet", defaults={"conv": "cp_conv(rank=0.5)", "first_level_conv": "dense"})
    class LowRankResUNet(ResUNet):
        \"\"\"Low-rank Res-U-Net (thesis ch. 8): CP convs with ``alpha = 0.5`` past level 0.\"\"\"

- ``defaults`` replace the base's defaults; a spec (or a Python caller) may still set them.
- ``fixed`` are set by the preset and taken out of its signature: a spec that gives one is
  rejected like any unknown keyword (how ``unet`` pins ``conv_unet``'s ``block``).

The preset is registered under the base's kind. Its ``__init__`` signature is the base's with
the effective defaults, so the builder validates every keyword (carets, "did you mean", nested
specs) exactly as for the base, ``lowrank list`` / ``lowrank show`` and the docs show the base
and the defaults, and a built module is an instance of the preset class (and of the base)
whose recorded spec names the preset. The docstring is the class's own, followed by the base's
sections (``Args:`` without the fixed keywords, ``Shapes:``, ...) unless it has an ``Args:``.

Example:
    >>> from lowrank import build_net
    >>> from lowrank.registry import get_part_info
    >>> get_part_info("net", "lowrank_resunet").base
    'resunet'
    >>> str(build_net("lowrank_resunet(channels=[8, 16])", 4, 4).spec)
    'lowrank_resunet(channels=[8, 16])'
"""

from __future__ import annotations

import copy
import inspect
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .registry import PartInfo, register
from .spec import Spec, SpecError, format_value, parse_spec
from .spec_values import KIND_CONTEXT, to_spec_value

__all__ = ["register_preset", "preset_spec", "effective_defaults"]

#: the section headers of a Google-style docstring that a preset inherits from its base
_SECTION = re.compile(r"^(\s*)(Args|Arguments|Shapes|Shape|Note|Notes|Raises|Returns|Example|Examples):\s*$")


def _base_sections(doc: str, drop: Sequence[str]) -> str:
    """The base docstring from its first section on, without the ``Args`` entries in ``drop``."""
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if _SECTION.match(line)), len(lines))
    out: list[str] = []
    in_args, entry_indent, skipping = False, None, False
    for line in lines[start:]:
        header = _SECTION.match(line)
        if header:
            in_args = header.group(2) in ("Args", "Arguments")
            entry_indent, skipping = None, False
            out.append(line)
            continue
        if in_args and line.strip():
            indent = len(line) - len(line.lstrip())
            if entry_indent is None:
                entry_indent = indent
            if indent == entry_indent:
                skipping = line.strip().split(":", 1)[0].strip() in drop
        if not (in_args and skipping and line.strip()):
            out.append(line)
    return "\n".join(out)


def _shown(value: Any) -> Any:
    """A default as written in a spec: a string that parses as a spec is shown as one."""
    if isinstance(value, str):
        try:
            return to_spec_value(parse_spec(value))
        except SpecError:
            return value
    return to_spec_value(value)


def preset_spec(info: PartInfo) -> Spec:
    """A preset written as a spec of its base: ``resunet(conv=cp_conv(rank=0.5), ...)``.

    Args:
        info: a preset's registry entry (``info.base`` is set).

    Returns:
        The spec of the base with the preset's defaults and fixed arguments.
    """
    if info.base is None:
        raise ValueError(f"{info.kind} {info.name!r} is not a preset")
    values = {**info.fixed, **info.defaults}
    return Spec(info.base, {k: _shown(v) for k, v in values.items()})


def effective_defaults(obj: Callable[..., Any], kind: str) -> dict[str, Any]:
    """The keyword defaults a part is built with, as spec values (context arguments left out).

    Args:
        obj: a registered class or factory (for a preset: its generated class).
        kind: the part's kind.

    Returns:
        ``{keyword: default}`` in signature order, for the keywords that have a default.
    """
    target = obj.__init__ if isinstance(obj, type) else obj
    context = KIND_CONTEXT.get(kind, ())
    out = {}
    for name, param in inspect.signature(target).parameters.items():
        if name in context or name == "self" or param.default is inspect.Parameter.empty:
            continue
        out[name] = _shown(param.default)
    return out


def register_preset(
    name: str,
    *,
    defaults: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
    aliases: Sequence[str] = (),
    dims: Sequence[int] | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    test_spec: str | None = None,
    test_size: int | None = None,
) -> Callable[[type], type]:
    """Register an empty subclass of a registered part as a preset of it.

    Args:
        name: the preset's spec name (registered under the base's kind).
        defaults: keyword → new default (the values a Python caller would pass: ``"dense"``,
            ``("leakyrelu", {"negative_slope": 0.01})``, ``(60, 120)``, ...).
        fixed: keyword → value set by the preset and removed from its signature.
        aliases: other names of the preset.
        dims: supported spatial dimensionalities (default: the base's).
        dtypes: supported dtypes (default: the base's).
        test_spec: the contract suite's small spec (default: the base's with the preset's name,
            without the fixed keywords).
        test_size: the contract suite's spatial size (default: the base's).

    Returns:
        A class decorator that installs the preset's ``__init__`` (the base's with the merged
        defaults), composes its docstring and registers it.

    Raises:
        TypeError: the class does not directly subclass exactly one registered part, or
            defines its own ``__init__``.
        ValueError: a keyword the base does not take, a caller-given (context) keyword, or a
            keyword in both ``defaults`` and ``fixed``.
    """
    defaults = dict(defaults or {})
    fixed = dict(fixed or {})

    def decorator(cls: type) -> type:
        bases = [b for b in cls.__bases__ if "_lowrank_part" in vars(b)]
        if len(cls.__bases__) != 1 or len(bases) != 1:
            raise TypeError(f"preset {name!r}: {cls.__name__} must subclass exactly one registered part")
        if "__init__" in vars(cls):
            raise TypeError(f"preset {name!r}: {cls.__name__} must not define __init__ (give defaults=...)")
        base = bases[0]
        base_info: PartInfo = base._lowrank_part  # type: ignore[attr-defined]
        kind = base_info.kind
        signature = inspect.signature(base.__init__)
        hints = typing.get_type_hints(base.__init__, include_extras=True)
        params = signature.parameters
        context = KIND_CONTEXT.get(kind, ())
        for key in (*defaults, *fixed):
            if key not in params or key == "self":
                raise ValueError(f"preset {name!r}: {base_info.name}() has no keyword {key!r}")
            if key in context:
                raise ValueError(f"preset {name!r}: {key!r} is given by the caller, not by a preset")
        both = sorted(set(defaults) & set(fixed))
        if both:
            raise ValueError(f"preset {name!r}: {both} both in defaults and fixed")
        base_init = base.__init__

        def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: N807
            pinned = sorted(set(kwargs) & set(fixed))
            if pinned:
                raise TypeError(
                    f"{name}() sets {', '.join(pinned)} itself: build {base_info.name}(...) to choose"
                )
            base_init(self, *args, **{**copy.deepcopy(defaults), **kwargs, **copy.deepcopy(fixed)})

        __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[
                p.replace(default=defaults[p.name]) if p.name in defaults else p
                for p in params.values()
                if p.name not in fixed
            ]
        )
        __init__.__annotations__ = {k: v for k, v in hints.items() if k not in fixed}
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        __init__.__module__ = cls.__module__
        cls.__init__ = __init__  # type: ignore[misc]

        own = inspect.cleandoc(cls.__doc__ or "")
        shown = ", ".join(f"``{k}={format_value(_shown(v))}``" for k, v in {**fixed, **defaults}.items())
        note = f"A preset of :class:`~{base.__module__}.{base.__qualname__}` (``{base_info.name}``)"
        note += f" with {shown}." if shown else "."
        inherited = (
            ""
            if _SECTION.search(own) and "Args:" in own
            else _base_sections(inspect.getdoc(base) or "", list(fixed))
        )
        cls.__doc__ = "\n\n".join(s for s in (own, note, inherited) if s)

        if test_spec is None and base_info.test_spec is not None:
            small = parse_spec(base_info.test_spec)
            spec_text = str(Spec(name, {k: v for k, v in small.kwargs.items() if k not in fixed}))
        else:
            spec_text = test_spec
        register(
            kind,
            name,
            aliases=aliases,
            dims=base_info.dims if dims is None else dims,
            dtypes=base_info.dtypes if dtypes is None else dtypes,
            test_spec=spec_text,
            test_size=base_info.test_size if test_size is None else test_size,
            base=base_info.name,
            defaults=defaults,
            fixed=fixed,
        )(cls)
        return cls

    return decorator
