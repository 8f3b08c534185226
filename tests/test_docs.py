"""The docs: the registry-driven parts pages, the docs extension, the shipped recipes, the build.

The default tests build the HTML with ``-n -W`` (nitpicky, warnings are errors) in a subprocess,
without running the example gallery (``LOWRANK_DOCS_GALLERY=0``), and check what the build
promises: every registered part on its kind's page with each keyword once, every public module
with a page, every CLI subcommand in the CLI reference, no CDN (MathJax served from the site).
The ``slow`` test is the full build, as ``.ci/run`` runs it: the gallery executed (downloadable
``.py`` and ``.ipynb``), then Sphinx's doctest builder over every guide's code and output.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"

for _name in ("sphinx", "furo", "myst_parser", "sphinx_gallery", "sphinxarg"):
    pytest.importorskip(_name, reason="the docs extra is not installed: pip install -e .[docs]")
docutils_core = pytest.importorskip("docutils.core")

sys.path.insert(0, str(DOCS / "_ext"))
from lowrank_docs import canonical_name, escape_shape_stars, public_modules, reexports  # noqa: E402
from lowrank_docs.reference import (  # noqa: E402
    format_annotation,
    format_default,
    render_kind_page,
    split_args_section,
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


# ---------------------------------------------------------------- the parts pages --


def test_every_part_and_alias_is_on_its_kind_page_with_each_keyword_once():
    from lowrank_docs.reference import part_parameters

    for kind in KINDS:
        page = render_kind_page(kind)
        assert f".. _kind-{kind}:" in page
        for name in lowrank.list_parts(kind):
            info = get_part_info(kind, name)
            section = page[page.index(f".. _{kind}-{name}:") :]
            section = section[: section.index(".. auto")]
            for alias in info.aliases:
                assert f"``{alias}``" in section, (kind, alias)
            target = f"{info.obj.__module__}.{info.obj.__qualname__}"
            assert re.search(rf"^\.\. auto(class|function):: {re.escape(target)}$", page, re.M), target
            for pname, *_ in part_parameters(info.obj):
                # one table row per keyword: its name once, and no second defaults listing
                assert section.count(f"   * - ``{pname}``") == 1, (kind, name, pname)
            assert "every default written out" not in section


def test_a_part_registered_later_appears_without_editing_the_docs(tmp_path):
    @register("block", "docs_probe_block", aliases=("docs_probe_alias",), dims=(2, 3))
    class DocsProbe(nn.Module):
        """A probe block for the docs test: ``(B, C, *S) -> (B, C, *S)``.

        Args:
            channels: channels ``C``.
            spatial_dims: 2 or 3.
            depth: how deep, over
                two lines.
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
        assert "   * - ``depth``\n     - ``int``\n     - ``4``\n     - how deep, over two lines." in section
        assert '   * - ``mode``\n     - ``str``\n     - ``"fast"``\n     - which mode.' in section
        assert "     - (given by the caller)\n     - channels ``C``." in section
        assert "A probe block for the docs test" in page  # the summary table
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


def test_args_sections_split_off_with_their_descriptions():
    lines = [
        "Summary.",
        "",
        "Args:",
        "    rank: the rank ``R``; an int,",
        "        or a fraction of ``C_in``.",
        "    iters (int): iterations.",
        "    **kwargs: passed on.",
        "",
        "Returns:",
        "    The layer.",
    ]
    rest, found = split_args_section(lines)
    assert found == {
        "rank": "the rank ``R``; an int, or a fraction of ``C_in``.",
        "iters": "iterations.",
        "kwargs": "passed on.",
    }
    assert rest == ["Summary.", "", "Returns:", "    The layer."]
    assert split_args_section(["Parameters:", "    weight: learnable."]) == (
        ["Parameters:", "    weight: learnable."],
        {},
    )  # "Parameters:" lists a module's tensors in this project, not its arguments


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


