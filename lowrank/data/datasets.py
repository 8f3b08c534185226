"""Datasets of NIfTI cases: nnU-Net v2 / Decathlon folders, MONAI datalists, plain folders.

Layouts read by :func:`find_dataset` (and so by ``lowrank train --data``):

- an **nnU-Net v2 raw / Medical Segmentation Decathlon** folder: ``dataset.json`` with
  ``channel_names`` (or ``modality``), ``labels`` (``{"background": 0, "tumour": 1}`` or
  ``{"0": "background", "1": "tumour"}``) and ``file_ending``; ``imagesTr/CASE_0000.nii.gz``
  (one file per channel, or one 4-D file per case as in the Decathlon) and
  ``labelsTr/CASE.nii.gz``; a ``training`` list in ``dataset.json`` is used when present;
- a **MONAI datalist** JSON file: ``{"training": [{"image": ..., "label": ...}, ...]}`` (an
  image may be a list of channel files; paths relative to the JSON file), optionally with a
  ``validation`` list, ``labels`` and ``channel_names``/``modality``;
- a folder with ``images/`` and ``labels/``, or a text list file (see :func:`find_cases`).

Every case is read RAS-oriented and checked (finite voxels, integer labels, shapes), resampled
to one voxel size when the cases differ (MONAI ``Spacingd``: trilinear for images, nearest for
labels; the median spacing unless one is given), and normalized per channel
(:func:`lowrank.data.normalize_intensity`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .volumes import Volume, find_cases, normalize_intensity, read_nifti

__all__ = [
    "Case",
    "Dataset",
    "dataset_names",
    "find_dataset",
    "group_channel_files",
    "load_cases",
    "load_dataset",
    "resample",
]

_NIFTI_RE = re.compile(r"\.nii(\.gz)?$")
_CHANNEL_RE = re.compile(r"_(\d{4})$")


@dataclass
class Case:
    """One case: its channel files (in channel order) and its label file (``None``: unlabelled)."""

    name: str
    images: list[Path]
    label: Path | None = None


@dataclass
class Dataset:
    """The cases of a dataset and what the dataset says about them.

    Attributes:
        cases: the cases, sorted by name.
        classes: class names by label value (``None``: not given by the dataset).
        channels: channel names (``None``: not given).
        validation: names of the dataset's own validation cases (``None``: none given).
        volumes: the loaded volumes (:func:`load_dataset` only).
        spacing: the voxel size every volume was resampled to (``None``: not resampled).
    """

    cases: list[Case]
    classes: tuple[str, ...] | None = None
    channels: tuple[str, ...] | None = None
    validation: tuple[str, ...] | None = None
    volumes: list[Volume] | None = None
    spacing: tuple[float, ...] | None = None


def _stem(path: Path) -> str:
    return _NIFTI_RE.sub("", path.name)


def group_channel_files(files: Sequence[str | Path]) -> list[Case]:
    """Group NIfTI files into cases by name: ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz`` → ``CASE``.

    A file without a 4-digit channel suffix is a case of its own (a 3-D image, or 4-D with the
    channels last).

    Raises:
        ValueError: a case whose channel numbers are not 0, 1, … without a gap.
    """
    groups: dict[str, list[tuple[int, Path]]] = {}
    for f in sorted(Path(p) for p in files):
        match = _CHANNEL_RE.search(_stem(f))
        key = _stem(f)[: match.start()] if match else _stem(f)
        groups.setdefault(key, []).append((int(match.group(1)) if match else 0, f))
    cases = []
    for key, items in sorted(groups.items()):
        numbers = sorted(n for n, _ in items)
        if numbers != list(range(len(items))):
            raise ValueError(
                f"case {key}: channel files numbered {numbers}; expected _0000, _0001, … without a gap"
            )
        cases.append(Case(key, [f for _, f in sorted(items)]))
    return cases


def _names(mapping, what: str, source) -> tuple[str, ...]:
    """``{"0": "T1", "1": "T2"}`` (index → name) or ``{"bg": 0, "fg": 1}`` (name → index) as names."""
    if isinstance(mapping, (list, tuple)):
        return tuple(str(m) for m in mapping)
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"{source}: {what} must be a mapping such as {{'0': 'name'}}, got {mapping!r}")
    pairs = []
    for key, value in mapping.items():
        if str(key).isdigit() and isinstance(value, str):
            pairs.append((int(key), value))
        elif isinstance(value, int) and not isinstance(value, bool):
            pairs.append((value, str(key)))
        else:
            raise ValueError(
                f"{source}: {what} entry {key!r}: {value!r} is not a name/index pair "
                "(region-based labels such as [1, 2, 3] are not supported)"
            )
    pairs.sort()
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise ValueError(
            f"{source}: {what} must be numbered 0, 1, … without a gap, got {[i for i, _ in pairs]}"
        )
    return tuple(name for _, name in pairs)


def _datalist_cases(entries, base: Path, source, key: str) -> list[Case]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "image" in e for e in entries):
        raise ValueError(f"{source}: {key!r} must be a list of {{'image': ..., 'label': ...}} entries")
    cases = []
    for number, entry in enumerate(entries):
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        paths = [Path(p) if Path(p).is_absolute() else base / p for p in images]
        if len(paths) == 1 and not paths[0].exists():  # nnU-Net v1 lists CASE.nii.gz for CASE_0000.nii.gz …
            stem, ending = _stem(paths[0]), paths[0].name[len(_stem(paths[0])) :]
            channels = sorted(paths[0].parent.glob(f"{stem}_[0-9][0-9][0-9][0-9]{ending}"))
            paths = channels or paths
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"{source}: {key}[{number}]: no such image file {p}")
        label = entry.get("label")
        label = None if label is None else (Path(label) if Path(label).is_absolute() else base / label)
        if label is not None and not label.is_file():
            raise FileNotFoundError(f"{source}: {key}[{number}]: no such label file {label}")
        cases.append(Case(_case_name(paths), paths, label))
    names = [c.name for c in cases]
    if len(set(names)) < len(names):  # e.g. every case an image.nii.gz in its own folder
        for case in cases:
            case.name = f"{case.images[0].parent.name}/{case.name}"
        if len({c.name for c in cases}) < len(cases):
            raise ValueError(f"{source}: {key} has several cases of the same file name")
    return cases


def _case_name(paths: Sequence[Path]) -> str:
    """``CASE`` of ``CASE_0000.nii.gz``; the common stem of channel files (``BraTS_001_t1``,
    ``BraTS_001_flair`` → ``BraTS_001``)."""
    stems = [_stem(p) for p in paths]
    if len(stems) == 1:
        return _CHANNEL_RE.sub("", stems[0])
    prefix = os.path.commonprefix(stems)  # noqa: RUF071 (characters of file names, meant)
    cut = max(prefix.rfind(c) for c in "_-.")
    return (prefix[:cut] if cut > 0 else prefix) or _CHANNEL_RE.sub("", stems[0])


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def dataset_names(path: str | Path) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """``(class names, channel names)`` of a ``dataset.json`` or datalist (``None``: not given).

    Raises:
        FileNotFoundError: no such file. ValueError: not JSON, or malformed ``labels``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return _from_description(_read_json(path), path)


