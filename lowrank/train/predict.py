"""``lowrank predict``: a trained checkpoint on the user's NIfTI files (one case, or a folder).

Each image is read with nibabel, reoriented to RAS (as in training), checked (channel count,
3-D, finite voxels, a zero background when the net was trained on skull-stripped images),
resampled to the training voxel size when it differs (MONAI ``Spacing``), normalized like the
training data, segmented by sliding-window inference (optionally averaged over flips), its
class probabilities resampled back to the input grid, put back in the input's orientation and
written with the input's affine and header. Every case is checked before the first file is
written, and each output is written atomically, so a failure leaves no file behind and
overwrites nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import build_net
from ..data import group_channel_files, normalize_intensity, read_nifti, require_nibabel, resample
from ..files import atomic_path
from .checkpoint import CheckpointError, load_checkpoint, net_info
from .evaluate import evaluate_files
from .infer import autocast_context, sliding_window_predict

__all__ = ["pick_device", "load_model", "predict_array", "predict_file", "predict_cases", "evaluate_files"]

#: a net trained on images with at least this fraction of zero (background) voxels …
_STRIPPED = 0.2
#: … refuses images with fewer zero voxels than this (unless ``allow_background``)
_MIN_ZERO = 0.01


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or ``None``): CUDA when torch sees a GPU, else the CPU; other values as given.

    Raises:
        ValueError: ``cuda`` asked without a visible GPU.
    """
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return device


