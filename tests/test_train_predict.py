"""``lowrank predict`` / ``lowrank evaluate`` on NIfTI files: round trip, orientation, bad input."""

from __future__ import annotations

import argparse
from importlib import resources

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")

from lowrank.train import CheckpointError, TrainConfig, evaluate_files, load_model, save_checkpoint, train  # noqa: E402
from lowrank.train.checkpoint import load_checkpoint  # noqa: E402
from lowrank.train.cli import add_commands  # noqa: E402
from lowrank.train.predict import predict_array  # noqa: E402

SPEC = "unet(channels=[4, 8], deep_supervision=1)"


def _cli(argv):
    parser = argparse.ArgumentParser(prog="lowrank")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    train(
        TrainConfig(
            spec=SPEC,
            steps=2,
            patch=(16, 16, 16),
            holdout=(0.5, 0.56),
            out=str(root / "run"),
            report=False,
            quiet=True,
            overlap=0.0,
        )
    )
    with resources.files("lowrank.data").joinpath("mni152_2mm.npz").open("rb") as fh, np.load(fh) as data:
        image, label, affine = data["image"], data["label"], data["affine"]
    # store the image left-right flipped (LAS), as many scanners do
    las = affine.copy()
    las[:3, 0] *= -1
    las[:3, 3] = affine[:3, :3] @ [image.shape[0] - 1, 0, 0] + affine[:3, 3]
    nib.save(nib.Nifti1Image(image[::-1].copy(), las), str(root / "t1.nii.gz"))
    nib.save(nib.Nifti1Image(label[::-1].copy(), las), str(root / "label.nii.gz"))
    return root, image


def test_predict_round_trip_keeps_affine_and_orientation(files):
    root, image = files
    out = root / "seg.nii.gz"
    argv = [
        "predict",
        str(root / "run" / "checkpoint.pt"),
        str(root / "t1.nii.gz"),
        "-o",
        str(out),
        "--overlap",
        "0",
    ]
    assert _cli(argv) == 0
    seg_img, t1_img = nib.load(str(out)), nib.load(str(root / "t1.nii.gz"))
    np.testing.assert_allclose(seg_img.affine, t1_img.affine)
    seg = np.asarray(seg_img.dataobj)
    assert seg.shape == image.shape and seg.dtype == np.uint8 and seg.max() <= 3
    # the prediction in the file's (LAS) voxel order is the RAS prediction flipped back
    model, info = load_model(root / "run" / "checkpoint.pt")
    ras = predict_array(model, info, image[None].astype(np.float32), overlap=0.0)
    np.testing.assert_array_equal(seg, ras[::-1])


def test_evaluate(files, capsys):
    root, _ = files
    perfect = evaluate_files(root / "label.nii.gz", root / "label.nii.gz", classes=["bg", "csf", "gm", "wm"])
    assert {k: v["dice"] for k, v in perfect.items()} == {"csf": 1.0, "gm": 1.0, "wm": 1.0}
    assert all(v["hd95"] == 0.0 for v in perfect.values())
    # a prediction one voxel off along z: Dice < 1, HD95 = 2 mm (one voxel) for every class
    label_img = nib.load(str(root / "label.nii.gz"))
    shifted = np.roll(np.asarray(label_img.dataobj), 1, axis=2)
    seg = root / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(shifted, label_img.affine), str(seg))
    assert (
        _cli(["evaluate", str(seg), str(root / "label.nii.gz"), "--classes", "background", "csf", "gm", "wm"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "gm" in printed and "HD95" in printed and "mean" in printed
    metrics = evaluate_files(seg, root / "label.nii.gz")
    assert all(0.3 < m["dice"] < 1.0 and m["hd95"] == pytest.approx(2.0) for m in metrics.values())


def test_bad_input_gives_one_error_and_writes_nothing(files, tmp_path):
    root, image = files
    ckpt = root / "run" / "checkpoint.pt"
    out = tmp_path / "seg.nii.gz"
    # wrong channel count
    two = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([image, image], -1).astype(np.float32), np.eye(4)), str(two))
    with pytest.raises(ValueError, match="2 channel"):
        _cli(["predict", str(ckpt), str(two), "-o", str(out)])
    # a missing image: one line on stderr, exit code 2
    assert _cli(["predict", str(ckpt), str(tmp_path / "nope.nii.gz"), "-o", str(out)]) == 2
    assert not out.exists()
    # a corrupt checkpoint does not overwrite an existing output
    out.write_bytes(b"keep me")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        _cli(["predict", str(corrupt), str(root / "t1.nii.gz"), "-o", str(out)])
    # a checkpoint whose weights belong to another spec
    state = load_checkpoint(ckpt)
    state["spec"] = "unet(channels=[4, 8, 16], deep_supervision=1)"
    other = save_checkpoint(tmp_path / "other.pt", state)
    with pytest.raises(CheckpointError, match="do not fit"):
        _cli(["predict", str(other), str(root / "t1.nii.gz"), "-o", str(out)])
    with pytest.raises(ValueError, match="is an input image"):
        _cli(["predict", str(ckpt), str(root / "t1.nii.gz"), "-o", str(root / "t1.nii.gz")])
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "corrupt.pt",
        "other.pt",
        "seg.nii.gz",
        "two.nii.gz",
    ]
    assert torch.load(ckpt, weights_only=True)["step"] == 2  # the checkpoint itself is untouched