def _from_description(meta: dict, source: Path) -> tuple:
    channels = meta.get("channel_names", meta.get("modality"))
    classes = meta.get("labels")
    return (
        None if classes is None else _names(classes, "labels", source),
        None if channels is None else _names(channels, "channel_names", source),
    )


def find_dataset(data: str | Path) -> Dataset:
    """The cases of a dataset folder or file (see the module docstring for the layouts).

    Raises:
        FileNotFoundError: the dataset, a listed image or a label is missing.
        ValueError: a malformed ``dataset.json`` or datalist, non-NIfTI files, no case found.
    """
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"--data {data}: no such file or folder")
    description = data / "dataset.json" if data.is_dir() else data
    if description.suffix == ".json" and description.is_file():
        meta = _read_json(description)
        classes, channels = _from_description(meta, description)
        ending = str(meta.get("file_ending", ".nii.gz"))
        if not _NIFTI_RE.search(f"x{ending}"):
            raise ValueError(
                f"{description}: file_ending {ending!r}: lowrank reads NIfTI files (.nii.gz, .nii); "
                "convert the images first"
            )
        base = description.parent
        validation = None
        if "training" in meta:
            cases = _datalist_cases(meta["training"], base, description, "training")
            if isinstance(meta.get("validation"), list):
                val = _datalist_cases(meta["validation"], base, description, "validation")
                validation = tuple(c.name for c in val)
                cases += [c for c in val if c.name not in {t.name for t in cases}]
        elif data.is_dir():
            images, labels = data / "imagesTr", data / "labelsTr"
            if not images.is_dir() or not labels.is_dir():
                raise ValueError(f"--data {data}: dataset.json found but no imagesTr/ and labelsTr/ folders")
            cases = group_channel_files(p for p in images.iterdir() if p.name.endswith(ending))
            for case in cases:
                case.label = labels / f"{case.name}{ending}"
                if not case.label.is_file():
                    raise FileNotFoundError(
                        f"--data {data}: no label labelsTr/{case.name}{ending} for {case.images[0].name}"
                    )
        else:
            raise ValueError(
                f"{description}: a datalist needs a 'training' list of {{'image': ..., 'label': ...}}"
            )
        if channels is not None:
            for case in cases:
                if len(case.images) not in (1, len(channels)):
                    raise ValueError(
                        f"{description}: case {case.name} has {len(case.images)} channel files, "
                        f"the dataset has {len(channels)} channels {channels}"
                    )
        if not cases:
            raise ValueError(f"--data {data}: no cases found")
        if any(c.label is None for c in cases):
            raise ValueError(f"{description}: every training case needs a 'label'")
        return Dataset(sorted(cases, key=lambda c: c.name), classes, channels, validation)
    pairs = find_cases(data)
    cases = [Case(_CHANNEL_RE.sub("", _stem(images[0])), list(images), label) for images, label in pairs]
    return Dataset(sorted(cases, key=lambda c: c.name))


