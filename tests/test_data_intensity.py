"""The input intensity normalization (:mod:`lowrank.data.intensity`): the rank transform is exactly
invariant to monotone intensity changes, the checkpoint records the method, and ``lowrank
predict`` (the console script, on NIfTI files the test writes) normalizes as training did."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_data import FAST, run, save, template
from scipy.stats import norm, rankdata

from lowrank.data import load_template, normalize_intensity
from lowrank.data.intensity import rank_normalize, remove_smooth_field
from lowrank.train import load_model
from lowrank.train.checkpoint import load_checkpoint, net_info, save_checkpoint
from lowrank.train.infer import sliding_window_predict

nib = pytest.importorskip("nibabel")


def _image(seed=0) -> np.ndarray:
    """A ``(2, 9, 8, 7)`` image: positive values with ties and a zero background per channel."""
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 40, size=(2, 9, 8, 7)).astype(np.float32)
    image[0, :2] = 0
    image[1, :, :3] = 0
    return image


def test_rank_is_the_normal_score_of_the_mid_rank_of_the_non_zero_voxels():
    image = _image()
    out = normalize_intensity(image, "rank")
    assert out.dtype == np.float32 and out.shape == image.shape
    for c in range(2):
        mask = image[c] != 0
        quantile = (rankdata(image[c][mask], method="average") - 0.5) / mask.sum()  # independent reference
        np.testing.assert_allclose(rank_normalize(image[c][mask]), quantile, rtol=0, atol=1e-6)
        np.testing.assert_allclose(out[c][mask], norm.ppf(quantile), rtol=0, atol=1e-5)
        assert (out[c][~mask] == 0).all() and np.isfinite(out).all()
    assert (normalize_intensity(np.zeros((1, 3, 3, 3)), "rank") == 0).all()  # no foreground: zeros
    assert rank_normalize(np.array([5.0])).tolist() == [0.5]
    assert normalize_intensity(np.full((1, 2, 2, 2), 7.0), "rank").tolist() == np.zeros((1, 2, 2, 2)).tolist()


@pytest.mark.parametrize(
    ("change", "linear"),
    [
        (lambda x: 240 * (x / 40) ** 1.3, False),  # a gamma change
        (lambda x: 0.3 * x + 2, True),  # contrast and offset (zero background kept)
        (lambda x: np.where(x < 20, x, 20 + 5 * (x - 20)) ** 0.5, False),  # a strictly increasing curve
    ],
)
def test_rank_is_invariant_to_a_monotone_intensity_change(change, linear):
    image = _image(1)
    changed = np.where(image != 0, change(image), 0).astype(np.float32)
    np.testing.assert_array_equal(normalize_intensity(changed, "rank"), normalize_intensity(image, "rank"))
    # the z-score only to a linear one: that is what the rank transform is for
    zscores = normalize_intensity(changed, "zscore"), normalize_intensity(image, "zscore")
    assert np.allclose(*zscores, atol=1e-4) == linear


def _field(shape, scale=1.0) -> np.ndarray:
    """``exp`` of a polynomial of total degree 2 in monomials of normalized coordinates."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    return np.exp(scale * (0.3 * x - 0.2 * y**2 + 0.25 * x * y + 0.1 * z**2 - 0.15 * x * z))


def test_remove_smooth_field_flattens_a_polynomial_field_exactly():
    shape = (12, 10, 9)
    image = 50 * _field(shape)
    image[:2] = 0  # background
    flat = remove_smooth_field(image)
    inside = flat[image > 0]
    assert (flat[image == 0] == 0).all() and inside.std() / inside.mean() < 1e-6
    assert (image[image > 0].std() / image[image > 0].mean()) > 0.1


def test_debias_rank_is_invariant_to_a_bias_field_and_a_gamma_change():
    rng = np.random.default_rng(3)
    shape = (20, 18, 16)
    tissue = rng.choice([1.0, 1.6, 2.2], size=shape) * rng.uniform(0.95, 1.05, size=shape)
    tissue[:3] = 0
    image = tissue[None].astype(np.float32)
    biased = (image * _field(shape)).astype(np.float32)
    gamma = (image**1.4).astype(np.float32)
    clean = normalize_intensity(image, "debias_rank")
    assert clean.dtype == np.float32 and (clean[image == 0] == 0).all() and np.isfinite(clean).all()
    # the field changes the ranks of the plain rank transform, not those of debias_rank
    plain = np.abs(normalize_intensity(biased, "rank") - normalize_intensity(image, "rank")).mean()
    assert plain > 0.05
    assert np.abs(normalize_intensity(biased, "debias_rank") - clean).mean() < plain / 10
    np.testing.assert_allclose(normalize_intensity(gamma, "debias_rank"), clean, atol=1e-3)


def test_zscore_is_mean_zero_unit_std_over_the_non_zero_voxels():
    image = _image(2)
    out = normalize_intensity(image, "zscore")
    for c in range(2):
        mask = image[c] != 0
        want = (image[c][mask] - image[c][mask].mean()) / image[c][mask].std()
        np.testing.assert_allclose(out[c][mask], want, rtol=1e-5, atol=1e-5)
        assert (out[c][~mask] == 0).all()
    np.testing.assert_array_equal(normalize_intensity(image), out)  # the function's default: z-score
    with pytest.raises(ValueError, match="use one of debias_rank, rank, zscore"):
        normalize_intensity(image, "minmax")  # type: ignore[arg-type]


