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

from ..preset import register_preset
from .conv_nets import ResUNet

__all__ = ["LowRankResUNet"]


@register_preset(
    "lowrank_resunet",
    aliases=("lowrank_res_unet",),
    defaults={"conv": "cp_conv(rank=0.5)", "first_level_conv": "dense"},
)
class LowRankResUNet(ResUNet):
    """Low-rank Res-U-Net (thesis ch. 8): CP convs with ``alpha = 0.5`` everywhere but level 0."""