def load_model(
    checkpoint: str | Path, device: str | torch.device = "auto"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the net of a checkpoint from its spec and load its weights (eval mode) on
    ``device`` (``"auto"``: CUDA when available).

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
    return model.to(pick_device(device)).eval(), info


def predict_array(
    model: nn.Module,
    info: dict,
    image: np.ndarray,
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    amp: str | None = None,
    tta: bool = False,
    probabilities: bool = False,
) -> np.ndarray:
    """Segment a raw (un-normalized) ``(C, X, Y, Z)`` RAS array on the training grid.

    The image is normalized as the net's training data was (``info["normalize"]``, see
    :func:`lowrank.data.normalize_intensity`).

    Args:
        tta: average the probabilities over flips along every spatial axis (2^3 passes in 3-D).
        probabilities: return the ``(K, X, Y, Z)`` float32 probabilities instead of the labels.

    Returns:
        ``(X, Y, Z)`` uint8 classes (or the probabilities).

    Raises:
        ValueError: the channel count differs from the checkpoint's.
    """
    if image.shape[0] != info["in_channels"]:
        raise ValueError(
            f"the image has {image.shape[0]} channel(s), the checkpoint's net expects {info['in_channels']}"
            f"{_channel_names(info)}: give a 4-D NIfTI (channels last) or one file per channel"
        )
    device = next(model.parameters()).device
    x = torch.from_numpy(normalize_intensity(image, info.get("normalize", "zscore"))).to(device)
    axes = list(range(1, 1 + len(info["patch"]))) if tta else []
    probs = None
    for n in range(len(axes) + 1):
        for flip in itertools.combinations(axes, n):
            xi = x.flip(flip) if flip else x
            p = sliding_window_predict(
                model, xi, info["patch"], overlap=overlap, sw_batch_size=sw_batch_size, amp=amp
            )
            p = p.flip(flip) if flip else p
            probs = p if probs is None else probs + p
    count = 2 ** len(axes)
    probs = probs / count
    if probabilities:
        return probs.cpu().numpy().astype(np.float32)
    return probs.argmax(0).cpu().numpy().astype(np.uint8)


def _channel_names(info: dict) -> str:
    names = info.get("channels")
    return f" ({', '.join(names)})" if names else ""


def _to_original(seg_ras: np.ndarray, original) -> np.ndarray:
    """Undo ``as_closest_canonical``: a RAS array (spatial axes first) back to ``original``'s order."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    back = ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(original.affine))
    return np.ascontiguousarray(apply_orientation(seg_ras, back))


def _write_atomic(img, out: Path) -> None:
    nib = require_nibabel()
    suffix = ".nii.gz" if out.name.endswith(".gz") else ".nii"  # nibabel picks the format by name
    with atomic_path(out, suffix=suffix) as tmp:
        nib.save(img, tmp)


def _check_output_path(out: Path, folder: bool) -> None:
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir() and (parent != out or folder):
            raise NotADirectoryError(f"-o {out}: {parent} is a file, not a folder: choose another output")
        if parent.exists():
            break
    if not folder and out.is_dir():
        raise IsADirectoryError(
            f"-o {out} is a folder: give an output file (seg.nii.gz), or use -i INPUT_FOLDER for many cases"
        )
    if not folder and not (out.name.endswith(".nii.gz") or out.name.endswith(".nii")):
        raise ValueError(f"-o {out}: the output must be a .nii.gz or .nii file")


def _cases(inputs: Sequence[str | Path]) -> list[tuple[str, list[Path]]]:
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.name.endswith((".nii.gz", ".nii")))
            if not found:
                raise FileNotFoundError(f"-i {item}: no .nii.gz or .nii file in this folder")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"-i {item}: no such file or folder")
    return [(case.name, case.images) for case in group_channel_files(files)]


def _prepare(files: list[Path], info: dict, *, nan_to_num: bool, allow_background: bool):
    """Read and check one case: ``(raw RAS array, RAS affine, original nibabel image)``."""
    nib = require_nibabel()
    if any(str(f).endswith(".pt") for f in files):
        raise ValueError(
            f"{files[0]} is not an image: the checkpoint comes first (lowrank predict CKPT IMAGE -o OUT)"
        )
    array, ras = read_nifti(files, nan_to_num=nan_to_num)
    if array.ndim != 4:
        raise ValueError(
            f"{files[0]} is a {array.ndim - 1}-D image of shape {array.shape[1:]}: lowrank predict segments "
            "3-D volumes (a 2-D net runs on every axial slice of one)"
        )
    if array.shape[0] != info["in_channels"]:
        raise ValueError(
            f"{files[0]}: {array.shape[0]} channel(s), the checkpoint's net expects {info['in_channels']}"
            f"{_channel_names(info)}: give a 4-D NIfTI (channels last) or one file per channel "
            "(CASE_0000.nii.gz, CASE_0001.nii.gz, ...)"
        )
    trained = float(info.get("zero_fraction") or 0.0)
    zero = float(np.mean(np.all(array == 0, axis=0)))
    if trained >= _STRIPPED and zero < _MIN_ZERO and not allow_background:
        raise ValueError(
            f"{files[0]}: {100 * zero:.1f}% of the voxels are zero, but the net was trained on images with a "
            f"zero background ({100 * trained:.0f}% zero: skull-stripped or masked): mask the image the same "
            "way first, or pass --allow-background to segment it anyway"
        )
    return array, np.asarray(ras.affine, dtype=np.float64), nib.load(str(files[0]))


def _predict_case(model, info, array, affine, *, probabilities, **options) -> np.ndarray:
    """Probabilities ``(K, X, Y, Z)`` on the case's own RAS grid (resampled when needed)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    want = np.asarray(info.get("spacing") or spacing, dtype=float)
    if want.shape == spacing.shape and not np.allclose(spacing, want, rtol=1e-2):
        from monai.data import MetaTensor
        from monai.transforms import SpatialResample

        moved, moved_affine = resample(array, affine, want)
        probs = predict_array(model, info, moved, probabilities=True, **options)
        back = SpatialResample(mode="bilinear", padding_mode="border")(
            MetaTensor(torch.from_numpy(probs), affine=torch.as_tensor(moved_affine)),
            dst_affine=torch.as_tensor(affine),
            spatial_size=array.shape[1:],
        )
        probs = np.asarray(back.as_tensor().numpy(), dtype=np.float32)
    else:
        probs = predict_array(model, info, array, probabilities=True, **options)
    return probs if probabilities else probs.argmax(0).astype(np.uint8)


def _write(array: np.ndarray, original, out: Path, *, label: bool) -> None:
    nib = require_nibabel()
    header = original.header.copy()
    if label:
        header.set_data_dtype(np.uint8)
        header.set_intent("label")
    else:
        header.set_data_dtype(np.float32)
        header.set_intent("none")
    img = nib.Nifti1Image(array, original.affine, header)
    img.set_qform(original.affine, int(original.header["qform_code"]) or 1)
    img.set_sform(original.affine, int(original.header["sform_code"]) or 1)
    _write_atomic(img, out)


def predict_cases(
    checkpoint,
    *,
    inputs: Sequence[str | Path] | None = None,
    images: Sequence[str | Path] | None = None,
    output: str | Path,
    device: str = "auto",
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    amp: str | None = None,
    tta: bool = False,
    save_probabilities: bool = False,
    allow_background: bool = False,
    nan_to_num: bool = False,
    progress: bool = False,
) -> list[tuple[Path, str]]:
    """Segment one case (``images``: its channel files, ``output`` a file) or many (``inputs``:
    folders or files grouped by nnU-Net channel names, ``output`` a folder).

    Returns:
        ``[(written label map, "class: voxels, ...")]`` per case.

    Raises:
        FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, CheckpointError:
            before anything is written.
    """
    from tqdm.auto import tqdm

    if bool(inputs) == bool(images):
        raise ValueError(
            "give either the image file(s) of one case (lowrank predict CKPT image.nii.gz -o seg.nii.gz) "
            "or -i with folders/files of cases (lowrank predict CKPT -i FOLDER -o OUT_FOLDER)"
        )
    if str(checkpoint).endswith((".nii", ".nii.gz")):
        raise ValueError(
            f"{checkpoint} is an image: the checkpoint comes first (lowrank predict CKPT IMAGE -o OUT)"
        )
    device = pick_device(device)  # "auto": CUDA when available
    autocast_context(amp, device)  # --amp fp16 needs CUDA: refused before any work
    output = Path(output)
    folder = bool(inputs)
    _check_output_path(output, folder)
    cases = _cases(inputs) if folder else [("case", [Path(p) for p in images])]
    targets = []
    for name, files in cases:
        ending = ".nii.gz" if files[0].name.endswith(".gz") else ".nii"
        out = output / f"{name}{ending}" if folder else output
        if any(out.resolve() == f.resolve() for _, fs in cases for f in fs):
            raise ValueError(f"-o {output}: the output {out} is an input image: choose another output")
        targets.append(out)
    model, info = load_model(checkpoint, device)
    for _, files in cases:  # every case is checked before the first file is written
        _prepare(files, info, nan_to_num=nan_to_num, allow_background=allow_background)
    options = {"overlap": overlap, "sw_batch_size": sw_batch_size, "amp": amp, "tta": tta}
    classes = info.get("classes") or [str(i) for i in range(info["out_channels"])]
    written = []
    for (_name, files), out in tqdm(
        list(zip(cases, targets)), desc="predict", unit="case", disable=not progress or len(cases) == 1
    ):
        array, affine, original = _prepare(
            files, info, nan_to_num=nan_to_num, allow_background=allow_background
        )
        probs = _predict_case(model, info, array, affine, probabilities=True, **options)
        seg = _to_original(probs.argmax(0).astype(np.uint8), original)
        _write(seg, original, out, label=True)
        if save_probabilities:
            stem = out.name[: -len(".nii.gz")] if out.name.endswith(".gz") else out.name[: -len(".nii")]
            moved = _to_original(np.moveaxis(probs, 0, -1), original)
            _write(
                moved.astype(np.float32),
                original,
                out.parent / f"{stem}_probabilities{out.name[len(stem) :]}",
                label=False,
            )
        counts = np.bincount(seg.ravel(), minlength=len(classes))
        written.append((out, ", ".join(f"{c}: {n}" for c, n in zip(classes, counts.tolist()))))
    return written


def predict_file(
    checkpoint, images, out, *, device: str = "auto", overlap: float = 0.5, amp: str | None = None
) -> np.ndarray:
    """Segment one case (NIfTI file(s), one per channel) and write the label map with the input's affine.

    Returns:
        The segmentation in the input's voxel order, ``(X, Y, Z)`` uint8.

    Raises:
        FileNotFoundError, ValueError, CheckpointError: before anything is written.
    """
    nib = require_nibabel()
    images = [images] if isinstance(images, (str, Path)) else list(images)
    predict_cases(checkpoint, images=images, output=out, device=device, overlap=overlap, amp=amp)
    return np.asarray(nib.load(str(out)).dataobj)