class _Pointwise(torch.nn.Module):
    """A per-voxel net (1x1x1 convolution): exactly equivariant under flips and windows."""

    def __init__(self, channels: int = 1, classes: int = 4):
        super().__init__()
        self.conv = torch.nn.Conv3d(channels, classes, 1)
        with torch.no_grad():
            self.conv.weight.copy_(
                torch.linspace(-2, 2, classes).view(classes, 1, 1, 1, 1).expand_as(self.conv.weight)
            )
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(x)


def test_tta_undoes_every_flip():
    """For a per-voxel net the flip average equals the plain prediction (a flip not undone breaks it)."""
    info = {"in_channels": 1, "patch": [16, 16, 16]}
    rng = np.random.default_rng(0)
    image = rng.random((1, 20, 18, 17)).astype(np.float32) + np.arange(20)[None, :, None, None]
    model = _Pointwise().eval()
    plain = predict_array(model, info, image, overlap=0.25, probabilities=True)
    tta = predict_array(model, info, image, overlap=0.25, probabilities=True, tta=True)
    np.testing.assert_allclose(tta, plain, atol=1e-5)
    assert (plain.argmax(0) > 0).any() and (plain.argmax(0) == 0).any()  # not a constant map


def test_predict_resamples_to_the_training_spacing_and_back(tmp_path, monkeypatch):
    """A 1 mm image for a net trained at 2 mm: segmented at 2 mm, written on the 1 mm grid."""
    from lowrank.train import predict as predict_module

    with resources.files("lowrank.data").joinpath("mni152_2mm.npz").open("rb") as fh, np.load(fh) as data:
        image, affine = data["image"][:40, :40, :40], data["affine"]
    fine = affine.copy()
    fine[:3, :3] /= 2
    up = image.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    nib.save(nib.Nifti1Image(up, fine), str(tmp_path / "fine.nii.gz"))
    info = {
        "in_channels": 1,
        "out_channels": 4,
        "patch": [16, 16, 16],
        "spacing": [2.0, 2.0, 2.0],
        "classes": None,
    }
    seen = []
    model = _Pointwise().eval()

    def fake_load(checkpoint, device="cpu"):
        return model, info

    original = predict_module.predict_array

    def spy(model, info, array, **options):
        seen.append(array.shape)
        return original(model, info, array, **options)

    monkeypatch.setattr(predict_module, "load_model", fake_load)
    monkeypatch.setattr(predict_module, "predict_array", spy)
    predict_module.predict_cases("ckpt.pt", images=[tmp_path / "fine.nii.gz"], output=tmp_path / "seg.nii.gz")
    assert seen == [(1, 40, 40, 40)]  # segmented on the 2 mm grid (80 voxels of 1 mm)
    seg = nib.load(str(tmp_path / "seg.nii.gz"))
    assert seg.shape == up.shape and np.allclose(seg.affine, fine)
    direct = original(model, info, image[None].astype(np.float32))
    agree = np.mean(np.asarray(seg.dataobj)[::2, ::2, ::2] == direct)
    assert agree > 0.9, agree
