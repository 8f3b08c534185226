"""The docs: the registry-generated reference, the docs extension's pieces, and the Sphinx build.

The HTML build runs Sphinx with ``-W`` (warnings are errors) in a subprocess. The default test
builds without running the guides' code (``LOWRANK_DOCS_EXECUTE=0``) and checks that every
registered part and alias is on its kind's page; the ``slow`` test is the full build, with every
``lowrank-exec`` block executed, as CI's docs job runs it.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

DOCS = Path(__file__).resolve().parents[1] / "docs"

sphinx = pytest.importorskip("sphinx", reason="the docs extra is not installed: pip install -e .[docs]")
pytest.importorskip("furo", reason="the docs extra is not installed: pip install -e .[docs]")
docutils_core = pytest.importorskip("docutils.core")

sys.path.insert(0, str(DOCS / "_ext"))
from lowrank_docs import escape_shape_stars  # noqa: E402
from lowrank_docs.execute import run_code  # noqa: E402
from lowrank_docs.markdown import benchmark_include, markdown_to_rst  # noqa: E402
from lowrank_docs.reference import (  # noqa: E402
    format_annotation,
    format_default,
    render_kind_page,
    write_reference,
)

import lowrank  # noqa: E402
from lowrank.registry import _ALIASES, _REGISTRY, KINDS, get_part_info, register  # noqa: E402


def _rst_problems(text: str) -> list[str]:
    """Parse reStructuredText with plain docutils; return its warnings/errors (level >= 2)."""
    import io

    stream = io.StringIO()
    docutils_core.publish_doctree(
        text,
        settings_overrides={"warning_stream": stream, "report_level": 2, "halt_level": 5},
    )
    return [line for line in stream.getvalue().splitlines() if line.strip()]


# ---------------------------------------------------------------- the generated reference --


def test_every_part_and_alias_is_on_its_kind_page():
    for kind in KINDS:
        page = render_kind_page(kind)
        assert f".. _kind-{kind}:" in page
        for name in lowrank.list_parts(kind):
            info = get_part_info(kind, name)
            assert f".. _{kind}-{name}:" in page, (kind, name)
            assert f"``{name}``" in page
            for alias in info.aliases:
                assert f"``{alias}``" in page, (kind, alias)
            target = f"{info.obj.__module__}.{info.obj.__qualname__}"
            assert re.search(rf"^\.\. auto(class|function):: {re.escape(target)}$", page, re.M), target


def test_a_part_registered_later_appears_without_editing_the_docs(tmp_path):
    @register("block", "docs_probe_block", aliases=("docs_probe_alias",), dims=(2, 3))
    class DocsProbe(nn.Module):
        """A probe block for the docs test: ``(B, C, *S) -> (B, C, *S)``.

        Args:
            channels: channels ``C``.
            spatial_dims: 2 or 3.
            depth: how deep.
            mode: which mode.
        """

        def __init__(self, channels: int, *, spatial_dims: int = 3, depth: int = 4, mode: str = "fast"):
            super().__init__()

    try:
        pages = write_reference(tmp_path)
        page = (tmp_path / "block.rst").read_text()
        assert tmp_path / "block.rst" in pages
        section = page[page.index(".. _block-docs_probe_block:") :]
        assert "``docs_probe_alias``" in section
        assert "**spatial dims** 2, 3" in section
        assert 'docs_probe_block(depth=4, mode="fast")' in section  # the defaults, in spec form
        assert "   * - ``depth``\n     - ``int``\n     - ``4``" in section
        assert "(given by the caller)" in section  # channels / spatial_dims are context
        assert "A probe block for the docs test" in page  # the summary table
        # the module page of the test module excludes the part (documented on the kind page)
    finally:
        del _REGISTRY["block"]["docs_probe_block"]
        del _ALIASES["block"]["docs_probe_alias"]
    assert "docs_probe_block" not in render_kind_page("block")


def test_generated_pages_are_valid_rst_without_sphinx_roles():
    """Every generated kind page parses cleanly once Sphinx-only markup is stubbed out."""
    for kind in KINDS:
        page = render_kind_page(kind)
        plain = re.sub(r":(ref|mod|class|func|code):`([^`<]*?)(?: <[^>]*>)?`", r"``\2``", page)
        plain = re.sub(r"^\.\. (auto\w+|code-block)::.*?(?=^\S|\Z)", "", plain, flags=re.M | re.S)
        plain = re.sub(r"^   :class: .*$", "", plain, flags=re.M)
        assert _rst_problems(plain) == [], kind


def test_annotations_and_defaults_read_like_specs():
    from lowrank.build import LayerSpec, SolverSpec

    assert format_annotation(SolverSpec) == ":ref:`solver spec <kind-solver>`"
    assert format_annotation(SolverSpec | None) == ":ref:`solver spec <kind-solver>` or ``None``"
    assert format_default("nmf(rank=2)", SolverSpec | None) == "``nmf(rank=2)``"
    assert "MONAI layer" in format_annotation(LayerSpec)
    assert format_annotation(int | None) == "``int | None``"
    assert format_annotation(tuple[int, ...]) == "``tuple[int, ...]``"
    assert format_default(True) == "``true``"
    assert format_default(None) == "``none``"
    assert format_default("nmf(rank=1, iters=5)", SolverSpec) == "``nmf(rank=1, iters=5)``"
    assert format_default(("group", {"group_size": 8}), LayerSpec) == "``group(group_size=8)``"
    assert format_default(torch.float32) == "``torch.float32``"


# ---------------------------------------------------------------- docstring examples --


def _modules_with_examples() -> list[str]:
    import doctest
    import importlib

    from lowrank_docs.reference import public_modules

    lowrank.list_parts()
    found = []
    for name in public_modules():
        module = importlib.import_module(name)
        tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
        if any(t.examples for t in tests):
            found.append(name)
    return found


@pytest.mark.parametrize("module_name", _modules_with_examples())
def test_docstring_examples_run(module_name):
    """Every ``>>>`` example in the package's docstrings runs and prints what it says."""
    import doctest
    import importlib

    module = importlib.import_module(module_name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny examples: one thread is fastest on a shared machine
    try:
        with torch.random.fork_rng(devices=[]):  # examples may draw from the global RNG
            torch.manual_seed(0)
            for test in doctest.DocTestFinder(exclude_empty=True).find(module, module_name):
                if test.examples:
                    runner.run(test, out=report.append)
    finally:
        torch.set_num_threads(threads)
    assert runner.failures == 0, "".join(report)


# ---------------------------------------------------------------- the extension's pieces --


def test_shape_stars_are_escaped_outside_literals_only():
    lines = [
        "Maps x: (*batch, M, N) to (B, C, *S).",
        "",
        "Literal ``(*batch, M, N)`` stays.",
        "",
        ">>> f(*args)",
        "",
        "Example::",
        "",
        "    y = g(*batch, x)",
        "",
        "Real *emphasis* stays.",
        "",
        "Scaled so that max |x| = 1.",
    ]
    out = escape_shape_stars(lines)
    assert out[0] == r"Maps x: (\*batch, M, N) to (B, C, \*S)."
    assert out[-1] == r"Scaled so that max \|x\| = 1."
    out[-1] = lines[-1]
    assert _rst_problems("\n".join(out)) != []
    out = escape_shape_stars(lines)
    assert out[1:-1] == lines[1:-1]
    assert _rst_problems("\n".join(lines)) != []  # the problem is real ...
    assert _rst_problems("\n".join(out)) == []  # ... and fixed


def test_run_code_shows_prints_the_last_value_and_exceptions():
    namespace: dict = {}
    out, err = run_code("x = 2\nprint('hi')\nx * 21", namespace)
    assert (out, err) == ("hi\n42\n", None)
    out, err = run_code("x + 1", namespace)  # blocks of a page share the namespace
    assert out == "3\n"
    out, err = run_code("from lowrank import parse_spec\nparse_spec('nmf(1)')", namespace)
    assert isinstance(err, lowrank.SpecError) and out == ""


def test_markdown_tables_code_and_headings_convert_to_clean_rst():
    md = """# Benchmarks

Machine: 2-core x86-64 CPU, torch 2.13.0, `OMP_NUM_THREADS=1`, date 2026-11-24.

## NMF rank 1

| layer | time (ms) | ratio | shape `(*batch, M, N)` |
|---|---:|---:|---|
| **ours** (gram) | 20.1 | 0.19× | (4096, 8, 512) |
| baseline_ | 103 | 1.00× | x_y |

```bash
python bench/nmf.py --size 64
```

- item with a [link](https://example.org) and *emphasis*
- second item, **bold**: `code`
  continued on a second line
  and a third.

Models:
- **ham**: one
  two

### Notes
Text with * a stray star and a | pipe, and `code that
wraps` over a line break.
"""
    rst = markdown_to_rst(md, top_level=0, drop_title=True)
    assert _rst_problems(rst) == [], rst
    assert "Benchmarks" not in rst.splitlines()[0]
    assert ".. list-table::" in rst and "     - 0.19×" in rst
    assert ".. code-block:: bash" in rst and "   python bench/nmf.py --size 64" in rst
    assert "NMF rank 1\n----------" in rst and "Notes\n~~~~~" in rst
    doctree = docutils_core.publish_doctree(rst, settings_overrides={"report_level": 5})
    text = doctree.astext()
    assert "(*batch, M, N)" in text and "baseline_" in text and "* a stray star and a | pipe" in text
    assert "- second item, **bold**: :code:`code` continued on a second line and a third." in rst
    assert "- **ham**: one two" in rst
    assert ":code:`code that wraps` over a line break." in rst


def test_benchmark_include_prefers_the_merged_readme(tmp_path):
    assert "No benchmark results" in benchmark_include(tmp_path)
    (tmp_path / "README_nmf.md").write_text("# NMF\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (tmp_path / "README_conv.md").write_text("# Convs\n\ntext\n")
    split = benchmark_include(tmp_path)
    assert split.index("Convs\n-----") < split.index("NMF\n----")
    assert _rst_problems(split) == []
    (tmp_path / "README.md").write_text("# Benchmarks\n\n## Merged\n\ntext\n")
    assert benchmark_include(tmp_path).startswith("Merged\n------")


# ---------------------------------------------------------------- the Sphinx build --


def test_exec_blocks_fail_the_build_when_they_should(tmp_path):
    """A block that raises unexpectedly, or does not raise as promised, is a build error; a
    block whose part is not registered is shown with a note instead of run."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(DOCS / '_ext')!r})\n"
        "extensions = ['lowrank_docs']\nlowrank_generate_reference = False\nhtml_theme = 'basic'\n"
    )
    (src / "index.rst").write_text(
        """Index
=====

.. toctree::

   good

.. lowrank-exec::

   1 / 0

.. lowrank-exec::
   :raises: SpecError

   print("fine")
"""
    )
    (src / "good.rst").write_text(
        """Good
====

.. lowrank-exec::

   answer = 6 * 7
   answer

.. lowrank-exec::
   :raises: SpecError

   from lowrank import parse_spec
   parse_spec("nmf(rank=1")

.. lowrank-exec::
   :requires: solver:no_such_solver

   raise RuntimeError("must not run")
"""
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-b",
        "html",
        str(src),
        str(tmp_path / "out"),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "raised ZeroDivisionError" in result.stderr
    assert "expected to raise SpecError but did not" in result.stderr
    assert "good.rst" not in result.stderr, result.stderr
    good = (tmp_path / "out" / "good.html").read_text(encoding="utf-8")
    assert "42" in good
    text = html.unescape(re.sub(r"<[^>]+>", "", good))  # Pygments versions escape quotes differently
    assert "lowrank.spec.SpecError: expected ',' or ')'" in text
    assert "not run when these docs were built" in good and "no_such_solver" in good


def _build(tmp_path: Path, execute: bool) -> Path:
    out = tmp_path / "html"
    env = {**os.environ, "LOWRANK_DOCS_EXECUTE": "1" if execute else "0", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-E",
        "-b",
        "html",
        "-d",
        str(tmp_path / "doctrees"),
        str(DOCS),
        str(out),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    return out


def _check_registry_coverage(html: Path) -> None:
    for kind in KINDS:
        page = (html / "api" / "generated" / f"{kind}.html").read_text(encoding="utf-8")
        for name in lowrank.list_parts(kind):
            assert f'id="{kind}-{name.replace("_", "-")}"' in page, (kind, name)
            assert f'<span class="pre">{name}</span>' in page, (kind, name)
            for alias in get_part_info(kind, name).aliases:
                assert f'<span class="pre">{alias}</span>' in page, (kind, alias)
    # every "kind:name" of list_parts() appears somewhere in the built HTML
    everything = "\n".join(p.read_text(encoding="utf-8") for p in (html / "api" / "generated").glob("*.html"))
    for item in lowrank.list_parts():
        assert item.split(":", 1)[1] in everything, item


def test_docs_build_without_warnings_and_cover_the_registry(tmp_path):
    html = _build(tmp_path, execute=False)
    _check_registry_coverage(html)
    assert (html / "spec.html").is_file() and (html / "benchmarks.html").is_file()


@pytest.mark.slow
def test_docs_full_build_runs_every_example(tmp_path):
    html = _build(tmp_path, execute=True)
    _check_registry_coverage(html)
    spec_page = (html / "spec.html").read_text(encoding="utf-8")
    # the grammar page shows the parser's real messages, caret included
    assert "positional arguments are not accepted in nmf(...)" in spec_page
    assert re.search(r"nmf\(1, iters=5\)\n\s+\^", spec_page)
    assert "lowrank-exec-output" in spec_page
