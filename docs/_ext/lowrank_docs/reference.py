"""Write the parts reference from the registry: one page per kind.

Everything here reads the live registry (:func:`lowrank.list_parts`,
:func:`lowrank.registry.get_part_info`, :data:`lowrank.registry.KINDS`), so a part registered
later appears in the docs without editing them. Each part gets one table: every keyword once,
with its type, its default (in spec form) and its description (from the docstring's ``Args:``).
The pages are reStructuredText written into ``docs/api/parts/`` (not versioned) before Sphinx
reads the sources; the per-module pages are autosummary's.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from .formatting import (
    escape_rst,
    format_annotation,
    format_default,
    part_parameters,
    spec_value,
)

__all__ = [
    "KIND_TITLES",
    "escape_rst",
    "format_annotation",
    "format_default",
    "spec_value",
    "part_parameters",
    "render_kind_page",
    "render_reference_index",
    "registered_targets",
    "split_args_section",
    "write_reference",
]

#: Page titles per kind (a kind added to the registry later gets a title from its name).
KIND_TITLES: dict[str, str] = {
    "solver": "Factorization layers",
    "update": "Update rules",
    "init": "Initializations",
    "matricize": "Matricizers",
    "block": "Blocks",
    "conv": "Convolutions",
    "net": "Networks",
}

#: The builder a user calls per kind, with a minimal call (``NAME`` is replaced by the part name).
_BUILD_CALL: dict[str, str] = {
    "solver": 'build_solver("NAME")',
    "update": 'build_solver("nmf(update=NAME)")',
    "init": 'build_solver("nmf(init=NAME)")',
    "matricize": 'build_matricize("NAME", channels=32, spatial_dims=3)',
    "block": 'build_block("NAME", channels=32, spatial_dims=3)',
    "conv": 'build_conv("NAME", in_channels=16, out_channels=32, kernel_size=3, spatial_dims=3)',
    "net": 'build_net("NAME", in_channels=4, out_channels=3, spatial_dims=3)',
}

#: The forward contract per kind (see CONTRIBUTING.md).
_FORWARD: dict[str, str] = {
    "solver": "``forward(x: (*batch, M, N), mask: (*batch, N) | None = None) -> (*batch, M, N)``: "
    "the rank-R reconstruction ``U Vᵀ`` of each matrix.",
    "update": "Used by the factorization layers through their ``update=`` keyword.",
    "init": "Used by the factorization layers through their ``init=`` keyword; the layer passes ``rank``.",
    "matricize": "``forward(x: (B, C, *S)) -> (matrices: (B', M, N), ctx)`` and "
    "``inverse(matrices, ctx) -> (B, C, *S)``, exact for every input size.",
    "block": "``forward(x: (B, C, *S)) -> (B, C, *S)``.",
    "conv": "``forward(x: (B, C_in, *S)) -> (B, C_out, *S')``.",
    "net": "``forward(x: (B, C_in, *S)) -> (B, C_out, *S)`` in eval mode; with deep supervision, a "
    "list of logits (highest resolution first) in training mode.",
}


def _dtype_names(dtypes) -> str:
    return ", ".join(f"``{str(d).removeprefix('torch.')}``" for d in dtypes)


def _docstring_target(info) -> tuple[str, str]:
    """The autodoc directive and dotted path documenting a part's object."""
    obj = info.obj
    directive = "autoclass" if isinstance(obj, type) else "autofunction"
    module = getattr(obj, "__module__", None) or info.module
    return directive, f"{module}.{obj.__qualname__}"


def _heading(text: str, char: str) -> list[str]:
    return [text, char * max(len(text), 4), ""]


def _label(kind: str, name: str) -> str:
    return f"{kind}-{name}"


_ARGS_HEADER = re.compile(r"^(\s*)(Args|Arguments|Keyword Args):\s*$")
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


def split_args_section(lines: list[str]) -> tuple[list[str], dict[str, str]]:
    """Split a Google-style docstring's ``Args:`` section off.

    Args:
        lines: the docstring's lines (as :func:`inspect.getdoc` or autodoc gives them).

    Returns:
        ``(other_lines, descriptions)``: the docstring without its ``Args:`` section, and each
        argument's description (continuation lines joined with spaces).
    """
    out: list[str] = []
    descriptions: dict[str, str] = {}
    i = 0
    while i < len(lines):
        match = _ARGS_HEADER.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = len(match.group(1))
        i += 1
        current = None
        while i < len(lines):
            line = lines[i]
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            arg = _ARG_LINE.match(line.strip())
            item_indent = len(line) - len(line.lstrip())
            if arg and (current is None or item_indent <= descriptions[current][1]):
                current = arg.group(1).lstrip("*")
                descriptions[current] = (arg.group(2).strip(), item_indent)
            elif current is not None and line.strip():
                text, ind = descriptions[current]
                descriptions[current] = ((text + " " + line.strip()).strip(), ind)
            i += 1
    return out, {name: text for name, (text, _) in descriptions.items()}


