"""Scanner-variation augmentation of training patches (MONAI intensity and spatial transforms).

The embedded training data is one template volume; a user's T1 comes from another scanner,
with another contrast, bias field, noise level and resolution. :func:`robust_transform`
simulates these on every training patch (after the crop of
:func:`lowrank.data.transforms.train_transform`), each at random:

- a smooth multiplicative bias field (``RandBiasFieldd``),
- a gamma change of the contrast (``RandAdjustContrastd``) and a histogram shift
  (``RandHistogramShiftd``),
- Gaussian noise and Gaussian smoothing (``RandGaussianNoised``, ``RandGaussianSmoothd``),
- a lower resolution, downsampled and upsampled back (``RandSimulateLowResolutiond``),
- small rotations and scalings (``RandAffined``; the label by nearest neighbour).

``lowrank train`` adds it by default (``--no-robust-augment``: off) with the probabilities of
:data:`ROBUST_PATCH`: under its default input normalization (``debias_rank`` of
:func:`lowrank.data.normalize_intensity`) a gamma or contrast change and a smooth bias field of
the image never reach the net, so the bias field, gamma and histogram shift are left out there
(they stay for ``--normalize zscore``). The measurements behind the choice are in the training
guide (``docs/guides/training.rst``, "Images from other scanners").

Every transform is randomizable, so the sampler's per-patch ``set_random_state`` keeps patches a
pure function of ``(seed, step, index)``.

Example:
    >>> from lowrank.data import PatchSampler, load_template, split_slab
    >>> from lowrank.data.augment import add_robust_augmentation
    >>> sampler = add_robust_augmentation(PatchSampler(split_slab(load_template())[0], (16, 16, 16)))
    >>> sampler.batch(step=0, batch_size=2)[0].shape
    torch.Size([2, 1, 16, 16, 16])
"""

from __future__ import annotations

import math

__all__ = ["ROBUST_PATCH", "add_robust_augmentation", "robust_transform"]

#: The patch augmentation of ``lowrank train`` per input normalization (:func:`robust_transform`'s
#: arguments). Under the rank normalizations a gamma, contrast or histogram change of the image
#: never reaches the net (and under ``debias_rank`` neither does a smooth bias field), so their
#: patches get no such change; measured on the default run (training guide, "Images from other
#: scanners"), the rotations, scalings, smoothing and lower resolution cost held-out Dice within
#: the step budget without making the net more robust to the variants, so ``debias_rank`` trains
#: with Gaussian noise only, as strong as the noise it should withstand: 3 % of the bright
#: intensity added to the raw image is a normalized-scale noise of std 0.27, so the noise std is
#: drawn from (0, 0.3) (MONAI's ``sample_std``) on half the patches.
ROBUST_PATCH: dict[str, dict[str, float]] = {
    "debias_rank": {"p": 0.5, "p_intensity": 0.0, "p_resolution": 0.0, "p_affine": 0.0, "noise": 0.3},
    "rank": {"p": 0.5, "p_intensity": 0.0, "p_resolution": 0.0, "p_affine": 0.0, "noise": 0.3},
    "zscore": {"p": 0.15, "p_intensity": 0.15},
}


def robust_transform(
    spatial_dims: int = 3,
    *,
    p: float = 0.15,
    p_intensity: float = 0.15,
    rotate_deg: float = 10.0,
    scale: float = 0.1,
    noise: float = 0.05,
    p_resolution: float | None = None,
    p_affine: float | None = None,
):
    """The MONAI dictionary transform of the scanner-variation augmentation.

    Args:
        spatial_dims: 3, or 2 for axial patches (``(X, Y, 1)`` crops: rotations in-plane only).
        p: the probability of each spatial, noise, smoothing and resolution transform.
        p_intensity: the probability of each of the bias field, gamma and histogram shift
            (the largest differences between scanners).
        rotate_deg: maximal rotation per axis, in degrees.
        scale: maximal relative zoom (``1 ± scale``).
        noise: the standard deviation of the Gaussian noise.
        p_resolution: the probability of each of the smoothing and the lower resolution
            (``None``: ``p``).
        p_affine: the probability of the rotation and scaling (``None``: ``p``).

    Returns:
        A ``Compose`` over ``{"image": (C, *S), "label": (1, *S)}``.

    Raises:
        ValueError: a probability outside [0, 1], or a negative rotation or scale.
    """
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandBiasFieldd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandHistogramShiftd,
        RandSimulateLowResolutiond,
    )

    p_resolution = p if p_resolution is None else p_resolution
    p_affine = p if p_affine is None else p_affine
    probabilities = (p, p_intensity, p_resolution, p_affine)
    if not all(0.0 <= q <= 1.0 for q in probabilities) or rotate_deg < 0 or scale < 0 or noise < 0:
        raise ValueError(
            "robust augmentation: need probabilities in [0, 1], rotate_deg, scale and noise >= 0; got "
            f"p={p}, p_intensity={p_intensity}, p_resolution={p_resolution}, rotate_deg={rotate_deg}, "
            f"scale={scale}, noise={noise}"
        )
    angle = math.radians(rotate_deg)
    rotate = (angle, angle, angle) if spatial_dims == 3 else (0.0, 0.0, angle)
    keys = ("image", "label")
    return Compose(
        [
            RandAffined(
                keys=keys,
                prob=p_affine,
                rotate_range=rotate,
                scale_range=(scale, scale, scale if spatial_dims == 3 else 0.0),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            *(
                [
                    RandBiasFieldd(keys="image", prob=p_intensity, coeff_range=(0.0, 0.3)),
                    RandAdjustContrastd(keys="image", prob=p_intensity, gamma=(0.7, 1.5)),
                    RandHistogramShiftd(keys="image", prob=p_intensity, num_control_points=(5, 10)),
                ]
                if p_intensity
                else []
            ),
            RandGaussianSmoothd(
                keys="image", prob=p_resolution, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), sigma_z=(0.25, 1.0)
            ),
            RandSimulateLowResolutiond(keys="image", prob=p_resolution, zoom_range=(0.5, 1.0)),
            RandGaussianNoised(keys="image", prob=p, std=noise),
        ]
    )


def add_robust_augmentation(
    sampler,
    *,
    p: float = 0.15,
    p_intensity: float = 0.15,
    noise: float = 0.05,
    p_resolution: float | None = None,
    p_affine: float | None = None,
):
    """Append :func:`robust_transform` to a :class:`~lowrank.data.PatchSampler`'s pipeline.

    Args:
        sampler: the sampler (its crops then go through the augmentation).
        p: see :func:`robust_transform`.
        p_intensity: see :func:`robust_transform`.
        noise: see :func:`robust_transform`.
        p_resolution: see :func:`robust_transform`.
        p_affine: see :func:`robust_transform`.

    Returns:
        The same sampler.
    """
    from monai.transforms import Compose

    sampler.transform = Compose(
        [
            sampler.transform,
            robust_transform(
                sampler.dims,
                p=p,
                p_intensity=p_intensity,
                noise=noise,
                p_resolution=p_resolution,
                p_affine=p_affine,
            ),
        ]
    )
    return sampler
