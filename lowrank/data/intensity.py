"""Intensity normalization of the network input: one function for training, prediction and evaluation.

Three methods, each per channel over the non-zero voxels (the zero background of skull-stripped
or masked images stays zero):

- ``"zscore"``: subtract the mean and divide by the standard deviation (MONAI
  ``NormalizeIntensity(nonzero=True, channel_wise=True)``). Checkpoints written before the
  method was recorded used this one.
- ``"rank"``: replace every voxel by the standard normal quantile of its rank among the
  channel's non-zero voxels (a rank-based inverse normal transform: histogram equalization to a
  Gaussian, on the scale of a z-score, so the dark CSF stays far from the zero background; ties
  get their mean rank). Any strictly increasing map of the intensities that keeps zero at zero
  (a gamma change, a contrast or window change, a scanner's other grey-level curve) leaves the
  result exactly unchanged.
- ``"debias_rank"`` (``lowrank train``'s default): first divide the intensities by a smooth
  multiplicative field, ``exp`` of a degree-2 polynomial (Legendre, in the array's normalized
  coordinates) fitted by least squares to the log intensities of the brightest 30 % of the
  voxels (white matter in a T1), refitted 4 times on the corrected image; then ``"rank"``.
  Fitting one tissue class keeps the anatomy (grey matter, darker, at the edge of the brain) out
  of the field. A scaling and a gamma change of the image leave the result unchanged (they shift
  and scale the log intensities); a bias field of the polynomial's form is removed up to the
  change it makes to which voxels are the brightest 30 %, a smooth field of another form up to
  its distance from the polynomials. Retrospective polynomial bias correction in this sense:
  Styner et al., IEEE TMI 19(3), 2000.

Noise is no monotone map and is left to the training augmentation (:mod:`lowrank.data.augment`).

Example:
    >>> import numpy as np
    >>> from lowrank.data.intensity import normalize_intensity
    >>> image = np.array([[[[0.0, 10.0, 20.0, 20.0, 40.0]]]])
    >>> normalize_intensity(image, "rank")[0, 0, 0].astype(float).round(3).tolist()
    [0.0, -1.15, 0.0, 0.0, 1.15]
    >>> bool((normalize_intensity(image**1.3, "rank") == normalize_intensity(image, "rank")).all())
    True
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "NORMALIZATIONS",
    "LEGACY_NORMALIZATION",
    "BIAS_DEGREE",
    "BIAS_FRACTION",
    "BIAS_ITERATIONS",
    "normalize_intensity",
    "normal_scores",
    "rank_normalize",
    "remove_smooth_field",
]

#: The methods of :func:`normalize_intensity`.
NORMALIZATIONS = ("debias_rank", "rank", "zscore")
#: The method of checkpoints that do not record one (written before it was recorded).
LEGACY_NORMALIZATION = "zscore"
#: The polynomial degree of the log field ``"debias_rank"`` removes, the brightest fraction of
#: the voxels it is fitted to, and the number of fits (:func:`remove_smooth_field`).
BIAS_DEGREE, BIAS_FRACTION, BIAS_ITERATIONS = 2, 0.3, 4
#: The field is fitted on at most about this many voxels (an even subgrid of a larger volume).
_FIT_VOXELS = 200_000


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


def normal_scores(values: np.ndarray) -> np.ndarray:
    """The standard normal quantiles of the mid-rank quantiles of ``values``:
    ``Φ⁻¹(rank_normalize(values))`` (a rank-based inverse normal transform).

    Args:
        values: ``(N,)`` finite numbers, ``N >= 1``.

    Returns:
        ``(N,)`` float32, about mean 0 and standard deviation 1 (like a z-score, whatever the
        histogram), finite (at most ``Φ⁻¹(1 - 1/(2N))`` in magnitude).
    """
    import torch

    quantile = torch.from_numpy(rank_normalize(values).astype(np.float64))
    return torch.special.ndtri(quantile).numpy().astype(np.float32)


def _legendre(size: int, degree: int) -> np.ndarray:
    """``(degree + 1, size)``: the Legendre polynomials ``P_0 … P_degree`` on ``linspace(-1, 1)``."""
    from numpy.polynomial import legendre

    x = np.linspace(-1.0, 1.0, size) if size > 1 else np.zeros(1)
    return np.stack([legendre.legval(x, np.eye(degree + 1)[d]) for d in range(degree + 1)])


def _field(bases: list[np.ndarray], terms: list[tuple[int, ...]], coef: np.ndarray) -> np.ndarray:
    """``sum_t coef_t prod_a bases[a][t_a]`` on the whole grid."""
    field = np.zeros(tuple(b.shape[1] for b in bases))
    for c, t in zip(coef, terms):
        term = bases[0][t[0]]
        for a in range(1, len(bases)):
            term = np.multiply.outer(term, bases[a][t[a]])
        field += c * term
    return field


def remove_smooth_field(
    channel: np.ndarray,
    *,
    degree: int = BIAS_DEGREE,
    fraction: float = BIAS_FRACTION,
    iterations: int = BIAS_ITERATIONS,
) -> np.ndarray:
    """Divide the positive voxels of one channel by a smooth multiplicative field.

    The field is ``exp(p)``, ``p`` the least-squares polynomial of the log intensities of the
    brightest ``fraction`` of the voxels (after the current correction; white matter in a T1),
    refitted ``iterations`` times; one tissue class, so that the anatomy (darker grey matter at
    the edge of the brain) is not mistaken for a field.

    Args:
        channel: ``(*S)`` (1 to 3 spatial axes) finite intensities; voxels ``<= 0`` are outside
            the fit and come back as 0.
        degree: total degree of the polynomial (products of per-axis Legendre polynomials on
            the array's normalized coordinates).
        fraction: the brightest fraction of the voxels that the field is fitted to.
        iterations: fits (the first on the uncorrected intensities).

    Returns:
        ``(*S)`` float32: ``channel / exp(p)`` on the positive voxels (``p`` without its
        constant term), 0 elsewhere.
    """
    channel = np.asarray(channel, dtype=np.float64)
    mask = channel > 0
    out = np.zeros(channel.shape, dtype=np.float32)
    if mask.sum() < 2:
        return out
    logs = np.log(np.where(mask, channel, 1.0))
    bases = [_legendre(size, degree) for size in channel.shape]
    terms = [t for t in np.ndindex(*([degree + 1] * channel.ndim)) if sum(t) <= degree]
    # fit on an even subgrid of a large volume
    stride = max(1, int(np.ceil((fraction * mask.sum() / _FIT_VOXELS) ** (1.0 / channel.ndim))))
    sub = tuple(slice(None, None, stride) for _ in channel.shape)
    field = np.zeros(channel.shape)
    for _ in range(iterations):
        corrected = logs - field
        threshold = np.quantile(corrected[mask], 1.0 - fraction)
        coords = np.nonzero((mask & (corrected >= threshold))[sub])
        design = np.stack(
            [
                np.prod([bases[a][t[a]][::stride][coords[a]] for a in range(channel.ndim)], axis=0)
                for t in terms
            ],
            axis=1,
        )
        coef, *_ = np.linalg.lstsq(design, logs[sub][coords], rcond=None)
        coef[0] = 0.0  # the constant term: keep the overall brightness (the rank ignores it anyway)
        field = _field(bases, terms, coef)
    out[mask] = np.exp(logs[mask] - field[mask])
    return out


def normalize_intensity(
    image: np.ndarray, method: Literal["debias_rank", "rank", "zscore"] = "zscore"
) -> np.ndarray:
    """Normalize each channel over its non-zero voxels (see the module docstring).

    Args:
        image: ``(C, *S)`` finite intensities.
        method: ``"zscore"`` (mean 0, standard deviation 1), ``"rank"`` (normal scores of the
            ranks) or ``"debias_rank"`` (a smooth multiplicative field removed, then the normal
            scores; for MRI magnitudes: voxels ``<= 0`` count as background).

    Returns:
        ``(C, *S)`` float32; zero voxels stay zero.

    Raises:
        ValueError: an unknown method.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"intensity normalization {method!r}: use one of {', '.join(NORMALIZATIONS)}")
    image = np.asarray(image, dtype=np.float32)
    if method == "zscore":
        from monai.transforms import NormalizeIntensity

        out = NormalizeIntensity(nonzero=True, channel_wise=True)(image)
        return np.asarray(out, dtype=np.float32)
    out = np.zeros_like(image)
    for c in range(image.shape[0]):
        channel = remove_smooth_field(image[c]) if method == "debias_rank" else image[c]
        mask = channel != 0
        if mask.any():
            out[c][mask] = normal_scores(channel[mask])
    return out