def _part_descriptions(obj) -> dict[str, str]:
    """Each keyword's description: the class's ``Args:``, then its bases' for the keywords it
    takes from them (``**shared``, :func:`lowrank.registry.inherit_signature`)."""
    if isinstance(obj, type):
        found: dict[str, str] = {}
        for cls in reversed([c for c in obj.__mro__ if c is obj or c.__module__.startswith("lowrank")]):
            found.update(_own_descriptions(cls))
        return found
    return _own_descriptions(obj)


def _own_descriptions(obj) -> dict[str, str]:
    doc = inspect.getdoc(obj) or ""
    found = split_args_section(doc.splitlines())[1]
    if isinstance(obj, type) and obj.__init__ is not object.__init__:
        init_doc = inspect.getdoc(obj.__init__) or ""
        if init_doc and init_doc != doc:
            found = {**split_args_section(init_doc.splitlines())[1], **found}
    return found


def _table_text(text: str) -> str:
    """A description for a table cell: shape stars and pipes escaped, on one line."""
    from . import escape_shape_stars

    return escape_shape_stars([" ".join(text.split())])[0]


def _render_part(kind: str, name: str, seen: set[int]) -> list[str]:
    from lowrank.build import KIND_CONTEXT
    from lowrank.registry import get_part_info

    info = get_part_info(kind, name)
    context = KIND_CONTEXT.get(kind, ())
    lines = [f".. _{_label(kind, name)}:", "", *_heading(f"``{name}``", "-")]
    facts = []
    if info.aliases:
        facts.append("**aliases** " + ", ".join(f"``{a}``" for a in info.aliases))
    if kind in ("matricize", "block", "conv", "net") or info.dims != (1, 2, 3):
        facts.append("**spatial dims** " + ", ".join(str(d) for d in info.dims))
    facts.append("**dtypes** " + _dtype_names(info.dtypes))
    lines += [" · ".join(facts), ""]
    if info.summary:
        lines += [escape_rst(info.summary), ""]
    if info.base is not None:
        from lowrank.preset import preset_spec

        lines += [
            f"A preset of :ref:`{info.base} <{_label(kind, info.base)}>`: ``{name}`` is "
            f"``{preset_spec(info)}``; the defaults below are the effective ones.",
            "",
        ]

    build_call = _BUILD_CALL.get(kind, f'build("{kind}", "NAME")').replace("NAME", name)
    lines += [f"Build it with ``{build_call}``."]
    if info.test_spec:
        lines[-1] += f" A small tested configuration: ``{info.test_spec}``."
    lines.append("")

    params = part_parameters(info.obj)
    descriptions = _part_descriptions(info.obj)
    if params:
        lines += [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 16 20 20 44",
            "   :class: lowrank-params",
            "",
            "   * - keyword",
            "     - type",
            "     - default",
            "     - description",
        ]
        for pname, annotation, default, pkind in params:
            if pkind == "var":
                cell_default, cell_type = "", "any keyword (``**kwargs``)"
            else:
                cell_type = format_annotation(annotation) or ""
                cell_default = format_default(default, annotation)
            if pname in context:
                cell_default = "(given by the caller)"
            description = _table_text(descriptions.get(pname, ""))
            lines += [
                f"   * - ``{pname}``",
                f"     - {cell_type}",
                f"     - {cell_default}",
                f"     - {description}",
            ]
        lines.append("")

    directive, target = _docstring_target(info)
    lines += [f".. {directive}:: {target}"]
    if directive == "autoclass":
        lines += ["   :members:", "   :show-inheritance:"]
    if id(info.obj) in seen:
        lines += ["   :no-index:"]
    seen.add(id(info.obj))
    lines.append("")
    return lines


