"""The low-rank Res-U-Net of thesis ch. 8: the Res-U-Net with CP convolutions past level 0.

Every 3x3x3 convolution of the residual blocks is a CP convolution of rank ``R = alpha * C_in``
(``alpha = 0.5``, :class:`~lowrank.convs.cp.CPConv`), except in the first (full-resolution)
level, which stays dense, as in the thesis ("the number of parameters at the first level is
already relatively small"). The 1x1 shortcuts, the 3x3x3 transposed up-convolutions and the
head stay dense.

Parameter counts (4 -> 4 channels, F = 60, widths 60...960; exact, checked in the tests):
dense ``resunet`` 92,219,344 (thesis: 92.2M); ``lowrank_resunet`` 21,069,034 (thesis: 20.8M,
+1.3%), of which 16.5M are the dense transposed convolutions. With level 0 low-rank as well
(``first_level_conv=none``) the count is 20,692,980 (-0.5%).

Any other conv-based net turns low-rank the same way through its ``conv=`` parameter, e.g.
``unet(conv=tucker_conv(rank=0.25))`` or ``resunet(conv=tt_conv(rank=0.5), first_level_conv=dense)``.

Example:
    >>> import torch
    >>> from lowrank import build_net
    >>> net = build_net("lowrank_resunet(channels=[8, 16, 32])", 4, 4).eval()
    >>> net(torch.randn(1, 4, 16, 16, 16)).shape
    torch.Size([1, 4, 16, 16, 16])
"""

from __future__ import annotations

from collections.abc import Sequence

from ..build import ConvSpec, LayerSpec
from ..registry import register
from .conv_nets import ResUNet
from .skeleton import DEEP_SUPERVISION_RULE

__all__ = ["LowRankResUNet"]

_LEAKY = ("leakyrelu", {"negative_slope": 0.01})


@register(
    "net",
    "lowrank_resunet",
    aliases=("lowrank_res_unet",),
    test_spec="lowrank_resunet(channels=[4, 8])",
    test_size=8,
)
class LowRankResUNet(ResUNet):
    """Low-rank Res-U-Net (thesis ch. 8): CP convs with ``alpha = 0.5`` everywhere but level 0.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        spatial_dims: 1, 2 or 3.
        channels: widths per level (F, 2F, ..., 16F with F = 60).
        conv: conv spec of the 3x3x3 block convs past level 0 (CP, ``alpha = 0.5``).
        first_level_conv: conv spec of the level-0 blocks (dense; ``None`` = ``conv`` too).
        norm: MONAI norm spec (InstanceNorm).
        act: MONAI activation spec (LeakyReLU(0.01)).
        deep_supervision: heads at the highest resolutions: 1 (default, the thesis's) = none,
            one tensor out; ``k > 1`` a list in training.
        dropout: dropout inside each block.
        strides: max-pooling strides (default 2 per level).

    Shapes:
        ``(B, C_in, *S) -> (B, C_out, *S)`` (a list, highest resolution first, in training with
        deep supervision); see :class:`~lowrank.nets.skeleton.UNetSkeleton`.

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
        channels: Sequence[int] = (60, 120, 240, 480, 960),
        conv: ConvSpec = "cp_conv(rank=0.5)",
        first_level_conv: ConvSpec | None = "dense",
        norm: LayerSpec = "instance",
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
            conv=conv,
            first_level_conv=first_level_conv,
            norm=norm,
            act=act,
            deep_supervision=deep_supervision,
            dropout=dropout,
            strides=strides,
        )