def test_template_is_loaded_with_each_normalization():
    rank, z, debiased = load_template("rank"), load_template("zscore"), load_template("debias_rank")
    brain = z.image != 0  # (a voxel at the median of the brain gets the normal score 0 too)
    assert not rank.image[~brain].any() and not debiased.image[~brain].any()
    for vol in (rank, debiased):  # normal scores: about mean 0, std 1 (the median voxel is 0)
        assert abs(vol.image[brain].mean()) < 0.01 and abs(vol.image[brain].std() - 1) < 0.05
    # the same order of the voxels: the rank transform of the z-scores is the rank image
    np.testing.assert_allclose(normalize_intensity(z.image, "rank"), rank.image, atol=1e-6)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A few-step `lowrank train` run (defaults: debias_rank normalization) and NIfTI files of
    the template: raw, and after a gamma change of its intensities."""
    root = tmp_path_factory.mktemp("intensity")
    image, _, affine = template()
    result = run("train", *FAST, "--holdout", "0.5", "0.56", "--out", root / "run", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    top = float(image.max())
    save(root / "t1.nii.gz", image, affine)
    save(root / "gamma.nii.gz", (top * (image / top) ** 1.4).astype(np.float32), affine)
    return root


def test_checkpoint_records_the_normalization_and_old_ones_read_as_zscore(run_dir, tmp_path):
    state = load_checkpoint(run_dir / "run" / "checkpoint.pt")
    assert net_info(state)["normalize"] == "debias_rank"
    assert json.loads(state["config"])["normalize"] == "debias_rank"
    assert json.loads(state["config"])["robust_augment"] is True  # the default run augments
    # a checkpoint written before the normalization was recorded was trained on z-scores
    net = json.loads(state["net"])
    del net["normalize"]
    save_checkpoint(tmp_path / "old.pt", {**state, "net": json.dumps(net)})
    assert net_info(load_checkpoint(tmp_path / "old.pt"))["normalize"] == "zscore"


def _predict(root, checkpoint, image, out, tmp_path) -> np.ndarray:
    out = tmp_path / out
    result = run(
        "predict", checkpoint, root / image, "-o", out, "--overlap", "0", "--save-probabilities", "--quiet"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    probabilities = out.with_name(out.name.replace(".nii.gz", "_probabilities.nii.gz"))
    return np.asarray(nib.load(str(probabilities)).dataobj)


def test_predict_normalizes_as_training_did(run_dir, tmp_path):
    ckpt = run_dir / "run" / "checkpoint.pt"
    probs = _predict(run_dir, ckpt, "t1.nii.gz", "seg.nii.gz", tmp_path)
    # the same probabilities as the net on the image normalized as in training
    model, info = load_model(ckpt)
    image, _, _ = template()
    x = torch.from_numpy(normalize_intensity(image[None], "debias_rank"))
    want = sliding_window_predict(model, x, info["patch"], overlap=0.0).numpy()
    np.testing.assert_allclose(np.moveaxis(probs, -1, 0), want, atol=1e-5)
    # a gamma change of the input changes nothing
    gamma = _predict(run_dir, ckpt, "gamma.nii.gz", "g.nii.gz", tmp_path)
    np.testing.assert_allclose(gamma, probs, atol=2e-3)  # up to the ties of the brightest 30 %
    # the same weights recorded as z-score-trained: predict z-scores the image instead
    state = load_checkpoint(ckpt)
    net = {**json.loads(state["net"]), "normalize": "zscore"}
    save_checkpoint(tmp_path / "z.pt", {**state, "net": json.dumps(net)})
    zprobs = _predict(run_dir, tmp_path / "z.pt", "t1.nii.gz", "z.nii.gz", tmp_path)
    x = torch.from_numpy(normalize_intensity(image[None], "zscore"))
    want = sliding_window_predict(model, x, info["patch"], overlap=0.0)
    np.testing.assert_allclose(np.moveaxis(zprobs, -1, 0), want.numpy(), atol=1e-5)
    assert not np.allclose(zprobs, probs, atol=1e-3)


def test_resume_of_a_checkpoint_without_a_recorded_normalization_keeps_the_zscore(run_dir, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run_dir / "run", old)
    state = load_checkpoint(old / "checkpoint.pt")
    net, config = json.loads(state["net"]), json.loads(state["config"])
    del net["normalize"], config["normalize"], config["robust_augment"]
    save_checkpoint(old / "checkpoint.pt", {**state, "net": json.dumps(net), "config": json.dumps(config)})
    result = run("train", "--out", old, "--resume", "--steps", "3", "--quiet", "--no-report")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = load_checkpoint(old / "checkpoint.pt")
    assert json.loads(resumed["config"])["normalize"] == "zscore"
    assert json.loads(resumed["config"])["robust_augment"] is False
    assert net_info(resumed)["normalize"] == "zscore"
    # asking for another normalization on resume is refused, naming the checkpoint's
    result = run("train", "--out", old, "--resume", "--steps", "4", "--normalize", "rank", "--quiet")
    assert result.returncode == 2 and "--normalize 'zscore'" in result.stderr, result.stderr[-2000:]
