"""The default model generalizes beyond its one template (issue 19.4).

Fast: the scanner-variation augmentation (:mod:`lowrank.data.augment`) is deterministic per
``(seed, step, index)``, keeps the labels and the patch shape, and actually changes the images;
the bias-field copies of the training volume are deterministic and rank-normalized.
Slow: the default ``lowrank train`` (``debias_rank`` normalization, noise augmentation; the
console script) reaches the held-out floors, and on synthetic variants of the raw template (two
bias fields, a gamma change, noise), normalized as ``lowrank predict`` does, held-out GM and WM
Dice drop by at most 0.03 from the clean slab (measured: at most 0.012).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank.data import PatchSampler, load_template, normalize_intensity, split_slab
from lowrank.data.augment import add_robust_augmentation, robust_transform


def _sampler(robust: bool, patch=(16, 16, 16), **kw) -> PatchSampler:
    sampler = PatchSampler(split_slab(load_template())[0], patch, seed=3)
    return add_robust_augmentation(sampler, **kw) if robust else sampler


def test_robust_augmentation_is_deterministic_and_keeps_labels():
    a, b = _sampler(True, p=1.0, p_intensity=1.0), _sampler(True, p=1.0, p_intensity=1.0)
    x1, y1 = a.batch(5, 2)
    x2, y2 = b.batch(5, 2)
    torch.testing.assert_close(x1, x2, rtol=0, atol=0)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert x1.shape == (2, 1, 16, 16, 16) and y1.dtype == torch.int64
    assert set(y1.unique().tolist()) <= {0, 1, 2, 3}
    assert torch.isfinite(x1).all()
    plain, _ = _sampler(False).batch(5, 2)
    assert not torch.allclose(plain, x1)  # the augmentation changed the images
    assert not torch.allclose(a.batch(6, 2)[0], x1)  # and differs from step to step


def test_robust_augmentation_2d_patches_and_bad_arguments():
    x, y = _sampler(True, patch=(24, 24), p=1.0, p_intensity=1.0).batch(0, 2)
    assert x.shape == (2, 1, 24, 24) and y.shape == (2, 1, 24, 24)
    with pytest.raises(ValueError, match="probabilities"):
        robust_transform(3, p=1.5)


def variants(image: np.ndarray) -> dict[str, np.ndarray]:
    """The raw template ``(1, X, Y, Z)`` as another scanner might show it (fixed, deterministic).

    The zero background of the skull-stripped template stays zero (as skull-stripping tools
    write it). ``bias``: a smooth multiplicative field, 0.7 to 1.7 across the head (the exp of
    a degree-2 polynomial); ``bias_center``: a field that is no polynomial, the centre 50 %
    brighter than the edges (a Gaussian bump, as at 3 T); ``gamma``: a gamma of 1.3 of the
    intensities; ``noise``: Gaussian noise of 3 % of the bright (99th percentile) intensity
    inside the brain.
    """
    x, y, z = (np.linspace(-1, 1, s) for s in image.shape[1:])
    gx, gy, gz = np.meshgrid(x, y, z, indexing="ij")
    bias = np.exp(0.25 * gx + 0.2 * gy - 0.15 * gz + 0.1 * gx * gy).astype(np.float32)
    center = np.exp(0.4 * np.exp(-2.0 * (gx**2 + gy**2 + gz**2))).astype(np.float32)
    brain = image != 0
    top = float(np.percentile(image[brain], 99))
    noise = np.random.default_rng(0).normal(0, 0.03 * top, image.shape) * brain
    return {
        "clean": image,
        "bias": (image * bias).astype(np.float32),
        "bias_center": (image * center).astype(np.float32),
        "gamma": (top * (image / top) ** 1.3).astype(np.float32),
        "noise": np.where(brain, np.maximum(image + noise, 1e-3), 0).astype(np.float32),
    }


def raw_template() -> np.ndarray:
    """The embedded template's raw intensities ``(1, X, Y, Z)`` float32 (before normalization)."""
    from importlib import resources

    from lowrank.data import TEMPLATE_FILE

    with resources.files("lowrank.data").joinpath(TEMPLATE_FILE).open("rb") as fh:
        with np.load(fh, allow_pickle=False) as data:
            return data["image"][None].astype(np.float32)


def variant_predictions(model, info) -> tuple[dict, dict, object]:
    """Each variant of the whole template normalized as ``lowrank predict`` does (the checkpoint's
    normalization), segmented on the held-out slab; Dice per class against the known labels.

    Returns:
        ``(dice {variant: {class: dice}}, {variant: (raw slab (X, Y, Z), prediction)}, split)``.
    """
    from lowrank.train.infer import segmentation_metrics, sliding_window_predict
    from lowrank.train.split import load_split

    split = load_split()
    z0, z1 = split.slab
    label = split.full.label[0, ..., z0:z1]
    dice, shown = {}, {}
    for name, image in variants(raw_template()).items():
        slab = normalize_intensity(image, info["normalize"])[..., z0:z1]
        probs = sliding_window_predict(model, torch.from_numpy(np.ascontiguousarray(slab)), info["patch"])
        pred = probs.argmax(0).numpy()
        scores = segmentation_metrics(pred, label, split.classes, split.val[0].spacing)
        dice[name] = {c: s["dice"] for c, s in scores.items()}
        shown[name] = (image[0, ..., z0:z1], pred)
    return dice, shown, split


@pytest.fixture(scope="module")
def variant_dice(tmp_path_factory):
    """The default ``lowrank train`` (the console script, as users run it), then Dice on each variant."""
    import json

    from cli_data import run

    from lowrank.train import load_model

    out = tmp_path_factory.mktemp("robust") / "default"
    result = run("train", "--out", out, "--no-report", "--quiet", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    model, info = load_model(out / "checkpoint.pt")
    assert info["normalize"] == "debias_rank"
    return json.loads((out / "metrics.json").read_text()), variant_predictions(model, info)[0]


@pytest.mark.slow
def test_default_training_keeps_the_floors(variant_dice):
    metrics, dice = variant_dice
    assert metrics["dice"]["gm"] >= 0.85 and metrics["dice"]["wm"] >= 0.90, metrics["dice"]
    for tissue in ("csf", "gm", "wm"):  # the clean variant is the validation slab, normalized as predict does
        assert abs(dice["clean"][tissue] - metrics["dice"][tissue]) < 0.01, (dice, metrics["dice"])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["bias", "bias_center", "gamma", "noise"])
def test_default_training_keeps_dice_on_scanner_variants(variant_dice, variant):
    _, dice = variant_dice
    for tissue in ("gm", "wm"):
        assert dice[variant][tissue] >= dice["clean"][tissue] - 0.03, (variant, tissue, dice)
