"""The data a training run sees: the embedded template or the user's cases, split into training
and validation (a held-out slab of one volume, or held-out cases)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..data import DEFAULT_HOLDOUT, Volume, load_dataset, load_template, split_cases, split_slab

__all__ = ["DataSplit", "load_split"]


@dataclass
class DataSplit:
    """Training volumes, validation volumes, and the whole volume for the figures.

    Attributes:
        train, val: lists of volumes.
        full: the volume the overlay figure shows (the whole template, or the first
            validation case).
        slab: ``(z0, z1)`` of the held-out slab inside ``full``, or ``None`` (case hold-out).
        classes: class names.
        in_channels: image channels.
        channels: channel names (the dataset's, else ``("0", "1", …)``).
    """

    train: list[Volume]
    val: list[Volume]
    full: Volume
    slab: tuple[int, int] | None
    classes: tuple[str, ...]
    in_channels: int
    channels: tuple[str, ...] = ()


def load_split(
    data: str | Path | None = None,
    holdout=DEFAULT_HOLDOUT,
    *,
    classes=None,
    fold: int | None = None,
    val_cases=None,
    spacing=None,
    nan_to_num: bool = False,
    normalize: Literal["debias_rank", "rank", "zscore"] = "zscore",
) -> DataSplit:
    """The embedded template (or the user's cases) split into training and validation.

    One volume: a z-slab is held out (see :func:`lowrank.data.split_slab`). Several cases: whole
    cases are held out (see :func:`lowrank.data.split_cases`: ``fold``, ``val_cases``, the
    dataset's own validation list, else the last ``max(1, round(0.2 n))`` cases by name).
    ``normalize``: the intensity normalization (:func:`lowrank.data.normalize_intensity`).
    """
    if data is None:
        if spacing is not None:
            raise ValueError("--spacing resamples --data; the embedded template stays at 2 mm")
        volumes, val_names, channels = [load_template(normalize)], None, ("T1",)
        if classes:
            volumes = [_renamed(volumes[0], classes)]
    else:
        dataset = load_dataset(
            data, classes=classes, spacing=spacing, nan_to_num=nan_to_num, normalize=normalize
        )
        volumes, val_names, channels = dataset.volumes, dataset.validation, dataset.channels
    first = volumes[0]
    if len(volumes) == 1:
        if fold is not None or val_cases:
            raise ValueError(
                "--fold and --val-cases need several cases; one volume holds out a z-slab (--holdout)"
            )
        train, val = split_slab(first, holdout)
        z0 = val.offset[-1]
        return DataSplit(
            train, [val], first, (z0, z0 + val.image.shape[-1]), first.classes, first.image.shape[0], channels
        )
    train, val = split_cases(volumes, fold=fold, val_cases=val_cases or val_names)
    return DataSplit(train, val, val[0], None, first.classes, first.image.shape[0], channels)


def _renamed(volume: Volume, classes) -> Volume:
    from dataclasses import replace

    if len(classes) != len(volume.classes):
        raise ValueError(
            f"--classes: the template has {len(volume.classes)} classes {volume.classes}, got {len(classes)}"
        )
    return replace(volume, classes=tuple(classes))
