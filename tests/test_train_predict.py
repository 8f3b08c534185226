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
