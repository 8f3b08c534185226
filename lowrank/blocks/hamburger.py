"""Hamburger (Geng et al., 2021): a matrix decomposition between two 1×1 "breads".

``y = out_act(gate · upper(cheese(ham(lower(x)))) + x)`` for a feature map ``x: (B, C, *S)`` in
1-, 2- or 3-D. The "ham" is any registered factorization layer (``nmf``, ``vq``, ``cd``, ...),
applied to the lower bread's output viewed as a batch of matrices:

- ``spatial=True`` (the paper's default): ``(B·heads, dim/heads, N)`` with ``N = ∏S`` — each
  column is one position, so the ham finds ``rank`` bases in feature space;
- ``spatial=False`` ("channel" view): the transpose ``(B·heads, N, dim/heads)``.

Versions (the reference implementation's ``HamburgerV1/V2/V2Plus``):

- ``v1``: lower bread → ham → upper bread (1×1 conv + norm) → residual;
- ``v2``: lower bread → ham → cheese (1×1 conv + norm + act) → upper bread (1×1 conv) → residual;
- ``v2plus``: ``v2`` with a learnable gate ``y = g_ham · branch + g_skip · x``, ``g_ham``
  initialized to zero (so the block starts as the identity) and ``g_skip`` to one; with
  ``dual=True`` the lower bread produces ``2·dim`` channels, one half is factorized spatially and
  the other in the channel view, and the cheese mixes both.

Example:
    >>> import torch
    >>> from lowrank import build_block
    >>> block = build_block("hamburger(ham=nmf(rank=4, iters=3), dim=32, heads=2)", 16, spatial_dims=2)
    >>> block(torch.randn(2, 16, 8, 8)).shape
    torch.Size([2, 16, 8, 8])
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from ..build import LayerSpec, SolverSpec, build_solver
from ..norm_act import make_act, make_norm
from ..registry import register
from ..solvers.base import Factorization

__all__ = ["Hamburger", "HamApply", "layer"]


def layer(spec: LayerSpec, *, kind: Literal["norm", "act"], spatial_dims: int, channels: int) -> nn.Module:
    """Resolve a norm/act spec (``None`` → identity) with :mod:`lowrank.norm_act`'s vocabulary.

    Args:
        spec: the layer spec, e.g. ``"batch"``, ``("group", {"num_groups": 8})``, ``"relu"``.
        kind: ``"norm"`` or ``"act"``.
        spatial_dims: 1, 2 or 3 (for norms).
        channels: the channels the norm sees.

    Returns:
        The layer, or ``nn.Identity()`` for ``None``.

    Raises:
        ValueError: a name MONAI does not know, with the fix.
    """
    return make_norm(spec, channels, spatial_dims) if kind == "norm" else make_act(spec)


def _conv(spatial_dims: int, cin: int, cout: int, bias: bool = True) -> nn.Module:
    return Conv[Conv.CONV, spatial_dims](cin, cout, kernel_size=1, bias=bias)


def _needs_nonnegative(ham: nn.Module) -> bool:
    """Whether a solver factorizes with non-negative factors (its ``nonnegative`` flag: NMF)."""
    return isinstance(ham, Factorization) and ham.nonnegative


class HamApply(nn.Module):
    """Apply a factorization layer to a feature map viewed as matrices, heads as a channel split.

    Args:
        ham: the built factorization layer ``(*batch, M, N) -> (*batch, M, N)``.
        heads: number of channel groups factorized independently.
        spatial: ``True`` for ``(B·heads, C/heads, N)``, ``False`` for the transpose.
        channels: ``C``, when known at build time: the spatial view then sizes the ham's init
            tables (``uniform``, ``online``, ``learned``) for ``C/heads`` rows now.

    Shapes:
        ``(B, C, *S) -> (B, C, *S)``.
    """

    def __init__(self, ham: nn.Module, heads: int, spatial: bool, channels: int | None = None):
        super().__init__()
        self.ham = ham
        self.heads = heads
        self.spatial = spatial
        # the spatial view's matrices have channels/heads rows, known now: size the ham's init
        # tables at build (the channel view's rows are voxels, known at the first call only)
        if spatial and channels is not None and isinstance(ham, Factorization):
            ham.set_rows(channels // heads)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, spatial={self.spatial}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Factorize ``x: (B, C, *S)`` per head and return the reconstruction, same shape."""
        B, C, *S = x.shape
        mats = x.reshape(B * self.heads, C // self.heads, math.prod(S))
        if not self.spatial:
            mats = mats.transpose(-1, -2)
        out = self.ham(mats)
        if not self.spatial:
            out = out.transpose(-1, -2)
        return out.reshape(B, C, *S)


@register(
    "block",
    "hamburger",
    test_spec="hamburger(ham=ham_nmf(rank=2, iters=2), dim=8, heads=2, version=v2plus, dual=true)",
    test_size=6,
)
class Hamburger(nn.Module):
    """Hamburger block: 1×1 lower bread, matrix-decomposition ham, cheese, upper bread, residual.

    Args:
        channels: input/output channels ``C``.
        spatial_dims: 1, 2 or 3.
        ham: the factorization layer (a solver spec), default the paper's NMF ham
            (``ham_nmf``: softmax coefficient init, ``r=64``, ``K=6`` train / ``7`` eval,
            one-step gradient, random init in training and a fixed one in eval).
        dim: width ``d`` of the ham (the lower bread maps ``C → d``).
        heads: the ham factorizes ``heads`` channel groups of ``d/heads`` independently.
        version: ``v1`` (upper bread with norm), ``v2`` (cheese, plain upper bread) or ``v2plus``
            (``v2`` with a zero-initialized learnable gate).
        spatial: factorize ``(d/heads) × N`` matrices (``True``) or their transposes (``False``).
        dual: (``v2``/``v2plus``) ensemble a spatial and a channel ham on two halves of a ``2·d``
            lower bread.
        cheese: add the 1×1 conv + norm + act between ham and upper bread; ``None``: by version
            (``v1`` no, ``v2``/``v2plus`` yes).
        upper_norm: normalize the upper bread's output; ``None``: by version (``v1`` yes).
        norm: MONAI norm of the cheese and the upper bread, ``str | (name, {kwargs}) | None``.
        act: MONAI activation of the cheese.
        lower_act: activation after the lower bread; ``"auto"``: ReLU when the ham has
            non-negative factors (its ``nonnegative`` flag: ``nmf``, ``ham_nmf``), none otherwise.
        out_act: activation after the residual sum (the reference implementation uses ReLU; the
            paper's Eq. 6 has none).

    Shapes:
        ``(B, C, *S) -> (B, C, *S)``.

    Raises:
        ValueError: ``dim`` not divisible by ``heads``, an unknown version/norm/act, ``dual`` with
            ``v1``, or bad sizes.
    """

    def __init__(
        self,
        channels: int,
        *,
        spatial_dims: int = 3,
        ham: SolverSpec = "ham_nmf(rank=64, iters=6, eval_iters=7, grad_steps=1)",
        dim: int = 512,
        heads: int = 1,
        version: Literal["v1", "v2", "v2plus"] = "v2",
        spatial: bool = True,
        dual: bool = False,
        cheese: bool | None = None,
        upper_norm: bool | None = None,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        lower_act: LayerSpec | Literal["auto"] = "auto",
        out_act: LayerSpec = None,
    ):
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"hamburger: spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        for name, value in (("channels", channels), ("dim", dim), ("heads", heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"hamburger: {name} must be a positive integer, got {value!r}")
        if version not in ("v1", "v2", "v2plus"):
            raise ValueError(f"hamburger: version must be v1, v2 or v2plus, got {version!r}")
        if dim % heads:
            raise ValueError(
                f"hamburger: dim={dim} is not divisible by heads={heads}; choose dim a multiple of heads"
            )
        if dual and version == "v1":
            raise ValueError("hamburger: dual=true needs the cheese to mix both hams; use version=v2plus")
        self.channels, self.dim, self.heads, self.version, self.dual = channels, dim, heads, version, dual
        cheese = version != "v1" if cheese is None else cheese
        upper_norm = version == "v1" if upper_norm is None else upper_norm
        width = 2 * dim if dual else dim

        hams = [HamApply(build_solver(ham), heads, spatial, dim)]
        if dual:
            second = build_solver(ham)
            if second is hams[0].ham:  # a built module was passed: give the channel view its own
                second = copy.deepcopy(second)
            hams.append(HamApply(second, heads, not spatial, dim))
        self.hams = nn.ModuleList(hams)
        if lower_act == "auto":
            lower_act = "relu" if _needs_nonnegative(hams[0].ham) else None
        self.lower = nn.Sequential(
            _conv(spatial_dims, channels, width),
            layer(lower_act, kind="act", spatial_dims=spatial_dims, channels=width),
        )
        self.cheese = (
            nn.Sequential(
                _conv(spatial_dims, width, width, bias=norm is None),
                layer(norm, kind="norm", spatial_dims=spatial_dims, channels=width),
                layer(act, kind="act", spatial_dims=spatial_dims, channels=width),
            )
            if cheese
            else nn.Identity()
        )
        self.upper = nn.Sequential(
            _conv(spatial_dims, width, channels, bias=not (upper_norm and norm is not None)),
            layer(norm if upper_norm else None, kind="norm", spatial_dims=spatial_dims, channels=channels),
        )
        if version == "v2plus":
            self.gate_ham = nn.Parameter(torch.zeros(1))
            self.gate_skip = nn.Parameter(torch.ones(1))
        else:
            self.register_parameter("gate_ham", None)
            self.register_parameter("gate_skip", None)
        self.out_act = layer(out_act, kind="act", spatial_dims=spatial_dims, channels=channels)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The block without the residual: ``upper(cheese(ham(lower(x))))``, ``(B, C, *S)``."""
        z = self.lower(x)
        if self.dual:
            parts = z.chunk(2, dim=1)
            z = torch.cat([h(p) for h, p in zip(self.hams, parts)], dim=1)
        else:
            z = self.hams[0](z)
        return self.upper(self.cheese(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x: (B, channels, *S)``; returns the same shape."""
        if x.dim() < 3 or x.shape[1] != self.channels:
            raise ValueError(
                f"hamburger: expected input (B, {self.channels}, *spatial), got shape {tuple(x.shape)}"
            )
        y = self.branch(x)
        if self.gate_ham is not None:
            y = self.gate_ham * y + self.gate_skip * x
        else:
            y = y + x
        return self.out_act(y)
