"""An nnU-Net v2 trainer whose network is a ``lowrank`` net (a Swin Factorizer by default).

Copy this file into ``nnunetv2/training/nnUNetTrainer/`` (nnU-Net finds trainers by class name
there), then train with ``nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerLowrank``.

:func:`build_lowrank_network` needs only ``lowrank``; the trainer class below it is defined only
when ``nnunetv2`` is installed, so this file also imports (and is tested) without nnU-Net.
"""

from __future__ import annotations

import torch
from torch import nn

from lowrank import build_net

#: The net nnU-Net trains. Any registered net works: ``lowrank list net``.
SPEC = "swin_factorizer(channels=[32, 64, 128, 256, 512], head_dim=8, patch=4)"
#: Deep-supervision heads of the net (highest resolution first); nnU-Net's loss uses as many.
HEADS = 3


def build_lowrank_network(
    num_input_channels: int,
    num_output_channels: int,
    enable_deep_supervision: bool = True,
    spec: str = SPEC,
    spatial_dims: int = 3,
) -> nn.Module:
    """The network for nnU-Net: a list of logits while deep supervision is on, else a tensor.

    Args:
        num_input_channels: image channels (nnU-Net's plans).
        num_output_channels: segmentation classes (nnU-Net's label manager).
        enable_deep_supervision: return one logit map per head (highest resolution first) in
            training mode, as nnU-Net's deep-supervision loss expects.
        spec: the ``lowrank`` net spec; ``deep_supervision`` is set from the argument above.
        spatial_dims: 3 for ``3d_fullres``, 2 for ``2d``.

    Returns:
        The built net, wrapped so that its outputs are what nnU-Net's loss and validation expect.
    """
    net = build_net(
        spec,
        in_channels=num_input_channels,
        out_channels=num_output_channels,
        spatial_dims=spatial_dims,
        deep_supervision=HEADS if enable_deep_supervision else 1,
    )
    return NnUNetOutputs(net, enable_deep_supervision)


class NnUNetOutputs(nn.Module):
    """A ``lowrank`` net with nnU-Net's output convention.

    A ``lowrank`` net returns its ``HEADS`` logits (highest resolution first) in training mode
    and one tensor in eval mode. nnU-Net indexes ``output[0]`` whenever deep supervision is on,
    in its validation steps too, so there a single output is returned as a one-element list.

    Args:
        net: the built net.
        deep_supervision: whether nnU-Net's deep supervision is on (the trainer toggles it).
    """

    def __init__(self, net: nn.Module, deep_supervision: bool):
        super().__init__()
        self.net = net
        self.deep_supervision = deep_supervision

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.net(x)
        if self.deep_supervision and isinstance(out, torch.Tensor):
            return [out]
        if not self.deep_supervision and isinstance(out, list):
            return out[0]
        return out


try:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
except ImportError:  # nnU-Net is not installed: the builder above is all there is
    nnUNetTrainer = None  # noqa: N816 (nnU-Net's name)

if nnUNetTrainer is not None:

    class nnUNetTrainerLowrank(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming)
        """nnU-Net's trainer, with a ``lowrank`` net instead of its U-Net."""

        @staticmethod
        def build_network_architecture(
            architecture_class_name,
            arch_init_kwargs,
            arch_init_kwargs_req_import,
            num_input_channels,
            num_output_channels,
            enable_deep_supervision=True,
        ):
            return build_lowrank_network(num_input_channels, num_output_channels, enable_deep_supervision)

        def _get_deep_supervision_scales(self):
            scales = super()._get_deep_supervision_scales()
            return None if scales is None else scales[:HEADS]

        def set_deep_supervision_enabled(self, enabled: bool):
            net = self.network.module if self.is_ddp else self.network
            net = getattr(net, "_orig_mod", net)  # under torch.compile
            net.deep_supervision = enabled
