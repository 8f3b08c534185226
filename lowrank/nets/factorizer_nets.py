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
:data:`lowrank.nets.presets.PAPER_SPECS`.

Example:
    >>> import torch
    >>> from lowrank import build_net
    >>> net = build_net("swin_factorizer(channels=[16, 32, 64], patch=4, pos_embed_size=none)", 1, 2,
    ...                 spatial_dims=2).eval()
    >>> net(torch.randn(1, 1, 30, 21)).shape
    torch.Size([1, 2, 30, 21])
"""

from __future__ import annotations

from collections.abc import Sequence

from ..build import BlockSpec
from ..registry import register
from ..spec import Spec
from .skeleton import DEEP_SUPERVISION_RULE, UNetSkeleton

__all__ = ["SwinFactorizer", "LocalFactorizer", "GlobalFactorizer"]

_CHANNELS = (32, 64, 128, 256, 512)
_SMALL = "channels=[8, 16], head_dim=4, patch=4, iters=2, deep_supervision=1, pos_embed_size=8"
#: the factorization keywords and their defaults (checked against an explicit ``block=``)
_DEFAULTS = {
    "head_dim": 8,
    "patch": 8,
    "cyclic": True,
    "rank": 1,
    "iters": 5,
    "update": "hals",
    "mlp_ratio": 2.0,
}


class _FactorizerNet(UNetSkeleton):
    """Shared constructor of the Factorizer nets (not registered)."""

    matricizer: str = "swin"

    def _setup(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int,
        channels: Sequence[int],
        factorization: dict,
        deep_supervision: int,
        pos_embed_size: int | Sequence[int] | None,
        dropout: float,
        strides: Sequence[int | Sequence[int]] | None,
        block: BlockSpec | None,
    ) -> None:
        if block is None:
            mat = {"head_dim": factorization["head_dim"]}
            if "patch" in factorization:
                mat = {"patch": factorization["patch"], **mat}
            if "cyclic" in factorization:
                mat["cyclic"] = factorization["cyclic"]
            mixer = Spec(
                "nmf",
                {
                    "rank": factorization["rank"],
                    "iters": factorization["iters"],
                    "update": Spec(factorization["update"]),
                },
            )
            block = Spec(
                "factorizer",
                {
                    "mixer": mixer,
                    "matricize": Spec(self.matricizer, mat),
                    "mlp_ratio": float(factorization["mlp_ratio"]),
                    "dropout": float(dropout),
                },
            )
        else:
            changed = [k for k, v in factorization.items() if v != _DEFAULTS[k]]
            if changed:
                raise ValueError(
                    f"{type(self).__name__}: give either block=... or the factorization keywords "
                    f"{changed}, not both (put them inside the block spec)"
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


_ARGS_DOC = """
    Args:
        in_channels: input channels (4 for BraTS, 2 for ISLES).
        out_channels: output channels (3 for BraTS, 1 for ISLES).
        spatial_dims: 1, 2 or 3.
        channels: widths per level, highest resolution first (32…512).
        head_dim: channels per matrix ``E`` (rows of each matrix); must divide every width.{patch}
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
        ValueError: ``block`` together with non-default factorization keywords, or the
            matricizer's errors (e.g. ``head_dim`` not dividing a width) at build time.
"""
_CYCLIC_DOC = (
    "\n        cyclic: roll the shifted windows around the borders (``torch.roll``, the paper's and"
    "\n            the reference's); ``False`` zero-pads them instead (see ``swin``)."
)
_PATCH_DOC = "\n        patch: window size ``P`` per axis (an int or one per axis; 8 for BraTS, 4 for ISLES)."


@register("net", "swin_factorizer", test_spec=f"swin_factorizer({_SMALL})", test_size=8)
class SwinFactorizer(_FactorizerNet):
    __doc__ = (
        "Swin Factorizer: NMF on shifted windows (regular + half-patch-rolled windows, averaged).\n"
        + _ARGS_DOC.format(patch=_PATCH_DOC + _CYCLIC_DOC, rule=DEEP_SUPERVISION_RULE)
    )
    matricizer = "swin"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int = 3,
        channels: Sequence[int] = _CHANNELS,
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
        fact = {"head_dim": head_dim, "patch": patch, "cyclic": cyclic, "rank": rank, "iters": iters}
        fact |= {"update": update, "mlp_ratio": mlp_ratio}
        self._setup(
            in_channels, out_channels, spatial_dims, channels, fact, deep_supervision,
            pos_embed_size, dropout, strides, block,
        )  # fmt: skip


@register("net", "local_factorizer", test_spec=f"local_factorizer({_SMALL})", test_size=8)
class LocalFactorizer(_FactorizerNet):
    __doc__ = "Local Factorizer: NMF on non-overlapping windows.\n" + _ARGS_DOC.format(
        patch=_PATCH_DOC, rule=DEEP_SUPERVISION_RULE
    )
    matricizer = "local"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int = 3,
        channels: Sequence[int] = _CHANNELS,
        head_dim: int = 8,
        patch: int | Sequence[int] = 8,
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
        fact = {"head_dim": head_dim, "patch": patch, "rank": rank, "iters": iters}
        fact |= {"update": update, "mlp_ratio": mlp_ratio}
        self._setup(
            in_channels, out_channels, spatial_dims, channels, fact, deep_supervision,
            pos_embed_size, dropout, strides, block,
        )  # fmt: skip


@register(
    "net",
    "global_factorizer",
    test_spec="global_factorizer(channels=[8, 16], head_dim=4, iters=2, pos_embed_size=8)",
    test_size=8,
)
class GlobalFactorizer(_FactorizerNet):
    __doc__ = "Global Factorizer: NMF of each head over the whole image (no locality).\n" + _ARGS_DOC.format(
        patch="", rule=DEEP_SUPERVISION_RULE
    )
    matricizer = "global"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int = 3,
        channels: Sequence[int] = _CHANNELS,
        head_dim: int = 8,
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
        fact = {"head_dim": head_dim, "rank": rank, "iters": iters}
        fact |= {"update": update, "mlp_ratio": mlp_ratio}
        self._setup(
            in_channels, out_channels, spatial_dims, channels, fact, deep_supervision,
            pos_embed_size, dropout, strides, block,
        )  # fmt: skip
