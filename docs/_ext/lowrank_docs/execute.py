"""The ``lowrank-exec`` directive: run a code block at build time and show its real output.

Every block of a page runs in one namespace (like a notebook), in page order. The output shown
is what the code printed, plus the ``repr`` of a final expression. A block that raises fails the
build (a Sphinx warning, an error under ``-W``) unless the exception is expected with
``:raises: SpecError``; then its message is shown the way Python prints it. Set
``LOWRANK_DOCS_EXECUTE=0`` (or the config value ``lowrank_execute = False``) to render the code
without running it (a fast preview build; switching it re-reads every page).

Usage::

    .. lowrank-exec::
       :raises: SpecError

       parse_spec("nmf(1)")

Options: ``:raises: Name[, Name]`` (expected exception classes, by name), ``:hide-code:``,
``:hide-output:``, ``:figure: name.png`` (save the current matplotlib figure and show it),
``:figwidth: 80%``, ``:requires: solver:cd, module:lowrank.train`` (registered parts and
importable modules the code needs: without them the code is shown, not run, with a note; so
a guide written ahead of a part does not break the build).

The code can call ``show_image(path, width=None)`` to show a PNG it wrote (a training report's
figure, say) below its output.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

__all__ = [
    "ExecDirective",
    "execution_enabled",
    "missing_requirements",
    "run_code",
    "reset_namespace",
    "FIGURE_DIR",
]

logger = logging.getLogger(__name__)

#: Figures are written here, relative to the source folder (not versioned).
FIGURE_DIR = "api/generated/figures"

_NAMESPACES: dict[str, dict[str, Any]] = {}


def execution_enabled() -> bool:
    """Whether ``lowrank-exec`` blocks run (``LOWRANK_DOCS_EXECUTE`` is not ``0``)."""
    return os.environ.get("LOWRANK_DOCS_EXECUTE", "1").lower() not in ("0", "false", "no")


def reset_namespace(docname: str) -> None:
    """Forget the namespace of ``docname`` (its blocks run afresh on the next read)."""
    _NAMESPACES.pop(docname, None)


def run_code(
    code: str, namespace: dict[str, Any], filename: str = "<docs>"
) -> tuple[str, BaseException | None]:
    """Execute ``code`` in ``namespace`` and capture what it prints.

    Args:
        code: Python source; if its last statement is an expression, its ``repr`` is printed
            (unless it is ``None``), as in an interactive session.
        namespace: globals, shared by the blocks of one page.
        filename: the name shown in tracebacks.

    Returns:
        ``(output, exception)``: the captured stdout/stderr and warnings, and the exception
        the code raised (``None`` if it ran through).
    """
    tree = ast.parse(code, filename=filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    buffer = io.StringIO()
    error = None
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                exec(compile(tree, filename, "exec"), namespace)
                if last is not None:
                    value = eval(compile(last, filename, "eval"), namespace)
                    if value is not None:
                        print(repr(value))
            except BaseException as err:
                error = err
    output = buffer.getvalue()
    for w in caught:
        if issubclass(w.category, DeprecationWarning):
            continue
        output += f"{w.category.__name__}: {w.message}\n"
    return output, error


def missing_requirements(requires: str) -> list[str]:
    """The requirements in ``requires`` that this installation lacks.

    Args:
        requires: comma-separated ``kind:name`` (a registered part) or ``module:dotted.name``
            (an importable module).

    Returns:
        The missing ones, as written.
    """
    import importlib

    from lowrank import list_parts

    missing = []
    for item in (r.strip() for r in requires.split(",")):
        if not item:
            continue
        kind, _, name = item.partition(":")
        if kind == "module":
            try:
                importlib.import_module(name)
            except ImportError:
                missing.append(item)
        elif name not in list_parts(kind) and not _is_alias(kind, name):
            missing.append(item)
    return missing


def _is_alias(kind: str, name: str) -> bool:
    from lowrank.registry import get_part_info

    try:
        get_part_info(kind, name)
    except ValueError:
        return False
    return True


def _format_exception(error: BaseException) -> str:
    lines = traceback.format_exception_only(type(error), error)
    return "Traceback (most recent call last):\n  ...\n" + "".join(lines)


class ExecDirective(SphinxDirective):
    """Run the content as Python at build time; show the code and its output."""

    has_content = True
    option_spec = {
        "raises": directives.unchanged_required,
        "hide-code": directives.flag,
        "hide-output": directives.flag,
        "figure": directives.unchanged_required,
        "figwidth": directives.unchanged_required,
        "requires": directives.unchanged_required,
    }

    def run(self) -> list[nodes.Node]:
        code = "\n".join(self.content)
        docname = self.env.docname
        result: list[nodes.Node] = []
        if "hide-code" not in self.options:
            block = nodes.literal_block(code, code, language="python")
            block["classes"].append("lowrank-exec-code")
            result.append(block)
        if not self.config.lowrank_execute:
            return result
        missing = missing_requirements(self.options.get("requires", ""))
        if missing:
            logger.info("lowrank-exec: not run, missing %s", ", ".join(missing), location=self.get_location())
            note = nodes.note()
            note += nodes.paragraph(
                text="This example was not run when these docs were built: it needs "
                + ", ".join(missing)
                + ", which this installation does not have."
            )
            return [*result, note]
        namespace = _NAMESPACES.setdefault(docname, {"__name__": f"docs.{docname.replace('/', '.')}"})
        source, line = self.get_source_info()
        images: list[tuple[str, str | None]] = []
        namespace["show_image"] = lambda path, width=None: images.append((str(path), width))
        start = time.perf_counter()
        output, error = run_code(code, namespace, filename=f"{source}:{line}")
        elapsed = time.perf_counter() - start
        if elapsed > 5:
            logger.info("lowrank-exec: block at %s:%s ran %.1f s", source, line, elapsed)
        expected = [n.strip() for n in self.options.get("raises", "").split(",") if n.strip()]
        if error is not None:
            names = {cls.__name__ for cls in type(error).__mro__}
            if expected and names.intersection(expected):
                output += _format_exception(error)
            else:
                detail = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                logger.warning(
                    "lowrank-exec: the code block raised %s: %s\n%s",
                    type(error).__name__,
                    error,
                    detail,
                    location=(docname, line),
                )
                output += _format_exception(error)
        elif expected:
            logger.warning(
                "lowrank-exec: the code block was expected to raise %s but did not",
                " or ".join(expected),
                location=(docname, line),
            )
        if output.strip() and "hide-output" not in self.options:
            text = output.rstrip("\n")
            block = nodes.literal_block(text, text, language="text")
            block["classes"].append("lowrank-exec-output")
            result.append(block)
        if "figure" in self.options:
            result += self._figure(docname, line)
        for path, width in images:
            result += self._copy_image(Path(path), width, docname, line)
        return result

    def _copy_image(self, path: Path, width: str | None, docname: str, line: int) -> list[nodes.Node]:
        import shutil

        if not path.is_file():
            logger.warning("lowrank-exec: show_image(%r): no such file", str(path), location=(docname, line))
            return []
        folder = Path(self.env.srcdir) / FIGURE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{docname.replace('/', '-')}-{path.name}"
        shutil.copyfile(path, folder / name)
        image = nodes.image(uri=f"/{FIGURE_DIR}/{name}", alt=path.name)
        if width:
            image["width"] = width
        figure = nodes.figure("", image)
        figure["classes"].append("lowrank-exec-figure")
        return [figure]

    def _figure(self, docname: str, line: int) -> list[nodes.Node]:
        import matplotlib.pyplot as plt

        name = self.options["figure"]
        if not plt.get_fignums():
            logger.warning("lowrank-exec: no matplotlib figure to save as %s", name, location=(docname, line))
            return []
        folder = Path(self.env.srcdir) / FIGURE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        plt.gcf().savefig(folder / name, dpi=110, bbox_inches="tight")
        plt.close("all")
        image = nodes.image(uri=f"/{FIGURE_DIR}/{name}", alt=name)
        if "figwidth" in self.options:
            image["width"] = self.options["figwidth"]
        figure = nodes.figure("", image)
        figure["classes"].append("lowrank-exec-figure")
        return [figure]
