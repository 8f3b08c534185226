"""Inference and metrics: sliding-window prediction, per-class Dice and HD95 (MONAI).

Example:
    >>> import numpy as np
    >>> from lowrank.train.infer import segmentation_metrics
    >>> a = np.zeros((8, 8, 8), int); a[2:6, 2:6, 2:6] = 1
    >>> m = segmentation_metrics(a, a, classes=("background", "fg"))
    >>> m["fg"]["dice"], m["fg"]["hd95"]
    (1.0, 0.0)
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "autocast_context",
    "resolve_amp",
    "sliding_window_predict",
    "segmentation_metrics",
    "mean_metric",
]


def resolve_amp(amp: str | None, device: torch.device) -> str | None:
    """``--amp`` as used on ``device``: ``"auto"`` is bf16 on CUDA and none elsewhere."""
    if amp == "auto":
        return "bf16" if torch.device(device).type == "cuda" else None
    return None if amp in (None, "none", "fp32") else amp


def autocast_context(amp: str | None, device: torch.device):
    """The autocast context for ``--amp`` (``None``/``"none"``: a no-op context; ``"auto"``:
    bf16 on CUDA, a no-op elsewhere).

    Raises:
        ValueError: fp16 requested on a CPU, or an unknown value.
    """
    amp = resolve_amp(amp, device)
    if amp is None:
        return contextlib.nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"--amp {amp!r}: use auto, bf16, fp16 or none")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs --device cuda; on a CPU use --amp bf16")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _eval_output(out):
    """A net's eval output (a tensor; the first = highest-resolution entry of a list)."""
    return out[0] if isinstance(out, (list, tuple)) else out


@torch.no_grad()
def sliding_window_predict(
    model: nn.Module,
    image: torch.Tensor,
    patch: Sequence[int],
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    amp: str | None = None,
    mode: str = "gaussian",
) -> torch.Tensor:
    """Class probabilities of a whole volume by MONAI ``sliding_window_inference``.

    Args:
        model: a net ``(B, C, *patch) -> (B, K, *patch)`` (put in eval mode here and restored).
        image: ``(C, X, Y, Z)`` on the model's device.
        patch: window size: 3 values (3-D net) or 2 values (2-D net, applied to every axial slice).
        overlap: window overlap fraction.
        sw_batch_size: windows per forward pass.
        amp: ``"bf16"``/``"fp16"`` autocast, or ``None``.
        mode: window blending (``"gaussian"`` or ``"constant"``).

    Returns:
        ``(K, X, Y, Z)`` float32 softmax probabilities.
    """
    from monai.inferers import sliding_window_inference

    was_training = model.training
    model.eval()

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with autocast_context(amp, x.device):
            return _eval_output(model(x)).float()

    try:
        if len(patch) == 3:
            logits = sliding_window_inference(
                image[None], list(patch), sw_batch_size, predictor, overlap=overlap, mode=mode
            )[0]
        elif len(patch) == 2:
            slices = image.permute(3, 0, 1, 2)  # (Z, C, X, Y)
            # 2-D windows are small: batch 16x more of them per forward pass
            logits = sliding_window_inference(
                slices, list(patch), 16 * sw_batch_size, predictor, overlap=overlap, mode=mode
            ).permute(1, 2, 3, 0)
        else:
            raise ValueError(f"patch must have 2 or 3 sizes, got {tuple(patch)}")
    finally:
        model.train(was_training)
    logits = torch.as_tensor(logits.as_tensor() if hasattr(logits, "as_tensor") else logits)
    return torch.softmax(logits.float(), dim=0)


def segmentation_metrics(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    classes: Sequence[str],
    spacing: Sequence[float] | None = None,
) -> dict[str, dict[str, float]]:
    """Per-class Dice and 95th-percentile Hausdorff distance (MONAI), background excluded.

    Args:
        pred: ``(X, Y, Z)`` predicted class indices.
        label: ``(X, Y, Z)`` reference class indices.
        classes: class names; index 0 is the background and is not scored.
        spacing: voxel size in mm (HD95 in mm); ``None`` for voxels.

    Returns:
        ``{class: {"dice": float, "hd95": float}}``; a class absent from both maps has Dice 1
        and HD95 0; a class present in one map only has Dice 0 and HD95 ``inf``.

    Raises:
        ValueError: shapes differ.
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance
    from monai.networks.utils import one_hot

    pred = torch.as_tensor(np.asarray(pred)).long()
    label = torch.as_tensor(np.asarray(label)).long()
    if pred.shape != label.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(label.shape)}"
        )
    k = len(classes)
    p = one_hot(pred[None, None], num_classes=k, dim=1)
    y = one_hot(label[None, None], num_classes=k, dim=1)
    dice = compute_dice(p, y, include_background=False, ignore_empty=False)[0]
    out: dict[str, dict[str, float]] = {}
    for c in range(1, k):
        in_p, in_y = bool(p[0, c].any()), bool(y[0, c].any())
        if not in_p and not in_y:
            hd = 0.0
        elif in_p != in_y:
            hd = math.inf
        else:
            with warnings.catch_warnings():  # MONAI's own deprecation notice from inside
                warnings.simplefilter("ignore", FutureWarning)
                distance = compute_hausdorff_distance(
                    p[:, c : c + 1],
                    y[:, c : c + 1],
                    include_background=True,
                    percentile=95,
                    spacing=None if spacing is None else list(spacing),
                )
            hd = float(distance[0, 0])
        out[classes[c]] = {"dice": float(dice[c - 1]), "hd95": hd}
    return out


def mean_metric(metrics: dict[str, dict[str, float]], key: str) -> float:
    """Mean of one metric over the scored classes (``nan`` if there are none)."""
    values = [m[key] for m in metrics.values()]
    return float(np.mean(values)) if values else math.nan
