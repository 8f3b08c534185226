"""Kind-scoped registry of parts.

Every building block of ``lowrank`` (a factorization layer, an update rule, an
initialization, a matricizer, a block, a convolution, a net) is a *part*: a class or
factory registered under a *kind* and a *name*. Config strings name parts; the
registry turns names into objects.

A part that only changes another part's defaults is a *preset*
(:func:`lowrank.preset.register_preset`): its entry records the base part's name
(:attr:`PartInfo.base`) and the overrides (:attr:`PartInfo.defaults`, :attr:`PartInfo.fixed`),
and its class takes the base's keywords with the merged defaults, so the builder validates it
like any part.

Example:
    >>> from lowrank import list_parts
    >>> "nmf" in list_parts("solver")
    True
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .spec import NAME_RE
from .spec_values import spec_from_call, taken_spec

__all__ = [
    "KINDS",
    "PartInfo",
    "register",
    "list_parts",
    "get_part",
    "get_part_info",
    "did_you_mean",
    "check_input",
    "inherit_signature",
]

#: The kinds of part, with a one-line description each (used by ``lowrank list`` and the docs).
KINDS: dict[str, str] = {
    "solver": "factorization layers: a batch of matrices (*batch, M, N) -> its low-rank reconstruction",
    "update": "update rules of the factorization layers (multiplicative, HALS, ...)",
    "init": "initializations of the factors of the factorization layers",
    "matricize": "views of a feature map (B, C, *S) as a batch of matrices, with exact inverses",
    "block": "shape-preserving blocks (B, C, *S) -> (B, C, *S)",
    "conv": "convolutions (B, C_in, *S) -> (B, C_out, *S'), dense or low-rank",
    "net": "whole networks (B, C_in, *S) -> (B, C_out, *S)",
}


@dataclass(frozen=True)
class PartInfo:
    """What the registry knows about one part.

    Attributes:
        kind: the part's kind (a key of :data:`KINDS`).
        name: the name used in specs.
        obj: the registered class or factory.
        aliases: other accepted names.
        dims: spatial dimensionalities the part supports (for blocks, convs, nets, matricizers).
        dtypes: floating dtypes the part supports.
        test_spec: a small spec the contract test suite builds and runs (defaults to the name).
        test_size: the spatial size per axis of the contract suite's input.
        module: the module that defines the part.
        base: for a preset, the name of its base part (same kind); ``None`` otherwise.
        defaults: for a preset, the defaults it gives the base's keywords.
        fixed: for a preset, the base's keywords it sets itself (not in its signature).
    """

    kind: str
    name: str
    obj: Callable[..., Any]
    aliases: tuple[str, ...] = ()
    dims: tuple[int, ...] = (1, 2, 3)
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
    test_spec: str | None = None
    test_size: int = 16
    module: str = field(default="", compare=False)
    base: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict, compare=False)
    fixed: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def summary(self) -> str:
        """The first line of the part's docstring."""
        doc = inspect.getdoc(self.obj) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


_REGISTRY: dict[str, dict[str, PartInfo]] = {kind: {} for kind in KINDS}
_ALIASES: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """A ``" did you mean 'x'?"`` hint for the closest choices.

    Args:
        word: the unknown word.
        choices: the valid words.

    Returns:
        The hint with a leading space, or ``""`` when nothing is close.
    """
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return " did you mean " + " or ".join(repr(c) for c in close) + "?"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(
            f"unknown kind {kind!r};{did_you_mean(kind, list(KINDS))} valid kinds: {', '.join(KINDS)}"
        )


#: the kinds whose ``forward(x, ...)`` gets the entry checks of :func:`check_input`
_CHECKED = ("solver", "matricize", "block", "conv", "net")