def test_references_resolve_to_where_objects_are_defined():
    assert canonical_name("lowrank.build_block") == "lowrank.build.build_block"
    assert canonical_name("lowrank.train.TrainConfig") == "lowrank.train.config.TrainConfig"
    assert canonical_name("lowrank.train.load_model") == "lowrank.train.predict.load_model"
    assert canonical_name("lowrank.SpecError") == "lowrank.spec.SpecError"
    assert canonical_name("Spec", module="lowrank.build") == "lowrank.spec.Spec"
    assert canonical_name("lowrank.spec") == "lowrank.spec"
    assert canonical_name("lowrank.no_such_thing") is None
    assert canonical_name("torch.Tensor") is None
    found = reexports(public_modules())
    assert found["lowrank.list_parts"] == "lowrank.registry.list_parts"
    assert found["lowrank.KINDS"] == "lowrank.registry.KINDS"  # a constant: where it is assigned


# ---------------------------------------------------------------- docstring examples --


def _modules_with_examples() -> list[str]:
    import doctest
    import importlib

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


# ---------------------------------------------------------------- the shipped recipes --


def test_the_monai_bundle_example_runs_with_monais_runner(tmp_path):
    """``examples/monai_bundle`` as a user runs it: MONAI's bundle runner, in a fresh process."""
    bundle = EXAMPLES / "monai_bundle" / "configs"
    code = (
        "from monai.bundle import run; "
        f"run(config_file={str(bundle / 'inference.json')!r}, meta_file={str(bundle / 'metadata.json')!r})"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "segmentation (1, 40, 48, 36) from swin_factorizer(channels=[8, 16, 32, 64]" in result.stdout


def _load_nnunet_example():
    path = EXAMPLES / "nnunet" / "nnUNetTrainerLowrank.py"
    spec = importlib.util.spec_from_file_location("nnUNetTrainerLowrank", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_nnunet_recipe_builds_a_net_with_nnunets_output_convention():
    """The part of the nnU-Net recipe that runs without nnU-Net: the network builder."""
    example = _load_nnunet_example()
    tiny = "swin_factorizer(channels=[8, 16, 32, 64], head_dim=4, patch=4, pos_embed_size=none)"
    torch.manual_seed(0)
    net = example.build_lowrank_network(2, 3, enable_deep_supervision=True, spec=tiny)
    x = torch.randn(1, 2, 20, 24, 16)
    net.train()
    outputs = net(x)
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 20, 24, 16), (1, 3, 10, 12, 8), (1, 3, 5, 6, 4)]
    net.eval()
    with torch.no_grad():
        validation = net(x)  # nnU-Net's validation step indexes output[0] while deep supervision is on
        assert isinstance(validation, list) and len(validation) == 1
        net.deep_supervision = False  # what the trainer's set_deep_supervision_enabled(False) does
        inference = net(x)
    assert isinstance(inference, torch.Tensor) and inference.shape == (1, 3, 20, 24, 16)
    torch.testing.assert_close(inference, validation[0])
    flat = example.build_lowrank_network(2, 3, enable_deep_supervision=False, spec=tiny).train()
    assert isinstance(flat(x), torch.Tensor)
    if importlib.util.find_spec("nnunetv2") is None:
        assert example.nnUNetTrainer is None  # the trainer class needs nnU-Net; the file still imports


# ---------------------------------------------------------------- the Sphinx build --


