"""The default model generalizes beyond its one template (issue 19.4).

Fast: the scanner-variation augmentation (:mod:`lowrank.data.augment`) is deterministic per
``(seed, step, index)``, keeps the labels and the patch shape, and actually changes the images.
Slow: the default training with ``robust_augment=True`` reaches the held-out floors, and on
synthetic variants of the held-out slab (bias field, gamma change, noise) Dice drops by at most
0.03 from the clean slab (the gamma case is not reached yet: an expected failure).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank.data import PatchSampler, load_template, split_slab
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
    """The held-out slab as another scanner might show it (fixed, deterministic)."""
    x, y, z = (np.linspace(-1, 1, s) for s in image.shape[1:])
    gx, gy, gz = np.meshgrid(x, y, z, indexing="ij")
    bias = np.exp(0.25 * gx + 0.2 * gy - 0.15 * gz + 0.1 * gx * gy).astype(np.float32)
    lo, hi = image.min(), image.max()
    gamma = lo + (hi - lo) * ((image - lo) / (hi - lo)) ** 1.3
    noise = image + np.random.default_rng(0).normal(0, 0.05, image.shape)
    return {
        "clean": image,
        "bias": image * bias,
        "gamma": gamma.astype(np.float32),
        "noise": noise.astype(np.float32),
    }


@pytest.fixture(scope="module")
def variant_dice(tmp_path_factory):
    """Train the default net with the robust augmentation, then Dice on each variant."""
    from lowrank.train import TrainConfig, load_model, train
    from lowrank.train.config import load_split
    from lowrank.train.infer import segmentation_metrics, sliding_window_predict

    out = tmp_path_factory.mktemp("robust")
    metrics = train(TrainConfig(out=str(out), robust_augment=True, report=False, quiet=True))
    model, info = load_model(out / "checkpoint.pt")
    split = load_split()
    val = split.val[0]
    dice = {}
    for name, image in variants(val.image).items():
        probs = sliding_window_predict(model, torch.from_numpy(np.ascontiguousarray(image)), info["patch"])
        scores = segmentation_metrics(probs.argmax(0).numpy(), val.label[0], split.classes, val.spacing)
        dice[name] = {c: s["dice"] for c, s in scores.items()}
    return metrics, dice


@pytest.mark.slow
def test_robust_training_keeps_the_floors_and_dice_under_bias_and_noise(variant_dice):
    metrics, dice = variant_dice
    assert metrics["dice"]["gm"] >= 0.85 and metrics["dice"]["wm"] >= 0.90, metrics["dice"]
    assert metrics["wall_time_s"] > 0
    for name in ("bias", "noise"):
        for tissue in ("gm", "wm"):
            assert dice[name][tissue] >= dice["clean"][tissue] - 0.03, (name, tissue, dice)


@pytest.mark.slow
@pytest.mark.xfail(
    reason="issue 19.4 open: a gamma of 1.3 drops held-out GM by 0.12 with the p=0.15 augmentation "
    "(measured); stronger intensity augmentation did not train within the 400-step budget",
    strict=False,
)
def test_robust_training_keeps_dice_under_a_gamma_change(variant_dice):
    _, dice = variant_dice
    for tissue in ("gm", "wm"):
        assert dice["gamma"][tissue] >= dice["clean"][tissue] - 0.03, (tissue, dice)
