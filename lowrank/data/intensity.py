"""Intensity normalization of the network input: one function for training, prediction and evaluation.

Two methods, each per channel over the non-zero voxels (the zero background of skull-stripped
or masked images stays zero):

- ``"zscore"``: subtract the mean and divide by the standard deviation (MONAI
  ``NormalizeIntensity(nonzero=True, channel_wise=True)``). Checkpoints written before the
  method was recorded used this one.
- ``"rank"``: replace every voxel by its quantile among the channel's non-zero voxels, in
  ``(0, 1)`` (histogram equalization; ties get their mean rank). Any strictly increasing map
  of the intensities that keeps zero at zero (a gamma change, a contrast or window change, a
  scanner's other grey-level curve) leaves the result exactly unchanged, so the net never sees
  these differences between scanners; a bias field and noise are not monotone maps and are left
  to the training augmentation (:mod:`lowrank.data.augment`).

Example:
    >>> import numpy as np
    >>> from lowrank.data.intensity import normalize_intensity
    >>> image = np.array([[[[0.0, 10.0, 20.0, 20.0, 40.0]]]])
    >>> normalize_intensity(image, "rank")[0, 0, 0].tolist()
    [0.0, 0.125, 0.5, 0.5, 0.875]
    >>> bool((normalize_intensity(image**1.3, "rank") == normalize_intensity(image, "rank")).all())
    True
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["NORMALIZATIONS", "LEGACY_NORMALIZATION", "normalize_intensity", "rank_normalize"]

#: The methods of :func:`normalize_intensity`.
NORMALIZATIONS = ("rank", "zscore")
#: The method of checkpoints that do not record one (written before it was recorded).
LEGACY_NORMALIZATION = "zscore"


def rank_normalize(values: np.ndarray) -> np.ndarray:
    """The mid-rank quantile of each value among ``values``: ``(#below + #equal / 2) / n``.

    Args:
        values: ``(N,)`` finite numbers, ``N >= 1``.

    Returns:
        ``(N,)`` float32 in ``(0, 1)``; equal values get equal quantiles, and the result depends
        only on the order of the values (a strictly increasing map of them leaves it unchanged).
    """
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts
    quantile = (below + 0.5 * counts) / float(values.size)
    return quantile.astype(np.float32)[inverse.reshape(-1)]


def normalize_intensity(image: np.ndarray, method: Literal["rank", "zscore"] | None = "zscore") -> np.ndarray:
    """Normalize each channel over its non-zero voxels (see the module docstring).

    Args:
        image: ``(C, *S)`` finite intensities.
        method: ``"zscore"`` (mean 0, standard deviation 1) or ``"rank"`` (quantiles in ``(0, 1)``);
            ``None``: the raw intensities (as float32).

    Returns:
        ``(C, *S)`` float32; zero voxels stay zero.

    Raises:
        ValueError: an unknown method.
    """
    if method is None:
        return np.array(image, dtype=np.float32)
    if method not in NORMALIZATIONS:
        raise ValueError(f"intensity normalization {method!r}: use one of {', '.join(NORMALIZATIONS)}")
    image = np.asarray(image, dtype=np.float32)
    if method == "zscore":
        from monai.transforms import NormalizeIntensity

        out = NormalizeIntensity(nonzero=True, channel_wise=True)(image)
        return np.asarray(out, dtype=np.float32)
    out = np.zeros_like(image)
    for c in range(image.shape[0]):
        mask = image[c] != 0
        if mask.any():
            out[c][mask] = rank_normalize(image[c][mask])
    return out
