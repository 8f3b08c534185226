"""Sphinx configuration of the lowrank docs.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (warnings are errors).

Environment variables:

- ``LOWRANK_DOCS_EXECUTE=0``: render the guides' code without running it (fast preview).
- ``LOWRANK_DOCS_INTERSPHINX=1``: link to the Python, PyTorch, NumPy and MONAI docs (needs the
  network to fetch their inventories). Inventories saved as ``docs/_inv/<name>.inv`` are used
  offline instead. Without either, intersphinx stays off, so an offline build has no warnings.
- ``LOWRANK_DOCS_MATHJAX``: a MathJax script URL or path to use instead of the CDN default.
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
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "lowrank_docs",
]

source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_inv", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
nitpicky = False
default_role = "code"

# -- autodoc / autosummary / napoleon -------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = False  # True rewrites the live functions' __defaults__
autodoc_class_signature = "mixed"
autodoc_default_options = {"exclude-members": "extra_repr, training, dump_patches, call_super_init"}
try:  # where the part-spec type hints are defined (lowrank.hints; lowrank.build re-exports them)
    import lowrank.hints

    _HINTS = "lowrank.hints"
except ImportError:  # pragma: no cover - older layout
    _HINTS = "lowrank.build"
autodoc_type_aliases = {
    name: f"{_HINTS}.{name}"
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
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# Constructor arguments are listed under "Args:" (CONTRIBUTING.md); "Parameters:" and "Buffers:"
# list a module's learnable tensors, so they are plain sections here, not napoleon's Args alias.
napoleon_custom_sections = ["Shapes", "Shape", "Contract", "Parameters", "Buffers", ("Example", "Examples")]
napoleon_attr_annotations = True
add_module_names = False
python_display_short_literal_types = True
suppress_warnings = ["config.cache"]

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

# -- math -----------------------------------------------------------------------------------
if os.environ.get("LOWRANK_DOCS_MATHJAX"):
    mathjax_path = os.environ["LOWRANK_DOCS_MATHJAX"]

# -- HTML -----------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"lowrank {release}"
html_static_path = ["_static"]
html_css_files = ["lowrank.css"]
html_theme_options = {"navigation_with_keys": True}
pygments_style = "friendly"
pygments_dark_style = "monokai"
html_show_sourcelink = False
