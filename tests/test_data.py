"""The embedded template, its byte-for-byte rebuild, the hold-out split and patch sampling."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank.data import PatchSampler, load_template, split_slab

ROOT = Path(__file__).resolve().parents[1]
NPZ = ROOT / "lowrank" / "data" / "mni152_2mm.npz"


_TEMPLATE = load_template()


@pytest.fixture(scope="module")
def template():
    return _TEMPLATE


def _build_script():
    spec = importlib.util.spec_from_file_location("build_data", ROOT / "scripts" / "build_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_template_contents(template):
    assert template.image.shape == (1, 75, 93, 79) and template.image.dtype == np.float32
    assert template.label.shape == (1, 75, 93, 79)
    assert template.classes == ("background", "csf", "gm", "wm")
    assert set(np.unique(template.label)) == {0, 1, 2, 3}
    assert template.spacing == (2.0, 2.0, 2.0)
    # z-scored over the brain; background stays 0 and the brain fills a realistic volume (~1.2 L)
    brain = template.image[0] != 0
    assert abs(template.image[0][brain].mean()) < 1e-3 and abs(template.image[0][brain].std() - 1) < 1e-3
    assert 1.0e6 < (template.label > 0).sum() * 8 < 2.0e6  # mm³
    # WM is brighter than GM on T1, GM brighter than CSF
    means = [template.image[0][template.label[0] == c].mean() for c in (1, 2, 3)]
    assert means[0] < means[1] < means[2]
    # the template is left-right symmetric (RAS: axis 0), which is why the hold-out is a z-slab
    label = template.label[0]
    assert (label == label[::-1]).mean() > 0.9


def test_notice_shipped():
    notice = (ROOT / "lowrank" / "data" / "NOTICE.txt").read_text()
    assert "Copyright (C) 1993-2009 Louis Collins" in notice and "McGill University" in notice


def test_rebuild_is_byte_identical():
    pytest.importorskip("nilearn")
    pytest.importorskip("nibabel")
    module = _build_script()
    data = module.derive(*module.read_nilearn_template())
    assert module.npz_bytes(data) == NPZ.read_bytes()


def test_npz_bytes_do_not_depend_on_time(monkeypatch):
    module = _build_script()
    arrays = {"a": np.arange(10, dtype=np.uint8), "b": np.eye(2)}
    first = module.npz_bytes(arrays)
    monkeypatch.setattr("time.time", lambda: 2e9)
    assert module.npz_bytes(arrays) == first
    with np.load(__import__("io").BytesIO(first)) as loaded:
        np.testing.assert_array_equal(loaded["a"], arrays["a"])


def test_derive_labels_follow_the_argmax_rule():
    """On a tiny synthetic input the label is the argmax of [1-brain, brain-gm-wm, gm, wm]."""
    module = _build_script()
    rng = np.random.default_rng(0)
    shape = (12, 10, 8)
    t1 = np.zeros(shape, np.uint8)
    t1[2:10, 2:8, 1:7] = rng.integers(1, 255, (8, 6, 6))
    gm = (rng.random(shape) * 128).astype(np.uint8) * (t1 > 0)
    wm = (rng.random(shape) * 127).astype(np.uint8) * (t1 > 0)
    out = module.derive({"t1": t1, "gm": gm, "wm": wm}, np.eye(4))
    assert out["image"].shape == out["label"].shape
    box = module._crop_box(t1 > 0)
    sl = tuple(slice(lo, hi) for lo, hi in box)
    blocks = [a[sl].astype(float) for a in (t1 > 0, gm / 255.0, wm / 255.0)]
    means = [module._block_mean(b) for b in blocks]
    probs = np.stack([1 - means[0], np.clip(means[0] - means[1] - means[2], 0, None), means[1], means[2]])
    np.testing.assert_array_equal(out["label"], probs.argmax(0))
    # the affine maps voxel (0, 0, 0) of the 2 mm grid to the centre of its 2×2×2 block
    lo = np.array([b[0] for b in box], float)
    np.testing.assert_allclose(out["affine"] @ [0, 0, 0, 1], [*(lo + 0.5), 1])


@settings(max_examples=15, deadline=None)
@given(st.floats(0.0, 0.9), st.floats(0.05, 1.0))
def test_split_slab_partitions_z(start, width):
    stop = min(1.0, start + width)
    vol = _TEMPLATE
    size = vol.image.shape[-1]
    if round(stop * size) <= round(start * size):
        with pytest.raises(ValueError, match="holdout"):
            split_slab(vol, (start, stop))
        return
    train, val = split_slab(vol, (start, stop))
    pieces = sorted([*train, val], key=lambda v: v.offset[-1])
    # the pieces tile z exactly, x and y are untouched
    z = 0
    for p in pieces:
        assert p.offset[-1] == z and p.image.shape[:3] == vol.image.shape[:3]
        np.testing.assert_array_equal(p.image, vol.image[..., z : z + p.image.shape[-1]])
        np.testing.assert_array_equal(p.affine @ [0, 0, 0, 1], vol.affine @ [0, 0, z, 1])
        z += p.image.shape[-1]
    assert z == size


def test_split_slab_rejects_bad_fractions():
    for bad in [(0.7, 0.5), (-0.1, 0.2), (0.5, 1.5)]:
        with pytest.raises(ValueError, match="fractions"):
            split_slab(_TEMPLATE, bad)


@pytest.fixture(scope="module")
def sampler():
    train, _ = split_slab(_TEMPLATE)
    return PatchSampler(train, (16, 16, 16), seed=3)


def test_patches_are_deterministic_and_rank_split(sampler):
    a_img, a_lab = sampler.batch(5, 4)
    b_img, b_lab = sampler.batch(5, 4)
    assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    c_img, _ = sampler.batch(6, 4)
    assert not torch.equal(a_img, c_img)
    # two ranks of batch 2 draw exactly the global batch of 4 (DistributedSampler-style split)
    r0, _ = sampler.batch(5, 2, rank=0, world_size=2)
    r1, _ = sampler.batch(5, 2, rank=1, world_size=2)
    assert torch.equal(torch.stack([r0[0], r1[0], r0[1], r1[1]]), a_img)
    assert a_img.dtype == torch.float32 and a_lab.dtype == torch.int64
    assert a_img.shape == (4, 1, 16, 16, 16) and a_lab.shape == (4, 1, 16, 16, 16)


def test_patches_are_foreground_biased(sampler):
    centres = [int(sampler.sample(0, i)[1][0, 8, 8, 8] > 0) for i in range(60)]
    # pos=2, neg=1: about 2/3 of the centres are foreground (far more than the ~50% of the volume)
    assert np.mean(centres) > 0.55


def test_augmentation_moves_image_and_label_together():
    train, _ = split_slab(_TEMPLATE)
    plain = PatchSampler(train, (16, 16, 16), seed=1, augment=False)
    aug = PatchSampler(train, (16, 16, 16), seed=1, augment=True)
    flipped = 0
    for i in range(12):
        img0, lab0 = plain.sample(0, i)
        img1, lab1 = aug.sample(0, i)
        if torch.equal(lab1, lab0) and not torch.equal(lab1, lab0.flip(1)):
            ref = img0
        elif torch.equal(lab1, lab0.flip(1)):
            ref, flipped = img0.flip(1), flipped + 1
        else:
            raise AssertionError("the augmented label is neither the crop nor its left-right flip")
        # intensity jitter is an affine map of the same voxels: x' = a x + b
        a, b = np.polyfit(ref.ravel().numpy(), img1.ravel().numpy(), 1)
        np.testing.assert_allclose(img1.numpy(), a * ref.numpy() + b, atol=1e-4)
        assert 0.85 < a < 1.15 and abs(b) < 0.25
    assert 0 < flipped < 12


def test_2d_patches_are_axial_slices():
    train, _ = split_slab(_TEMPLATE)
    s = PatchSampler(train, (24, 20), seed=0, augment=False)
    img, lab = s.batch(0, 3)
    assert img.shape == (3, 1, 24, 20) and lab.shape == (3, 1, 24, 20)
    # each patch is a window of one axial slice of a training piece
    for k in range(3):
        found = False
        for piece in train:
            vol = piece.image[0]
            for z in range(vol.shape[2]):
                window = np.lib.stride_tricks.sliding_window_view(vol[:, :, z], (24, 20))
                if np.any(np.all(window == img[k, 0].numpy(), axis=(-2, -1))):
                    found = True
                    break
            if found:
                break
        assert found


def test_sampler_errors():
    train, _ = split_slab(_TEMPLATE)
    with pytest.raises(ValueError, match="patch"):
        PatchSampler(train, (16,))
    with pytest.raises(ValueError, match="at least one"):
        PatchSampler([], (16, 16, 16))
