"""Convolutional baselines over the U-Net skeleton: U-Net, Res-U-Net, Pre-U-Net.

Defaults are the papers' configurations, except deep supervision (see below):

- ``unet``: the Factorizer paper's / thesis ch. 6 U-Net baseline (nnU-Net-like): 3×3×3 stem,
  ``double_conv`` blocks with GroupNorm (8 channels per group) + LeakyReLU, 2×2×2 strided-conv
  down, 2×2×2 transposed-conv up, widths 32…512, deep supervision at 3 resolutions
  (``unet(deep_supervision=3)``: 28.7M parameters for 4 → 3 channels);
- ``resunet``: thesis ch. 8: no stem, ``residual`` blocks (conv, InstanceNorm, LeakyReLU, 1×1
  shortcut), max-pool down, 3×3×3 transposed-conv up, F = 60 (widths 60…960), one head
  (92.2M parameters for 4 → 4 channels). ``first_level_conv`` keeps level 0 dense when ``conv``
  is low-rank (the thesis's low-rank Res-U-Net);
- ``pre_unet``: thesis ch. 6: like ``unet`` with ``preact_residual`` blocks
  (GroupNorm → LeakyReLU → conv, twice, + shortcut), deep supervision at 3 resolutions
  (``pre_unet(deep_supervision=3)``: 28.9M parameters).

Deep supervision is off by default in every net (one tensor out in training, like MONAI's
nets); the papers' configurations set it in their specs (:data:`lowrank.nets.paper_specs.PAPER_SPECS`).

Every 3×3×3 conv of the blocks (and the stem) is built from ``conv`` (``"dense"`` by default).

The three are presets (:mod:`lowrank.preset`) of ``conv_unet``, which takes the block type,
stem, downsampling and up-kernel as keywords; ``lowrank_resunet`` is a preset of ``resunet``.

Example:
    >>> import torch
    >>> from lowrank import build_net
    >>> net = build_net("resunet(channels=[8, 16, 32])", 4, 4).eval()
    >>> net(torch.randn(1, 4, 20, 20, 12)).shape
    torch.Size([1, 4, 20, 20, 12])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from ..build import ConvSpec, LayerSpec
from ..preset import register_preset
from ..registry import register
from ..spec import Spec
from .skeleton import DEEP_SUPERVISION_RULE, UNetSkeleton

__all__ = ["ConvUNet", "UNet", "ResUNet", "PreUNet"]

_GROUP8 = ("group", {"group_size": 8})
_LEAKY = ("leakyrelu", {"negative_slope": 0.01})
_SMALL = "channels=[4, 8], deep_supervision=1"


def _layer(value):
    """A MONAI ``(name, {kwargs})`` layer spec as a :class:`Spec` (printable in the grammar)."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        return Spec(value[0], dict(value[1]))
    return value


def _block(name: str, norm, act, dropout: float) -> Spec:
    return Spec(name, {"norm": _layer(norm), "act": _layer(act), "dropout": dropout})


@register("net", "conv_unet", test_spec=f"conv_unet({_SMALL})", test_size=8)
class ConvUNet(UNetSkeleton):
    """Convolutional U-Net, one block type throughout (the base of ``unet``, ``resunet``, ``pre_unet``).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        spatial_dims: 1, 2 or 3.
        channels: widths per level, highest resolution first.
        block: the block of every stage: ``double_conv`` (conv, norm, act, twice),
            ``residual`` (the same with a 1×1 shortcut) or ``preact_residual`` (norm → act →
            conv, twice, + shortcut).
        stem: start with a 3×3×3 conv ``in_channels → C_0``.
        down: ``"conv"`` (2×2×2 strided conv) or ``"maxpool"``.
        up_kernel: transposed-conv kernel; ``None`` = the stride (2×2×2), an odd int (e.g. 3)
            pads to keep exact doubling.
        conv: conv spec of the stem and every 3×3×3 block conv (e.g. ``cp_conv(rank=0.5)``).
        first_level_conv: conv spec at level 0 instead of ``conv`` (``None``: same); keeps the
            first level dense when ``conv`` is low-rank.
        norm: MONAI norm spec of the blocks.
        act: MONAI activation spec of the blocks.
        deep_supervision: heads at the highest resolutions: 1 (default) = none, one tensor
            out; ``k > 1`` a list in training; at most ``len(channels) - 1`` (clamped).
        dropout: dropout inside each block.
        strides: downsampling strides (default 2 per level).

    Shapes:
        See :class:`~lowrank.nets.skeleton.UNetSkeleton`.

    Note:
        {rule}
    """

    __doc__ = __doc__.replace("{rule}", DEEP_SUPERVISION_RULE)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int = 3,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        block: Literal["double_conv", "residual", "preact_residual"] = "double_conv",
        stem: bool = True,
        down: Literal["conv", "maxpool"] = "conv",
        up_kernel: int | None = None,
        conv: ConvSpec = "dense",
        first_level_conv: ConvSpec | None = None,
        norm: LayerSpec = _GROUP8,
        act: LayerSpec = _LEAKY,
        deep_supervision: int = 1,
        dropout: float = 0.0,
        strides: Sequence[int | Sequence[int]] | None = None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            spatial_dims=spatial_dims,
            channels=channels,
            block=_block(block, norm, act, dropout),
            strides=strides,
            stem=stem,
            down=down,
            up_kernel=up_kernel,
            conv=conv,
            first_level_conv=first_level_conv,
            deep_supervision=min(deep_supervision, max(1, len(channels) - 1)),
        )


@register_preset("unet", fixed={"block": "double_conv", "stem": True, "down": "conv", "up_kernel": None})
class UNet(ConvUNet):
    """U-Net (nnU-Net-style baseline of the Factorizer paper and thesis ch. 6).

    GroupNorm (8 channels per group) + LeakyReLU(0.01), widths 32…512; the paper's net is
    ``unet(deep_supervision=3)``.
    """


@register_preset(
    "resunet",
    aliases=("res_unet",),
    fixed={"block": "residual", "stem": False, "down": "maxpool", "up_kernel": 3},
    defaults={"channels": (60, 120, 240, 480, 960), "norm": "instance"},
)
class ResUNet(ConvUNet):
    """Res-U-Net of thesis ch. 8 (92.2M parameters dense at F = 60, 4 → 4 channels).

    Residual blocks with InstanceNorm + LeakyReLU(0.01), max-pool down, 3×3×3 transposed-conv
    up, widths F…16F with F = 60, one head (the thesis's).
    """


@register_preset(
    "pre_unet",
    aliases=("preunet",),
    fixed={"block": "preact_residual", "stem": True, "down": "conv", "up_kernel": None},
)
class PreUNet(ConvUNet):
    """Pre-U-Net of thesis ch. 6: pre-activation residual blocks (deep supervision at 3 levels there).

    GroupNorm (8 channels per group) → LeakyReLU(0.01) → conv, twice, + shortcut; the thesis's
    net is ``pre_unet(deep_supervision=3)`` (2 input channels: two FLAIR time points).
    """
