"""``lowrank evaluate``: Dice and HD95 per class of predicted label maps (files or folders).

Like ``nnUNetv2_evaluate_folder``: the reference folder's cases are paired with the prediction
folder's files by name, every case is scored per class with MONAI's metrics, and the per-case
values and their means are written to ``summary.json`` and ``metrics.csv``. Label values are
checked against the classes first (a stray value is an error naming the file, not a huge
one-hot array), as are NaN voxels and grids that differ.

Example:
    >>> from lowrank.train.evaluate import evaluate  # doctest: +SKIP
    >>> result = evaluate("predictions", "labelsTs", classes=["background", "tumour"])  # doctest: +SKIP
    >>> result["mean"]["tumour"]["dice"]  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import require_nibabel
from .infer import segmentation_metrics
from .report import write_text_atomic

__all__ = ["evaluate", "evaluate_files", "format_table", "class_names"]

#: without class names, reference labels above this are refused as not class indices
MAX_LABEL = 1000


def class_names(classes: Sequence[str] | None) -> list[str] | None:
    """Class names as given, or read from a ``dataset.json`` or a ``checkpoint.pt`` (one path)."""
    if not classes:
        return None
    classes = list(classes)
    if len(classes) == 1 and classes[0].endswith(".json"):
        from ..data.datasets import dataset_names

        names = dataset_names(classes[0])[0]
        if not names:
            raise ValueError(f"--classes {classes[0]}: no 'labels' in this file")
        return list(names)
    if len(classes) == 1 and classes[0].endswith(".pt"):
        from .checkpoint import load_checkpoint, net_info

        return list(net_info(load_checkpoint(classes[0]))["classes"])
    return classes


def _read_labels(path: Path, role: str) -> tuple[np.ndarray, Any]:
    nib = require_nibabel()
    if not path.is_file():
        raise FileNotFoundError(f"no such {role} file: {path}")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises several types for corrupt files
        raise ValueError(f"cannot read {path} as a NIfTI label map: {err}") from None
    if data.dtype.kind == "f":
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise ValueError(f"{role} {path} has {bad} NaN/Inf voxel(s): a label map holds class indices")
        rounded = np.rint(data)
        if np.abs(rounded - data).max() > 1e-3:
            raise ValueError(f"{role} {path} holds non-integer values: a label map holds class indices")
        data = rounded
    if data.min() < 0:
        raise ValueError(f"{role} {path} has negative label values ({int(data.min())})")
    return data.astype(np.int64), img


def _check_values(data: np.ndarray, k: int, path: Path, role: str, names: Sequence[str]) -> None:
    top = int(data.max())
    if top >= k:
        count = int(np.count_nonzero(data >= k))
        raise ValueError(
            f"{role} {path} has label value {top} ({count} voxel(s) >= {k}), but there are {k} classes "
            f"({', '.join(names)}): fix the label map, or give the class names with --classes"
        )


def _pairs(prediction: Path, reference: Path) -> list[tuple[str, Path, Path]]:
    if prediction.is_dir() != reference.is_dir():
        raise ValueError(
            f"{prediction} and {reference}: give two label-map files or two folders (predictions, references)"
        )
    if not prediction.is_dir():
        return [(prediction.name, prediction, reference)]
    refs = sorted(p for p in reference.iterdir() if p.name.endswith((".nii.gz", ".nii")))
    if not refs:
        raise FileNotFoundError(f"{reference}: no .nii.gz or .nii reference label maps in this folder")
    missing = [r.name for r in refs if not (prediction / r.name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{prediction}: no prediction for {len(missing)} of {len(refs)} reference case(s): "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    return [(r.name, prediction / r.name, r) for r in refs]


def _finite(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


def evaluate(
    prediction: str | Path,
    reference: str | Path,
    *,
    classes: Sequence[str] | None = None,
    output: str | Path | None = None,
) -> dict[str, Any]:
    """Score predicted label maps against references: per case and mean Dice / HD95 per class.

    Args:
        prediction, reference: two label-map files, or two folders paired by file name (every
            reference needs a prediction; other files in the prediction folder are ignored).
        classes: class names (background first), or one path to a ``dataset.json`` or
            ``checkpoint.pt``; default: the ``dataset.json`` next to a reference folder (as
            for ``labelsTs/``), else ``background, class1, …`` up to the largest reference label.
        output: the summary JSON to write (``metrics.csv`` next to it); default for folders:
            ``PREDICTION/summary.json``; for two files: nothing written.

    Returns:
        ``{"classes", "cases": [{"case", "prediction", "reference", "metrics"}], "mean":
        {class: {"dice", "hd95"}}, "mean_dice", "written"}`` (HD95 means over finite values).

    Raises:
        FileNotFoundError, ValueError: before anything is written.
    """
    prediction, reference = Path(prediction), Path(reference)
    for p in (prediction, reference):
        if not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
    pairs = _pairs(prediction, reference)
    names = class_names(classes)
    description = reference.parent / "dataset.json"
    if names is None and reference.is_dir() and description.is_file():  # labelsTs/ of a dataset
        from ..data.datasets import dataset_names

        names = list(dataset_names(description)[0] or []) or None
    loaded = []
    for case, pred_path, ref_path in pairs:  # every file is read and checked before any metric
        ref, ref_img = _read_labels(ref_path, "reference")
        pred, pred_img = _read_labels(pred_path, "prediction")
        if pred.shape != ref.shape:
            raise ValueError(
                f"{pred_path} has shape {pred.shape}, {ref_path} has {ref.shape}: not on the same grid"
            )
        if not np.allclose(pred_img.affine, ref_img.affine, atol=1e-3):
            raise ValueError(f"{pred_path} and {ref_path} have different affines (not on the same grid)")
        loaded.append((case, pred_path, ref_path, pred, ref, ref_img))
    if names is None:
        top = max(int(ref.max()) for *_, ref, _ in loaded)
        if top > MAX_LABEL:
            worst = next(r for _, _, r, _, ref, _ in loaded if int(ref.max()) == top)
            raise ValueError(
                f"reference {worst} has label value {top}: give the class names with --classes "
                "(or a dataset.json) if these are class indices"
            )
        names = ["background", *(f"class{i}" for i in range(1, top + 1))]
    k = len(names)
    for _, pred_path, ref_path, pred, ref, _ in loaded:
        _check_values(ref, k, ref_path, "reference", names)
        _check_values(pred, k, pred_path, "prediction", names)
    if output is None and prediction.is_dir():
        output = prediction / "summary.json"
    if output is not None:
        output = Path(output)
        for parent in output.parents:
            if parent.exists() and not parent.is_dir():
                raise NotADirectoryError(f"-o {output}: {parent} is a file, not a folder")
        if output.is_dir():
            raise IsADirectoryError(f"-o {output} is a folder: give a file name such as summary.json")
    cases: list[dict[str, Any]] = []
    for case, pred_path, ref_path, pred, ref, ref_img in loaded:
        spacing = [float(s) for s in ref_img.header.get_zooms()[:3]]
        metrics = segmentation_metrics(pred, ref, names, spacing)
        cases.append(
            {"case": case, "prediction": str(pred_path), "reference": str(ref_path), "metrics": metrics}
        )
    mean = {}
    for name in names[1:]:
        dice = [c["metrics"][name]["dice"] for c in cases]
        hd = [c["metrics"][name]["hd95"] for c in cases if math.isfinite(c["metrics"][name]["hd95"])]
        mean[name] = {"dice": float(np.mean(dice)), "hd95": float(np.mean(hd)) if hd else math.inf}
    result: dict[str, Any] = {
        "classes": list(names),
        "cases": cases,
        "mean": mean,
        "mean_dice": float(np.mean([m["dice"] for m in mean.values()])) if mean else math.nan,
        "written": [],
    }
    if output is not None:
        summary = {
            "classes": result["classes"],
            "mean": {c: {k: _finite(v) for k, v in m.items()} for c, m in mean.items()},
            "mean_dice": _finite(result["mean_dice"]),
            "cases": [
                {**c, "metrics": {n: {k: _finite(v) for k, v in m.items()} for n, m in c["metrics"].items()}}
                for c in cases
            ],
        }
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["case", "class", "dice", "hd95_mm"])
        for c in cases:
            for n, m in c["metrics"].items():
                writer.writerow([c["case"], n, f"{m['dice']:.6f}", f"{m['hd95']:.6f}"])
        for n, m in mean.items():
            writer.writerow(["mean", n, f"{m['dice']:.6f}", f"{m['hd95']:.6f}"])
        csv_path = output.with_name("metrics.csv")
        write_text_atomic(output, json.dumps(summary, indent=2) + "\n")
        write_text_atomic(csv_path, buffer.getvalue())
        result["written"] = [str(output), str(csv_path)]
    return result


def format_table(result: dict[str, Any]) -> str:
    """The summary table: one row per class (mean over cases), Dice and HD95 (mm)."""
    cases = len(result["cases"])
    lines = [
        f"{'class':<16}{'Dice':>8}{'HD95 (mm)':>12}" + (f"   ({cases} cases, mean)" if cases > 1 else "")
    ]
    for name, m in result["mean"].items():
        hd = f"{m['hd95']:.2f}" if math.isfinite(m["hd95"]) else "inf"
        lines.append(f"{name:<16}{m['dice']:>8.4f}{hd:>12}")
    if result["mean"]:
        lines.append(f"{'mean':<16}{result['mean_dice']:>8.4f}")
    return "\n".join(lines)


def evaluate_files(prediction, label, *, classes=None) -> dict[str, dict[str, float]]:
    """Dice and HD95 (mm) per class of one predicted label map against a reference label map.

    Raises:
        FileNotFoundError: a missing file. ValueError: different shapes or affines, label
            values outside the classes, NaN voxels.
    """
    return evaluate(prediction, label, classes=classes)["cases"][0]["metrics"]