def _sphinx(tmp_path: Path, builder: str, gallery: bool) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LOWRANK_DOCS_GALLERY": "1" if gallery else "0",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    command = [sys.executable, "-m", "sphinx", "-n", "-W", "--keep-going", "-q", "-E", "-b", builder]
    command += ["-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / builder)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)


def _check_registry_coverage(html: Path) -> None:
    for kind in KINDS:
        page = (html / "api" / "parts" / f"{kind}.html").read_text(encoding="utf-8")
        for name in lowrank.list_parts(kind):
            assert f'id="{kind}-{name.replace("_", "-")}"' in page, (kind, name)
            assert f'<span class="pre">{name}</span>' in page, (kind, name)
            for alias in get_part_info(kind, name).aliases:
                assert f'<span class="pre">{alias}</span>' in page, (kind, alias)


def _check_offline(html: Path) -> None:
    """No page loads anything from the network: scripts, styles and fonts come from the site."""
    pages = list(html.rglob("*.html"))
    assert len(pages) > 50
    remote = re.compile(r"<(?:script|link|img)\b[^>]*?(?:src|href)=[\"'](?:https?:)?//", re.I)
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert not remote.search(text), (page, remote.search(text).group(0))
        assert "cdn.jsdelivr" not in text and "mathjax@" not in text, page
    rank = (html / "guides" / "rank.html").read_text(encoding="utf-8")
    assert re.search(r'<script[^>]+src="\.\./_static/mathjax/tex-chtml\.js', rank)  # the math is there
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert (html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def _check_cli_and_modules(html: Path) -> None:
    from lowrank.cli import build_parser

    cli = (html / "cli.html").read_text(encoding="utf-8")
    cli_text = re.sub(r"<[^>]+>", "", cli)
    parser = build_parser()
    names = _subcommands(parser)
    assert {"list", "show", "train", "predict", "evaluate"} <= set(names)
    for name in names:  # commands added to the parser later appear without editing the page
        assert re.search(rf'<h\d>{name}<a class="headerlink"', cli), name
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        for action in sub._actions:
            for flag in action.option_strings:
                if flag.startswith("--"):
                    assert re.search(rf"(^|[\s,]){re.escape(flag)}\b", cli_text, re.M), (name, flag)
    for module in public_modules():
        assert (html / "api" / "generated" / f"{module}.html").is_file(), module
    spec_page = (html / "spec.html").read_text(encoding="utf-8")
    assert "positional arguments are not accepted in nmf(...)" in spec_page  # the outputs shown
    config = (html / "api" / "generated" / "lowrank.train.config.html").read_text(encoding="utf-8")
    default = config[config.index('id="lowrank.train.config.DEFAULT_SPEC"') :][:3000]
    assert "The default net" in default and "Type:" not in re.sub(r"<[^>]+>", "", default)


def test_docs_build_nitpicky_without_warnings(tmp_path):
    result = _sphinx(tmp_path, "html", gallery=False)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    html = tmp_path / "html"
    _check_registry_coverage(html)
    _check_offline(html)
    _check_cli_and_modules(html)
    for page in ("installation", "cli", "citing", "changelog", "benchmarks", "contributing"):
        assert (html / f"{page}.html").is_file(), page
    for page in ("datasets", "monai_bundle", "nnunet", "export", "kernels", "errors"):
        assert (html / "guides" / f"{page}.html").is_file(), page


@pytest.mark.slow
def test_docs_full_build_runs_the_gallery_and_every_guide_example(tmp_path):
    """What .ci/run runs: the HTML with the gallery executed, then the doctest builder."""
    result = _sphinx(tmp_path, "html", gallery=True)
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    html = tmp_path / "html"
    _check_offline(html)
    examples = sorted(p.stem for p in EXAMPLES.glob("plot_*.py"))
    assert len(examples) >= 5
    for name in examples:
        page = (html / "auto_examples" / f"{name}.html").read_text(encoding="utf-8")
        assert "sphx-glr-script-out" in page, name  # it ran and printed
        assert list((html / "_downloads").rglob(f"{name}.py")), name
        assert list((html / "_downloads").rglob(f"{name}.ipynb")), name
    assert list((html / "_images").glob("sphx_glr_plot_component_maps_*.png"))
    result = _sphinx(tmp_path, "doctest", gallery=False)
    assert result.returncode == 0, f"the guides' examples failed:\n{result.stdout}\n{result.stderr}"