def check_input(x: Any, name: str, kind: str) -> None:
    """The entry checks of a part's forward: a non-empty floating-point tensor.

    Only the tensor's metadata is read (no pass over the data, no device sync, no graph break
    under ``torch.compile``).

    Args:
        x: the first argument of ``forward``: ``(B, C, *S)``, or ``(*batch, M, N)`` for solvers.
        name: the part's name, for the message.
        kind: the part's kind.

    Raises:
        TypeError: not a tensor, or not a floating-point tensor (e.g. int64 labels or a uint8
            image), with the fix.
        ValueError: an empty batch or an empty spatial size (or empty matrices).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a tensor, got {type(x).__name__}")
    if not (x.is_floating_point() or x.is_complex()):
        dtype = str(x.dtype).removeprefix("torch.")
        raise TypeError(
            f"{name} expects a floating-point tensor, got {dtype}: convert the input first, e.g. x.float()"
        )
    if kind == "solver":
        if x.dim() >= 2 and 0 in x.shape:
            raise ValueError(f"{name} got empty matrices of shape {tuple(x.shape)}: nothing to factorize")
        return
    if x.dim() >= 1 and x.shape[0] == 0:
        raise ValueError(f"{name} got an empty batch, shape {tuple(x.shape)}: pass at least one sample")
    if x.dim() >= 3 and 0 in x.shape[2:]:
        raise ValueError(
            f"{name} got an empty spatial size, shape {tuple(x.shape)}: every spatial axis needs >= 1 voxel"
        )


def _checked_forward(forward: Callable[..., Any], info: PartInfo) -> Callable[..., Any]:
    """``forward`` with :func:`check_input` on its first argument."""

    @functools.wraps(forward)
    def checked(self, x, *args, **kwargs):
        part = getattr(type(self), "_lowrank_part", info)  # a registered subclass's own name
        check_input(x, part.name, part.kind)
        return forward(self, x, *args, **kwargs)

    checked._lowrank_checked = True  # type: ignore[attr-defined]
    return checked


def _hands_on(init: Any) -> bool:
    """Whether a constructor ends in ``**shared`` (keywords it hands on to its base class)."""
    params = inspect.signature(init).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def inherit_signature(cls: type) -> None:
    """Give ``cls.__init__(self, *, own..., **shared)`` its base's keywords as its signature.

    A part whose constructor declares only its own keywords (and those whose default it changes)
    and hands ``**shared`` to ``super().__init__`` gets the signature: its positional parameters,
    the base constructor's keywords in the base's order (its own re-declarations in place), then
    its new keywords. The builder, the docs and ``lowrank show`` read that signature, so the
    shared keywords are validated (types, ranges, "did you mean") as if written out. Applied by
    :func:`register` to every registered class, and first to unregistered bases in between.

    Args:
        cls: a class whose own ``__init__`` ends in ``**shared`` (others are left unchanged).
    """
    owner = next(b for b in cls.__mro__ if "__init__" in vars(b))
    init = vars(owner)["__init__"]
    if inspect.unwrap(init) in (torch.nn.Module.__init__, object.__init__):
        return  # no constructor of its own
    if owner is not cls:  # inherited: the constructor's class gets the signature
        inherit_signature(owner)
        return
    if getattr(init, "__signature__", None) is not None or not _hands_on(init):
        return
    base = next(b for b in cls.__mro__[1:] if "__init__" in vars(b))
    inherit_signature(base)
    own = inspect.signature(init)
    hints = {**typing.get_type_hints(base.__init__, include_extras=True)}
    hints.update(typing.get_type_hints(init, include_extras=True))
    params = list(own.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keywords = {p.name: p for p in params if p.kind is p.KEYWORD_ONLY}
    taken = {p.name for p in positional}
    inherited = [
        keywords.pop(p.name, p.replace(kind=p.KEYWORD_ONLY))
        for i, p in enumerate(inspect.signature(base.__init__).parameters.values())
        if i > 0 and p.name not in taken and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    composed = [*positional, *inherited, *keywords.values()]
    init.__signature__ = own.replace(parameters=composed)
    init.__annotations__ = {p.name: hints[p.name] for p in composed if p.name in hints}


def _record_spec(cls: type) -> None:
    """Wrap ``cls.__init__`` so that each instance remembers the spec it was built from."""
    inherit_signature(cls)
    original_init = cls.__init__
    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):  # noqa: N807
        original_init(self, *args, **kwargs)
        if type(self) is not cls and getattr(type(self), "_lowrank_part", None) is not None:
            return  # a registered subclass records its own spec
        written = taken_spec(cls)  # built from a spec: the spec as the user wrote it
        if written is not None:
            object.__setattr__(self, "spec", written)
            return
        bound = signature.bind(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(signature.parameters)))  # self
        for name, param in signature.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD and name in arguments:
                arguments.update(arguments.pop(name))
        info = cls._lowrank_part
        object.__setattr__(self, "spec", spec_from_call(info.name, arguments, info.kind))

    cls.__init__ = __init__
    if (
        issubclass(cls, torch.nn.Module)
        and cls._lowrank_part.kind in _CHECKED  # type: ignore[attr-defined]
        and not getattr(cls.forward, "_lowrank_checked", False)
        and cls.forward is not torch.nn.Module.forward
    ):
        cls.forward = _checked_forward(cls.forward, cls._lowrank_part)  # type: ignore[attr-defined]
    if issubclass(cls, torch.nn.Module) and not getattr(cls.extra_repr, "_lowrank_spec_repr", False):
        original_extra_repr = cls.extra_repr  # (a registered base's wrapper is inherited as is)

        def extra_repr(self) -> str:
            own = original_extra_repr(self)
            spec = getattr(self, "spec", None)
            head = f"spec={spec}" if spec is not None else ""
            return ", ".join(s for s in (head, own) if s)

        extra_repr._lowrank_spec_repr = True  # type: ignore[attr-defined]
        cls.extra_repr = extra_repr


def register(
    kind: str,
    name: str | None = None,
    *,
    aliases: Sequence[str] = (),
    dims: Sequence[int] = (1, 2, 3),
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    test_spec: str | None = None,
    test_size: int = 16,
    base: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> Callable[[Any], Any]:
    """Register a class or factory as a part of ``kind``.

    Args:
        kind: one of :data:`KINDS`.
        name: the spec name; defaults to the object's ``__name__`` in lower case.
        aliases: other names that resolve to the same part.
        dims: supported spatial dimensionalities.
        dtypes: supported floating dtypes.
        test_spec: a small spec for the contract test suite (defaults to the bare name).
        test_size: spatial size per axis of the contract test input.
        base, defaults, fixed: a preset's entry (set by :func:`lowrank.preset.register_preset`,
            which also makes the class; not given directly).

    Returns:
        A decorator that registers its argument and returns it unchanged (classes that are
        ``nn.Module`` subclasses additionally record their spec in ``self.spec`` and show it
        in ``repr``).

    Raises:
        ValueError: unknown kind, a malformed name, or a name/alias already taken.
    """
    _check_kind(kind)

    def decorator(obj: Any) -> Any:
        part_name = name or obj.__name__.lower()
        for n in (part_name, *aliases):
            if not NAME_RE.fullmatch(n):
                raise ValueError(f"part name {n!r} must match [a-z][a-z0-9_]*")
            if n in _REGISTRY[kind] or n in _ALIASES[kind]:
                taken = _REGISTRY[kind].get(n) or _REGISTRY[kind][_ALIASES[kind][n]]
                raise ValueError(
                    f"{kind} {n!r} is already registered (by {taken.module}.{taken.obj.__qualname__})"
                )
        info = PartInfo(
            kind=kind,
            name=part_name,
            obj=obj,
            aliases=tuple(aliases),
            dims=tuple(dims),
            dtypes=tuple(dtypes),
            test_spec=test_spec,
            test_size=test_size,
            module=getattr(obj, "__module__", ""),
            base=base,
            defaults=dict(defaults or {}),
            fixed=dict(fixed or {}),
        )
        _REGISTRY[kind][part_name] = info
        for alias in aliases:
            _ALIASES[kind][alias] = part_name
        if isinstance(obj, type):
            obj._lowrank_part = info  # type: ignore[attr-defined]
            _record_spec(obj)
        return obj

    return decorator


def list_parts(kind: str | None = None, pattern: str = "*") -> list[str]:
    """Names of the registered parts, sorted.

    Args:
        kind: restrict to one kind; ``None`` lists every kind as ``"kind:name"``.
        pattern: an ``fnmatch`` pattern on the name.

    Returns:
        Sorted names (``"kind:name"`` when ``kind`` is None).
    """
    if kind is None:
        return sorted(f"{k}:{n}" for k in KINDS for n in _REGISTRY[k] if fnmatch.fnmatch(n, pattern))
    _check_kind(kind)
    return sorted(n for n in _REGISTRY[kind] if fnmatch.fnmatch(n, pattern))


def get_part_info(kind: str, name: str) -> PartInfo:
    """The :class:`PartInfo` of a registered part (aliases resolve to their part).

    Args:
        kind: one of :data:`KINDS`.
        name: the part's name or alias.

    Returns:
        The part's registry entry.

    Raises:
        ValueError: unknown kind or name, with the close matches and the valid names.
    """
    _check_kind(kind)
    table = _REGISTRY[kind]
    name = _ALIASES[kind].get(name, name)
    if name not in table:
        valid = sorted([*table, *_ALIASES[kind]])
        raise ValueError(
            f"unknown {kind} {name!r};{did_you_mean(name, valid)} "
            f"valid {kind} names: {', '.join(valid) or '(none registered)'}"
        )
    return table[name]


def get_part(kind: str, name: str) -> Callable[..., Any]:
    """The class or factory registered as ``name`` under ``kind``.

    Args:
        kind: one of :data:`KINDS`.
        name: the part's name or alias.

    Returns:
        The registered class or factory.

    Raises:
        ValueError: unknown kind or name, with "did you mean" and the valid names.
    """
    return get_part_info(kind, name).obj
