"""``lowrank predict`` and ``lowrank evaluate``: a trained checkpoint on the user's NIfTI files.

The image is read with nibabel, reoriented to RAS (as in training), normalized like the
training data, segmented by sliding-window inference, put back in the input's orientation and
written with the input's affine and header. Every check (files, checkpoint, channels) happens
before anything is written, and the output is written atomically, so a failure leaves no file
behind and overwrites nothing.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import build_net
from ..data import normalize_intensity, read_nifti, require_nibabel
from .checkpoint import CheckpointError, load_checkpoint, net_info
from .infer import segmentation_metrics, sliding_window_predict

__all__ = ["load_model", "predict_array", "predict_file", "evaluate_files"]


def load_model(
    checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the net of a checkpoint from its spec and load its weights (eval mode).

    Returns:
        ``(model, net info)`` with ``in_channels``, ``out_channels``, ``spatial_dims``,
        ``patch``, ``classes``, ``spacing``.

    Raises:
        CheckpointError: missing/corrupt file, or weights that do not fit the spec's net.
    """
    state = load_checkpoint(checkpoint)
    info = net_info(state)
    try:
        model = build_net(
            state["spec"], info["in_channels"], info["out_channels"], spatial_dims=info["spatial_dims"]
        )
    except Exception as err:
        raise CheckpointError(f"{checkpoint}: cannot rebuild its net {state['spec']!r}: {err}") from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{checkpoint}: the weights do not fit the net {state['spec']!r} (a checkpoint of another "
            f"spec or version?): {str(err).splitlines()[0][:300]}"
        ) from None
    return model.to(device).eval(), info


def predict_array(
    model: nn.Module,
    info: dict,
    image: np.ndarray,
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    amp: str | None = None,
) -> np.ndarray:
    """Segment a raw (un-normalized) ``(C, X, Y, Z)`` RAS array; returns ``(X, Y, Z)`` uint8 classes.

    Raises:
        ValueError: the channel count differs from the checkpoint's.
    """
    if image.shape[0] != info["in_channels"]:
        raise ValueError(
            f"the image has {image.shape[0]} channel(s), the checkpoint's net expects {info['in_channels']}: "
            "give a 4-D NIfTI (channels last) or several files"
        )
    device = next(model.parameters()).device
    x = torch.from_numpy(normalize_intensity(image)).to(device)
    probs = sliding_window_predict(
        model, x, info["patch"], overlap=overlap, sw_batch_size=sw_batch_size, amp=amp
    )
    return probs.argmax(0).cpu().numpy().astype(np.uint8)


def _check_spacing(img, info: dict, path) -> None:
    spacing = np.asarray(img.header.get_zooms()[:3], dtype=float)
    want = np.asarray(info.get("spacing") or spacing, dtype=float)
    if spacing.shape == want.shape and not np.allclose(np.sort(spacing), np.sort(want), rtol=0.2):
        warnings.warn(
            f"{path} has voxels of {' x '.join(f'{v:g}' for v in spacing.round(2))} mm, the net was trained "
            f"on {' x '.join(f'{v:g}' for v in want.round(2))} mm: resample the image first for good results",
            stacklevel=3,
        )


def _to_original(seg_ras: np.ndarray, original) -> np.ndarray:
    """Undo ``as_closest_canonical``: a RAS array back to ``original``'s voxel order."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    back = ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(original.affine))
    return np.ascontiguousarray(apply_orientation(seg_ras, back))


def _write_atomic(img, out: Path) -> None:
    nib = require_nibabel()
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if out.name.endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def predict_file(
    checkpoint, images, out, *, device: str = "cpu", overlap: float = 0.5, amp: str | None = None
) -> np.ndarray:
    """Segment NIfTI image(s) and write the label map with the input's affine.

    Args:
        checkpoint: a ``lowrank train`` checkpoint.
        images: one NIfTI file (3-D, or 4-D with channels last) or a list (one per channel).
        out: output ``.nii.gz`` (or ``.nii``).

    Returns:
        The segmentation in the input's voxel order, ``(X, Y, Z)`` uint8.

    Raises:
        FileNotFoundError, ValueError, CheckpointError: before anything is written.
    """
    nib = require_nibabel()
    images = [images] if isinstance(images, (str, Path)) else list(images)
    out = Path(out)
    if not (out.name.endswith(".nii.gz") or out.name.endswith(".nii")):
        raise ValueError(f"-o {out}: the output must be a .nii.gz or .nii file")
    if any(out.resolve() == Path(p).resolve() for p in images):
        raise ValueError(f"-o {out} is an input image: choose another output file")
    model, info = load_model(checkpoint, device)
    array, _ = read_nifti(images)
    original = nib.load(str(images[0]))
    _check_spacing(original, info, images[0])
    seg = _to_original(predict_array(model, info, array, overlap=overlap, amp=amp), original)
    header = original.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_intent("label")
    seg_img = nib.Nifti1Image(seg, original.affine, header)
    seg_img.set_qform(original.affine, int(original.header["qform_code"]) or 1)
    seg_img.set_sform(original.affine, int(original.header["sform_code"]) or 1)
    _write_atomic(seg_img, out)
    return seg


def evaluate_files(prediction, label, *, classes=None) -> dict[str, dict[str, float]]:
    """Dice and HD95 (mm) per class of a predicted label map against a reference label map.

    Raises:
        FileNotFoundError: a missing file. ValueError: different shapes or affines.
    """
    nib = require_nibabel()
    for p in (prediction, label):
        if not Path(p).is_file():
            raise FileNotFoundError(f"no such file: {p}")
    pred_img, label_img = nib.load(str(prediction)), nib.load(str(label))
    pred, ref = np.asarray(pred_img.dataobj), np.asarray(label_img.dataobj)
    if pred.shape != ref.shape:
        raise ValueError(f"{prediction} has shape {pred.shape}, {label} has {ref.shape}")
    if not np.allclose(pred_img.affine, label_img.affine, atol=1e-3):
        raise ValueError(f"{prediction} and {label} have different affines (not on the same grid)")
    pred, ref = np.rint(pred).astype(np.int64), np.rint(ref).astype(np.int64)
    k = int(max(pred.max(), ref.max())) + 1
    names = list(classes) if classes else ["background", *(f"class{i}" for i in range(1, k))]
    if len(names) < k:
        raise ValueError(f"{len(names)} class names for labels up to {k - 1}")
    spacing = [float(s) for s in label_img.header.get_zooms()[:3]]
    return segmentation_metrics(pred, ref, names, spacing)
