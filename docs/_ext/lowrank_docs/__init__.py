"""Sphinx extension of the lowrank docs: the registry-driven parts reference and three hooks.

- Before Sphinx reads the sources, it writes the parts reference (one page per kind, from the
  live registry) into ``docs/api/parts/`` (:mod:`.reference`), and tells autosummary's module
  template which classes are registered parts (documented on their kind's page, so the module
  page links to them instead of documenting them twice).
- Docstrings use plain-text shape notation such as ``(*batch, M, N)``; a stray ``*`` there
  would start reStructuredText emphasis, so it is escaped before autodoc renders it. The keyword
  descriptions of a registered part are in its kind page's table, so its docstring's ``Args:``
  section is not repeated under it.
- A cross-reference to a re-exported name (``lowrank.build_block``,
  ``lowrank.train.TrainConfig``) or a short name in a docstring (``Spec`` in
  :mod:`lowrank.build`) resolves to where the object is documented.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from .reference import registered_targets, split_args_section, write_reference

__all__ = ["setup", "escape_shape_stars", "canonical_name", "public_modules", "reexports", "shadowed_modules"]

GENERATED = "api/parts"

# a '*' that starts a shape token: '(*batch, M)', '[*S]', ', *S)' -> escaped
_SHAPE_STAR = re.compile(r"(?<![\w*`\\])\*(?=[A-Za-z_][\w']*\s*[,)\]])")
# '|x|' (an absolute value or norm in plain text) would be a substitution reference
_PIPE = re.compile(r"(?<!\\)\|")


def _escape_plain(text: str) -> str:
    return _PIPE.sub(r"\\|", _SHAPE_STAR.sub(r"\\*", text))


def escape_shape_stars(lines: list[str]) -> list[str]:
    """Escape shape-notation stars and plain-text pipes outside literals and code.

    ``(*batch, M, N)`` would start emphasis and ``max |x|`` a substitution reference; both are
    meant as plain text in the docstrings of this project.

    Args:
        lines: docstring lines (reStructuredText after napoleon).

    Returns:
        The lines, with such stars and pipes escaped outside ````literals````, roles, doctest
        lines, literal blocks and table lines (starting with ``|`` or ``+``).
    """
    out = []
    literal_indent: int | None = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if not line.strip() or indent > literal_indent:
                out.append(line)
                continue
            literal_indent = None
        stripped = line.strip()
        if stripped.startswith((">>>", "...", "|", "+", ".. code")):
            out.append(line)
            if stripped.startswith(".. code"):
                literal_indent = indent
            continue
        pieces = line.split("``")
        for i in range(0, len(pieces), 2):
            # single-backtick roles/literals: leave them alone
            sub = re.split(r"(`[^`]*`)", pieces[i])
            pieces[i] = "".join(s if s.startswith("`") else _escape_plain(s) for s in sub)
        out.append("``".join(pieces))
        if stripped.endswith("::"):
            literal_indent = indent
    return out


def _before_napoleon(app, what, name, obj, options, lines: list[str]) -> None:
    """Runs before napoleon: a part's ``Args:`` section is its kind page's table, not repeated."""
    if what == "class" and getattr(obj, "_lowrank_part", None) is not None and not options.get("no-index"):
        lines[:] = split_args_section(lines)[0]


def _process_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    if what in ("attribute", "data", "property"):
        _undo_prose_type(lines)
    lines[:] = escape_shape_stars(lines)


def _undo_prose_type(lines: list[str]) -> None:
    """napoleon reads "The default net: a small ..." as type "The default net": put it back."""
    for i, line in enumerate(lines):
        if line.startswith(":type: ") and " " in line[7:].strip() and not re.search(r"[\[|`]", line[7:]):
            prose = line[7:].strip()
            del lines[i]
            if i > 0 and not lines[i - 1].strip():
                del lines[i - 1]
            first = next((j for j, text in enumerate(lines) if text.strip()), None)
            if first is None:
                lines.append(prose)
            else:
                lines[first] = f"{prose}: {lines[first].lstrip()}"
            return


def _process_signature(app, what, name, obj, options, signature, return_annotation):
    """A registered part's keywords are in its kind page's table: no second signature."""
    if what == "class" and getattr(obj, "_lowrank_part", None) is not None and signature:
        return "", None
    return None


def canonical_name(target: str, module: str | None = None, cls: str | None = None) -> str | None:
    """Where ``target`` is defined: ``lowrank.build_block`` -> ``lowrank.build.build_block``.

    Args:
        target: a dotted or short name from a cross-reference.
        module: the current module of the reference (short names are looked up there).
        cls: the current class of the reference.

    Returns:
        The dotted name of the object where it is defined (for classes and functions) or where
        it was found (for data), or ``None`` when ``target`` names nothing in ``lowrank``.
    """
    candidates = [target]
    if module:
        if cls:
            candidates.append(f"{module}.{cls}.{target}")
        candidates.append(f"{module}.{target}")
    for candidate in candidates:
        if not candidate.startswith("lowrank"):
            continue
        parts = candidate.split(".")
        for i in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            owner, found = obj, True
            for attr in parts[i:]:
                owner, obj = obj, getattr(obj, attr, None)
                if obj is None:
                    found = False
                    break
            if not found:
                break
            if inspect.isclass(obj) or inspect.isfunction(obj):
                return f"{obj.__module__}.{obj.__qualname__}"
            if inspect.ismodule(obj):
                return obj.__name__
            if inspect.isclass(owner) or inspect.ismodule(owner):
                base = (
                    owner.__name__ if inspect.ismodule(owner) else f"{owner.__module__}.{owner.__qualname__}"
                )
                return f"{base}.{parts[-1]}"
            return candidate
    return None


_SHORT_NAMES: dict[str, set[str]] = {}
_DATA_HOMES: dict[str, str] = {}


def _data_homes() -> dict[str, str]:
    if not _DATA_HOMES:
        _DATA_HOMES.update({k: v for k, v in reexports(public_modules()).items() if v})
    return _DATA_HOMES


def short_name_index() -> dict[str, set[str]]:
    """Short name -> where classes and functions of that name are defined, over all of lowrank."""
    if not _SHORT_NAMES:
        for name in sorted(_all_module_names()):
            if name.rsplit(".", 1)[-1] == "__main__":
                continue
            try:
                module = importlib.import_module(name)
            except Exception:  # an optional backend's module (Triton) without its package
                continue
            for attr, obj in vars(module).items():
                if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__.startswith("lowrank"):
                    _SHORT_NAMES.setdefault(attr, set()).add(f"{obj.__module__}.{obj.__qualname__}")
    return _SHORT_NAMES


def _missing_reference(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    real = canonical_name(target, node.get("py:module"), node.get("py:class"))
    if real is None and not target.startswith("lowrank"):
        # a short name in a summary shown out of its module (autosummary tables), or a name the
        # module does not import (``UNetSkeleton.stages``)
        head, _, rest = target.partition(".")
        homes = short_name_index().get(head, set())
        real = next(iter(homes)) + (f".{rest}" if rest else "") if len(homes) == 1 else None
    if real is not None:
        real = _data_homes().get(real, real)  # a constant re-exported by a module: where it is defined
    domain = env.domains["py"]
    if real and real != target:
        for typ in (node["reftype"], "obj"):
            resolved = domain.resolve_xref(
                env, node.get("refdoc", ""), app.builder, typ, real, node, contnode
            )
            if resolved is not None:
                return resolved
    # a private implementation class (a base class or a type hint) is not documented: plain text
    name = real or target
    if any(p.startswith("_") and not p.startswith("__") for p in name.split(".")):
        return contnode
    # an autosummary table shows other objects' summaries out of their module: a short name there
    # that names several objects is left unlinked (it is linked on the object's own page)
    in_table = "<autosummary>" in (node.source or "")
    if in_table and "." not in target and len(short_name_index().get(target, ())) > 1:
        return contnode
    return None


def public_modules(package: str = "lowrank") -> list[str]:
    """Every importable public module of ``package`` (names starting with ``_`` left out)."""
    import pkgutil

    root = importlib.import_module(package)
    names = [package]
    for module in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if not any(part.startswith("_") for part in module.name.split(".")):
            names.append(module.name)
    return sorted(set(names))


def reexports(modules: list[str]) -> dict[str, str]:
    """``module.name`` -> the dotted name where it is defined, for every re-exported public name.

    A class or function is defined in its ``__module__``; a constant in the module whose source
    assigns it (``KINDS = ...``).
    """
    found: dict[str, str] = {}
    loaded = {name: importlib.import_module(name) for name in modules}
    for name, module in loaded.items():
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr, None)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                home = f"{obj.__module__}.{obj.__qualname__}"
                if obj.__module__ != name:
                    # a private module's objects are not documented: listed without a link
                    private = any(p.startswith("_") for p in obj.__module__.split("."))
                    found[f"{name}.{attr}"] = "" if private else home
            elif obj is not None and not inspect.ismodule(obj):
                assign = re.compile(rf"^{re.escape(attr)}\s*[:=]", re.M)
                for other, module2 in loaded.items():
                    if other != name and getattr(module2, attr, None) is obj:
                        try:
                            source = inspect.getsource(module2)
                        except (OSError, TypeError):
                            continue
                        if assign.search(source):
                            found[f"{name}.{attr}"] = f"{other}.{attr}"
                            break
    return found


def shadowed_modules(modules: list[str]) -> list[str]:
    """Modules that their package's namespace hides (``lowrank.build`` is also a function there).

    autosummary resolves such a name to the attribute, so these get a hand-written page.
    """
    hidden = []
    for name in modules:
        parent, _, child = name.rpartition(".")
        if parent and not inspect.ismodule(getattr(importlib.import_module(parent), child, None)):
            hidden.append(name)
    return hidden


def _all_module_names() -> set[str]:
    import pkgutil

    root = importlib.import_module("lowrank")
    return {"lowrank"} | {m.name for m in pkgutil.walk_packages(root.__path__, prefix="lowrank.")}


def _prefer_modules(hidden: list[str]) -> None:
    """Make autosummary import the modules in ``hidden`` as modules (see :func:`shadowed_modules`).

    autosummary reads ``lowrank.build`` as the attribute ``build`` of ``lowrank`` (the function);
    without this, such a module would get no page.
    """
    from sphinx.ext import autosummary

    original = getattr(autosummary._import_by_name, "__wrapped__", autosummary._import_by_name)

    def import_by_name(name: str, grouped_exception: bool = True):
        if name in hidden:
            module = importlib.import_module(name)
            return module, None, name
        return original(name, grouped_exception)

    import_by_name.__wrapped__ = original
    autosummary._import_by_name = import_by_name


def _config_inited(app, config) -> None:
    context = dict(config.autosummary_context or {})
    context["registered"] = sorted(registered_targets())
    modules = public_modules()
    context["canonical"] = reexports(modules)
    hidden = shadowed_modules(modules)
    _prefer_modules(hidden)
    context["hidden_modules"] = {}
    for name in hidden:  # autosummary leaves them out of their package's module list: put them back
        package, _, short = name.rpartition(".")
        context["hidden_modules"].setdefault(package, []).append(short)  # relative, as autosummary wants
    context["module_names"] = sorted(sys.modules.keys() & _all_module_names())
    config.autosummary_context = context


def _generate(app) -> None:
    if not app.config.lowrank_generate_reference:
        return
    write_reference(Path(app.srcdir) / GENERATED)


def setup(app) -> dict[str, Any]:
    """Register the event handlers."""
    app.setup_extension("sphinx.ext.autodoc")
    app.setup_extension("sphinx.ext.autosummary")
    app.add_config_value("lowrank_generate_reference", True, "env")
    app.connect("config-inited", _config_inited)
    app.connect("builder-inited", _generate, priority=400)  # before autosummary generates
    app.connect("autodoc-process-docstring", _before_napoleon, priority=400)
    app.connect("autodoc-process-docstring", _process_docstring, priority=600)
    app.connect("autodoc-process-signature", _process_signature)
    app.connect("missing-reference", _missing_reference)
    return {"version": "2", "parallel_read_safe": True, "parallel_write_safe": True}
