"""Sphinx configuration of the lowrank docs.

Build (nitpicky, warnings are errors)::

    sphinx-build -n -W --keep-going -b html docs docs/_build/html
    sphinx-build -n -W --keep-going -b doctest docs docs/_build/doctest   # run the guides' code

The tools: myst-parser (Markdown: ``CONTRIBUTING.md``, ``bench/README.md``, the changelog),
sphinx-gallery (``examples/*.py``, run at build time, downloadable as ``.py`` and ``.ipynb``),
autosummary (one page per module), sphinx-argparse (the CLI reference, from
:func:`lowrank.cli.build_parser`), ``sphinx.ext.doctest`` (the guides' ``testcode`` blocks and
the outputs shown under them, checked by the doctest builder), sphinx-mathjax-offline (MathJax
copied into the built site: no CDN). The registry-driven parts pages are written by the small
extension in ``_ext/lowrank_docs``.

Environment variables:

- ``LOWRANK_DOCS_GALLERY=0``: do not run the gallery examples (a fast preview build; the
  example pages then show the code without outputs or figures).
- ``LOWRANK_DOCS_INTERSPHINX=1``: link to the Python, PyTorch, NumPy and MONAI docs (needs the
  network to fetch their inventories). Inventories saved as ``docs/_inv/<name>.inv`` are used
  offline instead. Without either, references to those projects are plain text.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")  # figures made at build time
os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

import lowrank  # noqa: E402

project = "lowrank"
author = "the lowrank authors"
copyright = "2026, the lowrank authors"
release = lowrank.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # the pip package's MathJax 3, served from _static/mathjax
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "sphinxarg.ext",
    "lowrank_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_inv", "Thumbs.db", ".DS_Store", "auto_examples/*.ipynb", "**/*.py.md5"]
templates_path = ["_templates"]
default_role = "code"

# -- nitpicky: every reference into lowrank must resolve --------------------------------------
nitpicky = True
# Other projects' objects resolve only with intersphinx inventories (see above); without them they
# are plain text. lowrank's own references are never ignored.
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|monai|nibabel|matplotlib|tensorly|jsonargparse|argparse)(\..*)?"),
    (r"py:.*", r"(collections\.abc|typing|pathlib|os|enum|dataclasses|contextlib|io)\..*"),
    (r"py:class", r"(Tensor|Path|Sequence|Callable|Mapping|Iterable|Iterator|Module|nn\.Module)"),
    (r"py:class", r"dict\[str"),  # a builtin type hint that autodoc splits at its comma
    (r"py:class", r"'[^']*'|\d+"),  # literal values in a docstring's type ("'bf16' | 'fp16'", "2 | 3")
]

# -- autodoc / autosummary / napoleon -------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = False  # True rewrites the live functions' __defaults__
autodoc_class_signature = "mixed"
autodoc_default_options = {"exclude-members": "extra_repr, training, dump_patches, call_super_init"}
autodoc_type_aliases = {
    name: f"lowrank.hints.{name}"
    for name in (
        "SolverSpec",
        "UpdateSpec",
        "InitSpec",
        "MatricizeSpec",
        "BlockSpec",
        "ConvSpec",
        "NetSpec",
        "LayerSpec",
    )
}
autosummary_generate = True
autosummary_imported_members = False
# ``python -m lowrank`` entry points: importing them would run the command line
autosummary_mock_imports = ["lowrank.__main__", "lowrank.train.__main__"]
autosummary_ignore_module_all = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# Constructor arguments are listed under "Args:" (CONTRIBUTING.md); "Parameters:" and "Buffers:"
# list a module's learnable tensors, so they are plain sections here, not napoleon's Args alias.
napoleon_custom_sections = ["Shapes", "Shape", "Contract", "Parameters", "Buffers", ("Example", "Examples")]
napoleon_attr_annotations = True
add_module_names = False
python_display_short_literal_types = True
# the Markdown pages included into reStructuredText ones (bench/README.md, CONTRIBUTING.md) start
# below the including page's title, at "##"
suppress_warnings = ["config.cache", "myst.header"]

# -- the guides' code: sphinx.ext.doctest ----------------------------------------------------
# Each page's blocks share one namespace, in page order, as a reader would run them.
doctest_global_setup = "import torch\ntorch.manual_seed(0)\ntorch.set_num_threads(1)\n"
doctest_test_doctest_blocks = ""  # docstring examples are run by tests/test_docs.py

# -- the gallery: examples/*.py, run at build time on the CPU --------------------------------
sphinx_gallery_conf = {
    "examples_dirs": str(HERE.parent / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",  # every plot_*.py runs; other scripts are shown only
    "plot_gallery": os.environ.get("LOWRANK_DOCS_GALLERY", "1") not in ("0", "false", "no"),
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    "show_memory": False,
    "reset_modules": ("matplotlib", "seaborn"),
    "within_subsection_order": "FileNameSortKey",
    "min_reported_time": 1,
    # the computation-times pages load jQuery and DataTables from CDNs: the site must work offline
    "write_computation_times": False,
}

# -- the CLI reference: sphinx-argparse ---------------------------------------------------------
# argparse help is plain text ("fnmatch pattern (default *)"); sphinx-argparse reads it as
# reStructuredText, where a lone "*" starts emphasis. Escape stars outside `literals`.
import re as _re  # noqa: E402

import sphinxarg.ext as _argparse_ext  # noqa: E402

_render_list = _argparse_ext.render_list


def _render_plain_help(items, markdown_help, settings=None):
    def escape(text: str) -> str:
        pieces = _re.split(r"(``.*?``|`[^`]*`)", text)
        return "".join(p if p.startswith("`") else p.replace("*", "\\*") for p in pieces)

    return _render_list([escape(i) if isinstance(i, str) else i for i in items], markdown_help, settings)


_argparse_ext.render_list = _render_plain_help

# -- intersphinx: only with the network or local inventories --------------------------------
_INVENTORIES = {
    "python": "https://docs.python.org/3",
    "torch": "https://docs.pytorch.org/docs/stable",
    "numpy": "https://numpy.org/doc/stable",
    "monai": "https://docs.monai.io/en/stable",
}
_local = {name: HERE / "_inv" / f"{name}.inv" for name in _INVENTORIES}
if os.environ.get("LOWRANK_DOCS_INTERSPHINX") == "1" or any(p.is_file() for p in _local.values()):
    extensions.append("sphinx.ext.intersphinx")
    online = os.environ.get("LOWRANK_DOCS_INTERSPHINX") == "1"
    intersphinx_mapping = {
        name: (url, str(_local[name]) if _local[name].is_file() else None)
        for name, url in _INVENTORIES.items()
        if online or _local[name].is_file()
    }
    intersphinx_timeout = 10

# -- Markdown (myst-parser) -----------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "deflist"]
myst_heading_anchors = 3

# -- HTML -----------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"lowrank {release}"
html_static_path = ["_static"]
html_css_files = ["lowrank.css"]
html_theme_options = {"navigation_with_keys": True}
pygments_style = "friendly"
pygments_dark_style = "monokai"
html_show_sourcelink = False
