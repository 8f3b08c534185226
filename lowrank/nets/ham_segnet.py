"""``ham_segnet``: a small convolutional encoder with a light Ham decode head.

Encoder: ``len(channels)`` stages of MONAI ``ResidualUnit`` (the first at stride 1, the others at
stride 2). The head (:class:`~lowrank.blocks.ham_head.HamHead`) takes the levels in
``head_levels``, resizes them to the finest of them, and runs squeeze → Hamburger → align →
classifier; the logits are resized to the input size, so any input size works (no padding).
Built for 2-D (e.g. brain MRI slices), it runs in 1-, 2- and 3-D.

Example:
    >>> import torch
    >>> from lowrank import build_net
    >>> net = build_net("ham_segnet(channels=[8, 16, 16], ham_channels=16, head_channels=8)", 1, 4,
    ...                 spatial_dims=2)
    >>> net(torch.randn(2, 1, 30, 27)).shape
    torch.Size([2, 4, 30, 27])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ResidualUnit
from torch import nn

from ..blocks.ham_head import HamHead, resize_to
from ..build import BlockSpec, LayerSpec, MonaiLayerSpec
from ..export import script_error
from ..registry import register

__all__ = ["HamSegNet"]


def _check_groups(norm: LayerSpec, widths: dict[str, Sequence[int]]) -> None:
    """A clear build-time error when a group norm's ``num_groups`` does not divide a width."""
    if not (isinstance(norm, (tuple, list)) and len(norm) == 2 and str(norm[0]).lower() == "group"):
        return
    groups = dict(norm[1]).get("num_groups")
    if not isinstance(groups, int):
        return
    for name, values in widths.items():
        bad = [c for c in values if c % groups]
        if bad:
            raise ValueError(
                f"ham_segnet: norm=group(num_groups={groups}) needs {name} divisible by {groups}, got "
                f"{list(values)}; change {name} or num_groups (or use norm=batch / instance)"
            )


@register(
    "net",
    "ham_segnet",
    test_spec=(
        "ham_segnet(channels=[4, 8, 8], ham_channels=8, head_channels=8, norm=batch, "
        "hamburger=hamburger(ham=ham_nmf(rank=2, iters=2), version=v1, out_act=relu))"
    ),
    test_size=16,
)
class HamSegNet(nn.Module):
    """Segmentation net: residual conv encoder + light Ham decode head (SegNeXt-style).

    Args:
        in_channels: input channels.
        out_channels: output channels (classes).
        spatial_dims: 1, 2 or 3 (the net is meant for 2-D slices).
        channels: widths of the encoder stages; stage ``i > 0`` halves the resolution.
        head_levels: indices of the stages the head decodes (default: all but the first).
        ham_channels: the head's Hamburger width.
        head_channels: the head's width after the align conv.
        hamburger: the head's block spec at ``ham_channels`` (default: the light Ham head's NMF
            Hamburger with ``rank=16``, ``K=6`` train / ``7`` eval, one-step gradient).
        norm: MONAI norm of the encoder and the head.
        act: MONAI activation of the encoder and the head.
        dropout: dropout before the head's classifier.

    Shapes:
        ``(B, in_channels, *S) -> (B, out_channels, *S)`` (train and eval).

    Note:
        No deep supervision: one tensor out in training and in eval, like MONAI's nets (the
        rule of every net: deep supervision is off unless a ``deep_supervision=k > 1`` opts
        in; this net has no such option), so a plain MONAI ``DiceCELoss`` works.

    Raises:
        ValueError: empty ``channels``, ``head_levels`` out of range, or a group norm whose
            ``num_groups`` does not divide a width.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int = 3,
        channels: Sequence[int] = (32, 64, 128, 256),
        head_levels: Sequence[int] | None = None,
        ham_channels: int = 128,
        head_channels: int = 64,
        hamburger: BlockSpec = (
            "hamburger(ham=ham_nmf(rank=16, iters=6, eval_iters=7, grad_steps=1), version=v1, out_act=relu)"
        ),
        norm: MonaiLayerSpec = ("group", {"num_groups": 8}),
        act: LayerSpec = "relu",
        dropout: float = 0.1,
    ):
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1:
            raise ValueError(
                f"ham_segnet: channels must be a non-empty list of positive ints, got {channels}"
            )
        if head_levels is None:
            head_levels = list(range(1, len(channels))) or [0]
        head_levels = sorted({int(i) for i in head_levels})
        if not head_levels or head_levels[0] < 0 or head_levels[-1] >= len(channels):
            raise ValueError(
                f"ham_segnet: head_levels must index the {len(channels)} stages (0..{len(channels) - 1}), "
                f"got {head_levels}"
            )
        _check_groups(
            norm, {"channels": channels, "ham_channels": [ham_channels], "head_channels": [head_channels]}
        )
        self.head_levels = head_levels
        self.stages = nn.ModuleList()
        previous = in_channels
        for i, width in enumerate(channels[: head_levels[-1] + 1]):
            self.stages.append(
                ResidualUnit(
                    spatial_dims,
                    previous,
                    width,
                    strides=1 if i == 0 else 2,
                    kernel_size=3,
                    subunits=2,
                    act=act,
                    norm=norm,
                )
            )
            previous = width
        self.head = HamHead(
            [channels[i] for i in head_levels],
            out_channels,
            spatial_dims=spatial_dims,
            ham_channels=ham_channels,
            channels=head_channels,
            hamburger=hamburger,
            norm=norm,
            act=act,
            dropout=dropout,
        )

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` hook: not supported, one clear error (use torch.export / ONNX)."""
        raise script_error(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x: (B, in_channels, *S)``; returns logits ``(B, out_channels, *S)``."""
        if torch.jit.is_tracing():
            raise script_error(self, traced=True)
        features = []
        h = x
        for stage in self.stages:
            h = stage(h)
            features.append(h)
        logits = self.head([features[i] for i in self.head_levels])
        return resize_to(logits, x.shape[2:])
