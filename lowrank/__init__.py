"""lowrank: matrix and tensor factorizations as fast, trustworthy deep-learning layers.

Example:
    >>> import torch
    >>> from lowrank import build_block
    >>> block = build_block("factorizer(mixer=nmf(rank=1, iters=5), matricize=swin(patch=4, head_dim=8))", 32)
    >>> block(torch.randn(2, 32, 12, 12, 12)).shape
    torch.Size([2, 32, 12, 12, 12])
"""

# the subpackages register the built-in parts when imported
from . import blocks, convs, matricize, nets, solvers  # noqa: F401
from .build import (
    build,
    build_block,
    build_conv,
    build_matricize,
    build_net,
    build_solver,
)
from .controls import component_maps, iters_override, set_iters, skip_mixers, stage_names
from .kernels import use_kernels
from .preset import register_preset
from .registry import KINDS, get_part, list_parts, register
from .solvers.rank_selection import select_rank
from .spec import Spec, SpecError, SpecKeywordError, parse_spec

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "Spec",
    "SpecError",
    "SpecKeywordError",
    "__version__",
    "build",
    "build_block",
    "build_conv",
    "build_matricize",
    "build_net",
    "build_solver",
    "component_maps",
    "get_part",
    "iters_override",
    "list_parts",
    "parse_spec",
    "register",
    "register_preset",
    "select_rank",
    "set_iters",
    "skip_mixers",
    "stage_names",
    "use_kernels",
]
