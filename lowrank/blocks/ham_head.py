"""Ham decode head: multi-level features → one segmentation map (the "light Ham head" of SegNeXt).

``features`` (finest first) are resized to the finest level, concatenated, squeezed by a 1×1
conv + norm + act to ``ham_channels``, passed through a Hamburger block (or any registered block),
aligned by a 1×1 conv + norm + act to ``channels``, and classified by a 1×1 conv:

    x = cat([resize(f, finest) for f in features]) → squeeze → hamburger → align → dropout → cls

The head is not a registered part (it maps a list of tensors, not one tensor, so it fits no
part kind); nets such as ``ham_segnet`` build it.

Example:
    >>> import torch
    >>> head = HamHead([8, 16], 3, spatial_dims=2, ham_channels=16, channels=8, norm="batch",
    ...                hamburger="hamburger(ham=ham_nmf(rank=2, iters=2), version=v1)")
    >>> head([torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8)]).shape
    torch.Size([1, 3, 16, 16])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn

from ..build import BlockSpec, LayerSpec, as_spec, build_block
from ..spec import Spec
from .hamburger import layer

__all__ = ["HamHead", "resize_to", "DEFAULT_HAMBURGER"]

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}

#: The light Ham head's Hamburger (SegNeXt): ``relu(x + norm(conv(nmf(relu(conv(x))))))``.
DEFAULT_HAMBURGER = (
    "hamburger(ham=ham_nmf(rank=64, iters=6, eval_iters=7, grad_steps=1), version=v1, out_act=relu)"
)


def resize_to(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """(Bi/tri)linearly resize ``x: (B, C, *S)`` to ``(B, C, *size)`` (no-op when equal)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=_MODES[x.dim() - 2], align_corners=align_corners)


def _conv_norm_act(spatial_dims: int, cin: int, cout: int, norm: LayerSpec, act: LayerSpec) -> nn.Sequential:
    return nn.Sequential(
        Conv[Conv.CONV, spatial_dims](cin, cout, kernel_size=1, bias=norm is None),
        layer(norm, kind="norm", spatial_dims=spatial_dims, channels=cout),
        layer(act, kind="act", spatial_dims=spatial_dims, channels=cout),
    )


class HamHead(nn.Module):
    """Light Ham decode head for segmentation from multi-level features.

    Args:
        in_channels: channels of each input level, finest first.
        out_channels: number of classes (logit channels).
        spatial_dims: 1, 2 or 3.
        ham_channels: width after the squeeze conv (the Hamburger's ``channels``).
        channels: width after the align conv.
        hamburger: the block applied at ``ham_channels`` (any registered block); a
            ``hamburger`` spec without ``dim`` gets ``dim=ham_channels``.
        norm: MONAI norm of the squeeze and align convs.
        act: MONAI activation of the squeeze and align convs.
        dropout: dropout probability before the classifier.
        align_corners: passed to the interpolation.

    Shapes:
        ``[(B, in_channels[i], *S_i)] -> (B, out_channels, *S_0)``.

    Raises:
        ValueError: no input level, bad channel counts, or features that do not match
            ``in_channels``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        *,
        spatial_dims: int = 2,
        ham_channels: int = 512,
        channels: int = 256,
        hamburger: BlockSpec = DEFAULT_HAMBURGER,
        norm: LayerSpec = ("group", {"num_groups": 32}),
        act: LayerSpec = "relu",
        dropout: float = 0.1,
        align_corners: bool = False,
    ):
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if not in_channels or min(in_channels) < 1:
            raise ValueError(
                f"ham_head: in_channels must be a non-empty list of positive ints, got {in_channels}"
            )
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"ham_head: spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        for name, value in (
            ("out_channels", out_channels),
            ("ham_channels", ham_channels),
            ("channels", channels),
        ):
            if value < 1:
                raise ValueError(f"ham_head: {name} must be positive, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ham_head: dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.align_corners = align_corners
        self.squeeze = _conv_norm_act(spatial_dims, sum(in_channels), ham_channels, norm, act)
        spec = as_spec(hamburger)
        if isinstance(spec, Spec) and spec.name == "hamburger" and "dim" not in spec.kwargs:
            spec = spec.replace(dim=ham_channels)
        self.hamburger = build_block(spec, ham_channels, spatial_dims=spatial_dims)
        self.align = _conv_norm_act(spatial_dims, ham_channels, channels, norm, act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.cls = Conv[Conv.CONV, spatial_dims](channels, out_channels, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode ``features`` (finest first) into logits at the finest level's size."""
        if len(features) != len(self.in_channels) or any(
            f.shape[1] != c for f, c in zip(features, self.in_channels)
        ):
            got = [tuple(f.shape) for f in features]
            raise ValueError(
                f"ham_head: expected {len(self.in_channels)} levels with channels {self.in_channels}, "
                f"got shapes {got}"
            )
        size = features[0].shape[2:]
        x = torch.cat([resize_to(f, size, self.align_corners) for f in features], dim=1)
        x = self.align(self.hamburger(self.squeeze(x)))
        return self.cls(self.dropout(x))
