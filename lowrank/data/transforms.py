"""MONAI transform pipelines for training patches.

A training patch is: a foreground-biased random crop (MONAI ``RandCropByPosNegLabeld`` with
precomputed foreground/background indices), a left–right flip (axis 0 of the RAS array), and
intensity jitter (random scale and shift). For 2-D training the crop is ``(px, py, 1)`` on the
3-D volume, i.e. an axial slice patch.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["train_transform"]


def train_transform(
    spatial_size: Sequence[int],
    *,
    pos: float = 2.0,
    neg: float = 1.0,
    flip: bool = True,
    scale: float = 0.1,
    shift: float = 0.1,
):
    """The dictionary transform that turns a volume into one augmented training patch.

    Input dict: ``image (C, *S)``, ``label (1, *S)``, ``fg``/``bg`` flat voxel indices (from
    ``monai.transforms.utils.map_binary_to_indices``). Output: a list with one dict.

    Args:
        spatial_size: crop size per axis (3 values; use 1 on the last axis for axial 2-D patches).
        pos: weight of patches centred on foreground (label > 0) voxels.
        neg: weight of patches centred on background voxels.
        flip: random left–right flip (axis 0).
        scale: intensity scale jitter: ``x * (1 + u)``, ``u ~ U(-scale, scale)``.
        shift: intensity shift jitter: ``x + u``, ``u ~ U(-shift, shift)``.

    Returns:
        A MONAI ``Compose``; seed it per patch with ``set_random_state``.
    """
    from monai.transforms import (
        Compose,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = ("image", "label")
    steps = [
        RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=list(spatial_size),
            pos=pos,
            neg=neg,
            num_samples=1,
            fg_indices_key="fg",
            bg_indices_key="bg",
        )
    ]
    if flip:
        steps.append(RandFlipd(keys=keys, prob=0.5, spatial_axis=0))
    if scale:
        steps.append(RandScaleIntensityd(keys="image", factors=scale, prob=1.0))
    if shift:
        steps.append(RandShiftIntensityd(keys="image", offsets=shift, prob=1.0))
    return Compose(steps)
