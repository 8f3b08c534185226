"""Sphinx extension of the lowrank docs.

- Before Sphinx reads the sources, it writes the parts reference (one page per kind, from the
  live registry) and one page per module into ``docs/api/generated/``, and the benchmark
  tables (from ``bench/README*.md``) into ``docs/api/generated/benchmarks.inc`` and
  ``CONTRIBUTING.md`` into ``docs/api/generated/contributing.inc``.
- ``lowrank-exec``: code blocks run at build time, shown with their real output
  (:mod:`.execute`).
- Docstrings use plain-text shape notation such as ``(*batch, M, N)``; a stray ``*`` there
  would start reStructuredText emphasis, so it is escaped before autodoc renders it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .execute import ExecDirective, execution_enabled, reset_namespace
from .markdown import benchmark_include, markdown_to_rst
from .reference import write_reference

__all__ = ["setup", "escape_shape_stars"]

GENERATED = "api/generated"

#: Modules with a hand-written page (document name), linked from the reference index.
HANDWRITTEN = {
    "lowrank": "/api/lowrank",
    "lowrank.spec": "/api/spec",
    "lowrank.build": "/api/build",
    "lowrank.registry": "/api/registry",
}

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


def _process_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    lines[:] = escape_shape_stars(lines)


def _process_signature(app, what, name, obj, options, signature, return_annotation):
    """Registered parts: show the signature without the (long) spec type hints."""
    if what == "class" and getattr(obj, "_lowrank_part", None) is not None and signature:
        import inspect

        try:
            sig = inspect.signature(obj.__init__)
        except (TypeError, ValueError):
            return None
        params = [p.replace(annotation=inspect.Parameter.empty) for p in list(sig.parameters.values())[1:]]
        return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty)), None
    return None


def _generate(app) -> None:
    if not app.config.lowrank_generate_reference:
        return
    srcdir = Path(app.srcdir)
    write_reference(srcdir / GENERATED, handwritten=HANDWRITTEN)
    bench = srcdir.parent / "bench"
    text = benchmark_include(bench)
    _write_if_changed(srcdir / GENERATED / "benchmarks.inc", text)
    contributing = srcdir.parent / "CONTRIBUTING.md"
    text = (
        markdown_to_rst(contributing.read_text(encoding="utf-8"), top_level=0, drop_title=True)
        if contributing.is_file()
        else "See ``CONTRIBUTING.md`` in the repository.\n"
    )
    _write_if_changed(srcdir / GENERATED / "contributing.inc", text)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _source_read(app, docname: str, source: list[str]) -> None:
    reset_namespace(docname)


def setup(app) -> dict[str, Any]:
    """Register the directive and the event handlers."""
    app.setup_extension("sphinx.ext.autodoc")
    app.add_config_value("lowrank_generate_reference", True, "env")
    # a config value (not only the environment variable), so that switching it re-reads every page
    app.add_config_value("lowrank_execute", execution_enabled(), "env")
    app.add_directive("lowrank-exec", ExecDirective)
    app.connect("builder-inited", _generate)
    app.connect("source-read", _source_read)
    app.connect("autodoc-process-docstring", _process_docstring)
    app.connect("autodoc-process-signature", _process_signature)
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