def resample(
    image: np.ndarray, affine: np.ndarray, spacing: Sequence[float], *, label: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a ``(C, X, Y, Z)`` array to voxels of ``spacing`` mm (MONAI ``Spacing``).

    Args:
        image: channel-first array with its ``(4, 4)`` affine.
        spacing: target voxel size per axis in mm.
        label: nearest-neighbour interpolation (label maps) instead of trilinear.

    Returns:
        ``(array, affine)`` of the resampled volume (same field of view).
    """
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    out: Any = Spacing(pixdim=list(spacing), mode="nearest" if label else "bilinear")(
        MetaTensor(np.asarray(image, dtype=np.float32), affine=np.asarray(affine, dtype=np.float64))
    )
    return np.asarray(out.as_tensor().numpy(), dtype=np.float32), np.asarray(out.affine, dtype=np.float64)


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)


def load_dataset(
    data: str | Path,
    *,
    classes: Sequence[str] | None = None,
    spacing: Sequence[float] | None = None,
    nan_to_num: bool = False,
    normalize: Literal["debias_rank", "rank", "zscore"] = "zscore",
) -> Dataset:
    """Read every case of a dataset (see :func:`find_dataset`) as normalized volumes.

    Args:
        data: dataset folder, datalist JSON, or list file.
        classes: class names (default: the dataset's, else ``background, class1, …``).
        spacing: resample every case to this voxel size (mm); default: the median spacing of
            the cases when they differ, else none.
        nan_to_num: set NaN/Inf voxels to 0 instead of refusing the file.
        normalize: the intensity normalization (:func:`lowrank.data.normalize_intensity`).

    Returns:
        The :class:`Dataset` with ``volumes`` (one per case, RAS) and ``spacing`` filled in.

    Raises:
        ValueError: non-finite voxels, labels that are not class indices, shape mismatches,
            different channel counts, more label values than class names.
    """
    dataset = find_dataset(data)
    raw = []
    for case in dataset.cases:
        image, img = read_nifti(case.images, nan_to_num=nan_to_num)
        label, _ = read_nifti(case.label, nan_to_num=nan_to_num)
        if label.shape[0] != 1 or label.shape[1:] != image.shape[1:]:
            raise ValueError(
                f"label {case.label} has shape {label.shape[1:]} (channels {label.shape[0]}), "
                f"image {case.images[0]} has {image.shape[1:]}: they must match, with one label channel"
            )
        if image.ndim != 4:
            raise ValueError(f"{case.images[0]} is a {image.ndim - 1}-D image: lowrank trains on 3-D volumes")
        rounded = np.rint(label)
        if np.abs(rounded - label).max() > 1e-3 or rounded.min() < 0:
            raise ValueError(f"label {case.label} must hold non-negative integer class indices")
        raw.append((case, image, rounded, np.asarray(img.affine, dtype=np.float64)))  # type: ignore[attr-defined]
    channels = {image.shape[0] for _, image, _, _ in raw}
    if len(channels) > 1:
        raise ValueError(f"--data {data}: cases have different channel counts {sorted(channels)}")
    spacings = np.array([_spacing(affine) for *_, affine in raw])
    target = None
    if spacing is not None:
        target = tuple(float(s) for s in spacing)
    elif not np.allclose(spacings, spacings[0], rtol=1e-3, atol=1e-4):
        target = tuple(float(s) for s in np.median(spacings, axis=0))
    top = max(int(label.max()) for _, _, label, _ in raw)
    names = tuple(classes) if classes else dataset.classes
    names = names or ("background", *(f"class{i}" for i in range(1, top + 1)))
    if len(names) <= top:
        worst = next(c for c, _, label, _ in raw if int(label.max()) == top)
        raise ValueError(
            f"label {worst.label} has label value {top}, but there are {len(names)} classes {tuple(names)}: "
            "fix the label map or give the class names (--classes or the dataset's labels)"
        )
    volumes = []
    for (case, image, label, affine), own in zip(raw, spacings):
        if target is not None and not np.allclose(own, target, rtol=1e-3, atol=1e-4):
            image, new_affine = resample(image, affine, target)
            label, _ = resample(label, affine, target, label=True)
            affine = new_affine
        volumes.append(
            Volume(
                image=normalize_intensity(image, normalize),
                label=np.rint(label).astype(np.int64),
                affine=affine,
                classes=tuple(names),
                name=case.name,
            )
        )
    channel_names = dataset.channels or tuple(str(i) for i in range(volumes[0].image.shape[0]))
    return replace(dataset, volumes=volumes, classes=tuple(names), channels=channel_names, spacing=target)


def load_cases(data: str | Path, classes: Sequence[str] | None = None) -> list[Volume]:
    """The normalized volumes of a dataset (:func:`load_dataset` with its defaults)."""
    return load_dataset(data, classes=classes).volumes
