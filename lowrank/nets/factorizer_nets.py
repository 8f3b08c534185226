"""Factorizer nets (Ashtari et al.): Swin, Local and Global Factorizer over the U-Net skeleton.

Architecture (paper §3.2, reference implementation): a 3×3×3 stem conv to ``C_0``, one
``factorizer`` block per stage, 2×2×2 strided-conv down / transposed-conv up, a bias-free 1×1
adapter after each skip concatenation, a learnable position embedding added at the bottleneck
after downsampling, and 1×1 heads at the 3 highest decoder resolutions (deep supervision).

Defaults are the BraTS configuration except deep supervision, which is off by default in every
net (one tensor out in training, like MONAI's nets): the paper's BraTS net is
``swin_factorizer(deep_supervision=3)`` (4 → 3 channels: 5,856,233 parameters): widths 32…512,
head dimension 8, patch 8, NMF rank 1 with 5 iterations, MLP ratio 2, position embedding for a
128³ input. The ISLES configuration is ``head_dim=4, patch=4, mlp_ratio=4, pos_embed_size=64,
deep_supervision=3`` (2 → 1 channels: 7,372,515). Both are in
:data:`lowrank.nets.paper_specs.PAPER_SPECS`.

The three nets are presets (:mod:`lowrank.preset`) of ``factorizer_net``, which takes the
matricizer (``swin``, ``local`` or ``global``) as a keyword.

Example:
    >>> import torch
    >>> from lowrank import build_net
    >>> net = build_net("swin_factorizer(channels=[16, 32, 64], patch=4, pos_embed_size=none)", 1, 2,
    ...                 spatial_dims=2).eval()
    >>> net(torch.randn(1, 1, 30, 21)).shape
    torch.Size([1, 2, 30, 21])
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Literal

from ..build import BlockSpec
from ..preset import register_preset
from ..registry import register
from ..spec import Spec
from .skeleton import DEEP_SUPERVISION_RULE, UNetSkeleton

__all__ = ["FactorizerNet", "SwinFactorizer", "LocalFactorizer", "GlobalFactorizer"]

_SMALL = "channels=[8, 16], head_dim=4, patch=4, iters=2, deep_supervision=1, pos_embed_size=8"
#: the keywords that build the factorizer block (an explicit ``block=`` replaces them)
_FACTORIZATION = ("head_dim", "patch", "cyclic", "rank", "iters", "update", "mlp_ratio")
#: the keywords each matricizer takes
_WINDOWED = {"swin": ("patch", "cyclic"), "local": ("patch",), "global": ()}


@register("net", "factorizer_net", test_spec=f"factorizer_net({_SMALL})", test_size=8)
class FactorizerNet(UNetSkeleton):
    """Factorizer U-Net with a chosen matricizer (the base of the Swin, Local and Global Factorizer).

    Args:
        in_channels: input channels (4 for BraTS, 2 for ISLES).
        out_channels: output channels (3 for BraTS, 1 for ISLES).
        spatial_dims: 1, 2 or 3.
        channels: widths per level, highest resolution first (32…512).
        matricize: the matricizer of every block: ``swin`` (shifted windows), ``local``
            (non-overlapping windows) or ``global`` (each head over the whole image).
        head_dim: channels per matrix ``E`` (rows of each matrix); must divide every width.
        patch: window size ``P`` per axis (an int or one per axis; 8 for BraTS, 4 for ISLES);
            ``swin`` and ``local`` only.
        cyclic: roll the shifted windows around the borders (``torch.roll``, the paper's and
            the reference's); ``False`` zero-pads them instead (see ``swin``); ``swin`` only.
        rank: NMF rank ``R`` (1 in every published model).
        iters: NMF iterations in training (5); see :func:`lowrank.controls.set_iters` to change
            them after training.
        update: NMF update rule (``hals`` or ``mu``; identical at rank 1).
        mlp_ratio: MLP width over the block width (2 for BraTS, 4 for ISLES).
        deep_supervision: heads at the highest resolutions: 1 (default) = none, one tensor out;
            3 in the paper; at most ``len(channels) - 1`` (clamped).
        pos_embed_size: the input size the bottleneck position embedding is learned for (128 for
            BraTS, 64 for ISLES; ``None``: no embedding). Other sizes interpolate it.
        dropout: dropout inside every block.
        strides: the downsampling strides (2 per level; per-axis allowed).
        block: a full ``block`` spec for every stage instead of the keywords above.

    Shapes:
        See :class:`~lowrank.nets.skeleton.UNetSkeleton`.

    Note:
        {rule}

    Raises:
        ValueError: ``block`` together with non-default factorization keywords, a window
            keyword the matricizer does not take, or the matricizer's errors (e.g.
            ``head_dim`` not dividing a width) at build time.
    """

    __doc__ = __doc__.replace("{rule}", DEEP_SUPERVISION_RULE)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int = 3,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        matricize: Literal["swin", "local", "global"] = "swin",
        head_dim: int = 8,
        patch: int | Sequence[int] = 8,
        cyclic: bool = True,
        rank: int = 1,
        iters: int = 5,
        update: str = "hals",
        mlp_ratio: float = 2.0,
        deep_supervision: int = 1,
        pos_embed_size: int | Sequence[int] | None = 128,
        dropout: float = 0.0,
        strides: Sequence[int | Sequence[int]] | None = None,
        block: BlockSpec | None = None,
    ):
        given = dict(head_dim=head_dim, patch=patch, cyclic=cyclic, rank=rank, iters=iters)
        given |= dict(update=update, mlp_ratio=mlp_ratio)
        defaults = {k: p.default for k, p in inspect.signature(FactorizerNet.__init__).parameters.items()}
        changed = [k for k in _FACTORIZATION if given[k] != defaults[k]]
        unused = [k for k in changed if k in ("patch", "cyclic") and k not in _WINDOWED[matricize]]
        if unused:
            raise ValueError(f"{unused[0]} does not apply to the {matricize} matricizer: leave it out")
        if block is not None and changed:
            raise ValueError(
                f"{type(self).__name__}: give either block=... or the factorization keywords "
                f"{changed}, not both (put them inside the block spec)"
            )
        if block is None:
            window = {k: given[k] for k in _WINDOWED[matricize]}
            mat = Spec(matricize, {**({"patch": patch} if "patch" in window else {}), "head_dim": head_dim})
            if "cyclic" in window:
                mat.kwargs["cyclic"] = cyclic
            mixer = Spec("nmf", {"rank": rank, "iters": iters, "update": Spec(update)})
            block = Spec(
                "factorizer",
                {"mixer": mixer, "matricize": mat, "mlp_ratio": float(mlp_ratio), "dropout": float(dropout)},
            )
        super().__init__(
            in_channels,
            out_channels,
            spatial_dims=spatial_dims,
            channels=channels,
            block=block,
            strides=strides,
            stem=True,
            down="conv",
            pos_embed_size=pos_embed_size,
            deep_supervision=min(deep_supervision, max(1, len(channels) - 1)),
        )


@register_preset("swin_factorizer", fixed={"matricize": "swin"})
class SwinFactorizer(FactorizerNet):
    """Swin Factorizer: NMF on shifted windows (regular + half-patch-rolled windows, averaged)."""


@register_preset("local_factorizer", fixed={"matricize": "local", "cyclic": True})
class LocalFactorizer(FactorizerNet):
    """Local Factorizer: NMF on non-overlapping windows."""


@register_preset(
    "global_factorizer",
    fixed={"matricize": "global", "patch": 8, "cyclic": True},
    test_spec="global_factorizer(channels=[8, 16], head_dim=4, iters=2, pos_embed_size=8)",
)
class GlobalFactorizer(FactorizerNet):
    """Global Factorizer: NMF of each head over the whole image (no locality)."""