def render_kind_page(kind: str, seen: set[int] | None = None) -> str:
    """The reStructuredText page of one kind: a summary table and a section per part.

    Args:
        kind: a key of :data:`lowrank.registry.KINDS`.
        seen: ids of objects already documented on another page (they get ``:no-index:``).

    Returns:
        The page text.
    """
    from lowrank.build import KIND_CONTEXT
    from lowrank.registry import KINDS, get_part_info, list_parts

    seen = set() if seen is None else seen
    names = list_parts(kind)
    title = KIND_TITLES.get(kind, kind.replace("_", " ").capitalize() + "s")
    lines = [
        ".. This page is generated from the registry by docs/_ext/lowrank_docs/reference.py.",
        "",
        f".. _kind-{kind}:",
        "",
        *_heading(f"{title} (``{kind}``)", "="),
        escape_rst(KINDS[kind][0].upper() + KINDS[kind][1:]) + ".",
        "",
    ]
    if kind in _FORWARD:
        lines += [_FORWARD[kind], ""]
    context = KIND_CONTEXT.get(kind, ())
    if context:
        lines += [
            "The caller supplies "
            + ", ".join(f"``{c}``" for c in context)
            + " (they are never part of the recorded spec). ",
            "",
        ]
    if not names:
        lines += [f"No ``{kind}`` part is registered yet.", ""]
        return "\n".join(lines)
    lines += [
        f"{len(names)} registered: every name below is accepted wherever a ``{kind}`` spec is.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 22 18 48 12",
        "   :class: lowrank-parts",
        "",
        "   * - name",
        "     - aliases",
        "     - summary",
        "     - dims",
    ]
    for name in names:
        info = get_part_info(kind, name)
        aliases = ", ".join(f"``{a}``" for a in info.aliases)
        lines += [
            f"   * - :ref:`{name} <{_label(kind, name)}>`",
            f"     - {aliases}",
            f"     - {escape_rst(info.summary)}",
            f"     - {', '.join(str(d) for d in info.dims)}",
        ]
    lines.append("")
    for name in names:
        lines += _render_part(kind, name, seen)
    return "\n".join(lines)


def render_reference_index(kinds: list[str]) -> str:
    """The reference landing page: a summary table and a toctree of the kind pages.

    Args:
        kinds: the kinds, in page order.

    Returns:
        The page text.
    """
    from lowrank.registry import KINDS, list_parts

    lines = [
        ".. This page is generated by docs/_ext/lowrank_docs/reference.py.",
        "",
        ".. _parts-reference:",
        "",
        *_heading("Parts reference", "="),
        "Every part in the registry, one page per kind, generated from "
        ":func:`lowrank.list_parts` at build time. ``lowrank list`` prints the same on the "
        "command line.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 16 44 40",
        "",
        "   * - kind",
        "     - what they are",
        "     - parts",
    ]
    for kind in kinds:
        names = list_parts(kind)
        links = ", ".join(f":ref:`{n} <{_label(kind, n)}>`" for n in names) or "(none yet)"
        lines += [
            f"   * - :ref:`{kind} <kind-{kind}>`",
            f"     - {escape_rst(KINDS[kind])}",
            f"     - {links}",
        ]
    lines += ["", ".. toctree::", "   :hidden:", "", *(f"   {kind}" for kind in kinds)]
    lines += [
        "",
        "The Python API of every module is in the :doc:`Python API </api/index>`.",
        "",
    ]
    return "\n".join(lines)


def _write(path: Path, text: str) -> bool:
    """Write ``text`` unless the file already holds it (keeps incremental builds incremental)."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True


def registered_targets() -> set[str]:
    """The dotted paths of every registered part's class or factory (documented on kind pages)."""
    from lowrank.registry import KINDS, get_part_info, list_parts

    list_parts()  # imports the built-in parts
    return {_docstring_target(get_part_info(kind, name))[1] for kind in KINDS for name in list_parts(kind)}


def write_reference(outdir: str | Path) -> list[Path]:
    """Write the parts reference into ``outdir``.

    Args:
        outdir: the folder (``docs/api/parts``); stale pages in it are removed.

    Returns:
        The pages written (every page, changed or not).
    """
    from lowrank.registry import KINDS, list_parts

    outdir = Path(outdir)
    list_parts()  # imports the built-in parts
    kinds = list(KINDS)
    seen: set[int] = set()
    pages: dict[Path, str] = {outdir / f"{kind}.rst": render_kind_page(kind, seen) for kind in kinds}
    pages[outdir / "index.rst"] = render_reference_index(kinds)
    for path, text in pages.items():
        _write(path, text)
    for stale in outdir.rglob("*.rst"):
        if stale not in pages:
            stale.unlink()
    return list(pages)
