"""Volumes: the embedded MNI template, the user's NIfTI files, and the spatial hold-out.

Every volume is held channel-first and intensity-normalized by one function,
:func:`lowrank.data.normalize_intensity` (per channel over the non-zero voxels: a z-score, or the
rank transform that ``lowrank train`` uses by default; the checkpoint records which), so training
on the template, training on ``--data`` and ``lowrank predict`` see one pipeline.

Example:
    >>> from lowrank.data import load_template, split_slab
    >>> vol = load_template()
    >>> vol.image.shape, vol.label.shape, vol.classes
    ((1, 75, 93, 79), (1, 75, 93, 79), ('background', 'csf', 'gm', 'wm'))
    >>> train, val = split_slab(vol)
    >>> [t.image.shape[-1] for t in train], val.image.shape[-1]
    ([40, 24], 15)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from .intensity import normalize_intensity

__all__ = [
    "Volume",
    "TEMPLATE_FILE",
    "DEFAULT_HOLDOUT",
    "normalize_intensity",
    "load_template",
    "split_slab",
    "split_cases",
    "FOLDS",
    "FOLD_SEED",
    "read_nifti",
    "find_cases",
    "require_nibabel",
]

#: The embedded data file (see ``NOTICE.txt`` next to it and ``scripts/build_data.py``).
TEMPLATE_FILE = "mni152_2mm.npz"
#: Default held-out z-slab, as fractions of the volume's z extent (inferior → superior).
DEFAULT_HOLDOUT = (0.5, 0.7)
#: Cases are split into this many folds for ``--fold`` (as nnU-Net does).
FOLDS = 5
#: The seed of the fold split (nnU-Net's: ``KFold(5, shuffle=True, random_state=12345)``).
FOLD_SEED = 12345
_NIFTI_RE = re.compile(r"\.nii(\.gz)?$")


@dataclass
class Volume:
    """One image with its label map, channel-first, intensity-normalized.

    Attributes:
        image: ``(C, *S)`` float32.
        label: ``(1, *S)`` uint8 or int64 class indices (``None`` for an unlabelled image).
        affine: ``(4, 4)`` voxel-to-world affine of the RAS-oriented array.
        classes: class names, index = label value.
        name: a short identifier (file name or ``"mni152"``).
        offset: voxel offset of this array inside the volume it was cut from (hold-out slabs).
    """

    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    classes: tuple[str, ...]
    name: str = ""
    offset: tuple[int, ...] = field(default=(0, 0, 0))

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm per axis (from the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])


def require_nibabel():
    """Import nibabel or raise an ImportError that says how to install it."""
    try:
        import nibabel
    except ImportError:
        raise ImportError(
            "reading NIfTI files needs nibabel: pip install nibabel  (or pip install 'lowrank[data]')"
        ) from None
    return nibabel


def load_template(normalize: Literal["debias_rank", "rank", "zscore"] = "zscore") -> Volume:
    """The embedded MNI ICBM152 2009a template at 2 mm with its 4-class label map.

    Args:
        normalize: the intensity normalization (:func:`lowrank.data.normalize_intensity`).

    Returns:
        A :class:`Volume` with ``image (1, 75, 93, 79)`` and ``label (1, 75, 93, 79)`` (0
        background, 1 CSF, 2 GM, 3 WM), RAS orientation (axis 0 = left→right).
    """
    with resources.files("lowrank.data").joinpath(TEMPLATE_FILE).open("rb") as fh:
        with np.load(fh, allow_pickle=False) as data:
            image, label = data["image"], data["label"]
            affine, classes = data["affine"], tuple(str(c) for c in data["classes"])
    return Volume(
        image=normalize_intensity(image[None].astype(np.float32), normalize),
        label=label[None].astype(np.uint8),
        affine=affine.astype(np.float64),
        classes=classes,
        name="mni152",
    )


def split_slab(
    volume: Volume, holdout: Sequence[float] = DEFAULT_HOLDOUT, axis: int = -1
) -> tuple[list[Volume], Volume]:
    """Cut a slab out of a volume for validation; the rest (one or two pieces) is for training.

    The slab is perpendicular to ``axis`` (default z: axial). The template is left–right
    symmetric, so splitting along x would leak the held-out half through its mirror image.

    Args:
        volume: the volume to split.
        holdout: ``(start, stop)`` fractions of the extent along ``axis``, ``0 <= start < stop <= 1``.
        axis: spatial axis (``-1`` = last = z).

    Returns:
        ``(train_pieces, val_slab)``; pieces thinner than one voxel are dropped.

    Raises:
        ValueError: fractions out of range or a slab of zero thickness.
    """
    start, stop = (float(f) for f in holdout)
    if not 0.0 <= start < stop <= 1.0:
        raise ValueError(
            f"holdout={tuple(holdout)} must be fractions 0 <= start < stop <= 1, e.g. (0.5, 0.7)"
        )
    ndim = volume.image.ndim - 1
    ax = axis % ndim
    size = volume.image.shape[1 + ax]
    lo, hi = round(start * size), round(stop * size)
    if hi <= lo:
        raise ValueError(f"holdout={tuple(holdout)} leaves no slice of the {size} along axis {ax}")

    def piece(a: int, b: int, tag: str) -> Volume:
        sl = [slice(None)] * (ndim + 1)
        sl[1 + ax] = slice(a, b)
        offset = [0] * ndim
        offset[ax] = a
        aff = volume.affine.copy()
        aff[:3, 3] = volume.affine[:3, :3] @ np.array(offset, dtype=float) + volume.affine[:3, 3]
        return replace(
            volume,
            image=volume.image[tuple(sl)],
            label=None if volume.label is None else volume.label[tuple(sl)],
            affine=aff,
            name=f"{volume.name}[{tag}]",
            offset=tuple(o + p for o, p in zip(volume.offset, offset)),
        )

    train = [piece(a, b, f"z{a}:{b}") for a, b in ((0, lo), (hi, size)) if b > a]
    return train, piece(lo, hi, f"z{lo}:{hi}")


def split_cases(
    volumes: Sequence[Volume], *, fold: int | None = None, val_cases: Sequence[str] | None = None
) -> tuple[list[Volume], list[Volume]]:
    """Whole-case training/validation split.

    Args:
        volumes: the cases (any order; named).
        fold: validate on fold ``k`` of :data:`FOLDS`: the case names sorted, shuffled by
            ``numpy.random.RandomState(12345)``, cut into 5 near-equal parts: the folds of
            nnU-Net (``KFold(5, shuffle=True, random_state=12345)``), so results compare.
        val_cases: validate on these case names.

    Default: the last ``max(1, round(0.2 n))`` cases by name.

    Raises:
        ValueError: fewer cases than folds, unknown names, or nothing left to train on.
    """
    ordered = sorted(volumes, key=lambda v: v.name)
    names = [v.name for v in ordered]
    if fold is not None:
        if len(ordered) < FOLDS:
            raise ValueError(
                f"--fold needs at least {FOLDS} cases, the data has {len(ordered)}: use --val-cases"
            )
        # nnU-Net's split: sklearn KFold(5, shuffle=True, random_state=12345) of the sorted names
        order = np.arange(len(ordered))
        np.random.RandomState(FOLD_SEED).shuffle(order)
        chosen = {names[i] for i in np.array_split(order, FOLDS)[fold]}
    elif val_cases:
        unknown = [n for n in val_cases if n not in names]
        if unknown:
            raise ValueError(
                f"--val-cases: no case named {', '.join(unknown)}; the cases are {', '.join(names)}"
            )
        chosen = set(val_cases)
    else:
        chosen = set(names[-max(1, round(0.2 * len(names))) :])
    train = [v for v in ordered if v.name not in chosen]
    val = [v for v in ordered if v.name in chosen]
    if not train:
        raise ValueError("every case is a validation case: leave some for training")
    return train, val


def read_nifti(
    paths: str | Path | Sequence[str | Path], *, nan_to_num: bool = False
) -> tuple[np.ndarray, object]:
    """Read one image (several files = several channels) as a RAS channel-first array.

    Args:
        paths: one NIfTI file (3-D, or 4-D with channels last) or a list of 3-D files.
        nan_to_num: set NaN/Inf voxels to 0 (default: refuse such a file).

    Returns:
        ``(array (C, *S) float32, nibabel image of the first file reoriented to RAS)``.

    Raises:
        FileNotFoundError: a missing file.
        ValueError: a file that is not a readable NIfTI image, NaN/Inf voxels (unless
            ``nan_to_num``), or channels of different shapes.
    """
    nib = require_nibabel()
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    arrays, first = [], None
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
        try:
            img = nib.as_closest_canonical(nib.load(str(path)))
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as err:  # nibabel raises several types for corrupt files
            raise ValueError(f"cannot read {path} as a NIfTI image: {err}") from None
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad and nan_to_num:
            data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
        elif bad:
            raise ValueError(
                f"{path} has {bad} NaN/Inf voxel(s) of {data.size}: fix the file, or pass --nan-to-num "
                "to set them to 0"
            )
        if data.ndim == 4:
            data = np.moveaxis(data, -1, 0)
        elif data.ndim in (2, 3):
            data = data[None]
        else:
            raise ValueError(
                f"{path} has {data.ndim} dimensions; expected a 3-D image (or 4-D with channels)"
            )
        first = first or img
        if arrays and data.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(f"{path} has shape {data.shape[1:]}, but {paths[0]} has {arrays[0].shape[1:]}")
        arrays.append(data)
    return np.concatenate(arrays, axis=0), first


def _stem(path: Path) -> str:
    return _NIFTI_RE.sub("", path.name)


def find_cases(data: str | Path) -> list[tuple[list[Path], Path]]:
    """The ``(image files, label file)`` pairs of a folder or a list file.

    Accepted layouts:

    - a folder with ``images/`` (or ``imagesTr/``) and ``labels/`` (or ``labelsTr/``), files
      paired by name; nnU-Net channel files ``case_0000.nii.gz``, ``case_0001.nii.gz`` pair
      with ``labels/case.nii.gz``;
    - a text file, one case per line: image file(s) then the label file, separated by commas
      or whitespace; ``#`` starts a comment; relative paths are relative to the list file.

    Raises:
        FileNotFoundError: the path, a listed file, or a label is missing.
        ValueError: no case found, or a line with fewer than two paths.
    """
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"--data {data}: no such file or folder")
    cases: list[tuple[list[Path], Path]] = []
    if data.is_dir():
        images = next((data / n for n in ("images", "imagesTr") if (data / n).is_dir()), None)
        labels = next((data / n for n in ("labels", "labelsTr") if (data / n).is_dir()), None)
        if images is None or labels is None:
            raise ValueError(
                f"--data {data}: a folder needs images/ and labels/ subfolders (or imagesTr/ and "
                "labelsTr/) with files paired by name, or pass a list file instead"
            )
        groups: dict[str, list[Path]] = {}
        for f in sorted(p for p in images.iterdir() if _NIFTI_RE.search(p.name)):
            stem = _stem(f)
            key = stem if (labels / f.name).exists() else re.sub(r"_\d{4}$", "", stem)
            groups.setdefault(key, []).append(f)
        for key, files in groups.items():
            label = next(
                (labels / f"{key}{ext}" for ext in (".nii.gz", ".nii") if (labels / f"{key}{ext}").exists()),
                None,
            )
            if label is None:
                raise FileNotFoundError(f"--data {data}: no label labels/{key}.nii.gz for {files[0].name}")
            cases.append((files, label))
    else:
        for number, line in enumerate(data.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = [p for p in re.split(r"[,\s]+", line) if p]
            if len(parts) < 2:
                raise ValueError(f"{data}:{number}: expected 'image[, image...], label', got {line!r}")
            files = [(data.parent / p) if not Path(p).is_absolute() else Path(p) for p in parts]
            for f in files:
                if not f.is_file():
                    raise FileNotFoundError(f"{data}:{number}: no such file {f}")
            cases.append((files[:-1], files[-1]))
    if not cases:
        raise ValueError(f"--data {data}: no NIfTI cases found")
    return cases
