"""Datasets in the nnU-Net v2, Decathlon and MONAI-datalist layouts: cases, names, folds, spacing, NaN."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_data import CHANNELS, CLASSES, make_cases, save, write_datalist, write_decathlon, write_nnunet

from lowrank.data import dataset_names, find_dataset, load_dataset, split_cases
from lowrank.data.volumes import FOLDS
from lowrank.train.evaluate import class_names
from lowrank.train.split import load_split


@pytest.fixture(scope="module")
def cases():
    return make_cases(6)


def test_three_layouts_read_the_same_cases(cases, tmp_path):
    v2 = load_dataset(write_nnunet(tmp_path / "v2", cases))
    msd = load_dataset(write_decathlon(tmp_path / "msd", cases))
    datalist = load_dataset(write_datalist(tmp_path / "list", cases))
    for ds in (v2, msd, datalist):
        assert ds.classes == CLASSES and ds.channels == CHANNELS and len(ds.volumes) == 6
        assert ds.spacing is None  # every case is at 2 mm: nothing resampled
    assert [v.name for v in v2.volumes] == [f"case{i:02d}" for i in range(6)] == [v.name for v in msd.volumes]
    for a, b, c in zip(v2.volumes, msd.volumes, datalist.volumes):
        assert a.image.shape == (2, 40, 48, 40) and a.label.shape == (1, 40, 48, 40)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.image, c.image)
        np.testing.assert_array_equal(a.label, c.label)
    # the flipped copies are read back in RAS order: same anatomy as the raw crop, flipped
    raw_label = cases[1][2]
    np.testing.assert_array_equal(v2.volumes[1].label[0], raw_label)


def test_nnunet_v1_training_list_with_channel_files(cases, tmp_path):
    root = write_nnunet(tmp_path, cases[:2])
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"] = [
        {"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n, *_ in cases[:2]
    ]
    (root / "dataset.json").write_text(json.dumps(meta))
    ds = find_dataset(root)
    assert [len(c.images) for c in ds.cases] == [2, 2] and ds.cases[0].images[1].name == "case00_0001.nii.gz"


def test_datalist_validation_list_is_the_default_hold_out(cases, tmp_path):
    path = write_datalist(tmp_path, cases, validation=2)
    split = load_split(path)
    assert [v.name for v in split.val] == ["case04", "case05"] and len(split.train) == 4
    assert split.classes == CLASSES and split.channels == CHANNELS and split.in_channels == 2


@pytest.mark.parametrize("n", [5, 11, 23])
def test_folds_are_nnunets(n):
    """The 5 folds partition the cases and equal nnU-Net's (sklearn KFold, seed 12345, sorted names)."""
    KFold = pytest.importorskip("sklearn.model_selection").KFold
    volumes = [type("V", (), {"name": f"c{i:02d}"})() for i in range(n)]
    names = sorted(v.name for v in volumes)
    folds = [[v.name for v in split_cases(volumes[::-1], fold=k)[1]] for k in range(FOLDS)]
    reference = [
        [names[i] for i in test] for _, test in KFold(5, shuffle=True, random_state=12345).split(names)
    ]
    assert folds == reference
    assert sorted(n for part in folds for n in part) == names  # a partition


def test_val_cases_and_split_errors():
    volumes = [type("V", (), {"name": f"c{i:02d}"})() for i in range(11)]
    train, val = split_cases(volumes, val_cases=["c03", "c07"])
    assert [v.name for v in val] == ["c03", "c07"] and len(train) == 9
    with pytest.raises(ValueError, match="no case named c99"):
        split_cases(volumes, val_cases=["c99"])
    with pytest.raises(ValueError, match="at least 5 cases"):
        split_cases(volumes[:4], fold=0)
    with pytest.raises(ValueError, match="leave some for training"):
        split_cases(volumes[:2], val_cases=["c00", "c01"])


def test_cases_of_different_spacing_are_resampled_to_the_median(cases, tmp_path):
    root = write_nnunet(tmp_path, cases[:3])
    # case02 stored at 3 mm along x (a third fewer voxels over the same field of view)
    name, chans, label, affine = cases[2]
    coarse = affine.copy()
    coarse[:3, 0] *= 1.5
    rows = np.minimum(np.round(np.arange(27) * 1.5).astype(int), 39)  # nearest 2 mm voxel of each 3 mm one
    for c, a in enumerate(chans):
        save(root / "imagesTr" / f"{name}_{c:04d}.nii.gz", a[rows], coarse)
    save(root / "labelsTr" / f"{name}.nii.gz", label[rows], coarse)
    ds = load_dataset(root)
    assert ds.spacing == (2.0, 2.0, 2.0)  # the median
    assert ds.volumes[2].spacing == pytest.approx((2.0, 2.0, 2.0))
    assert ds.volumes[2].image.shape[1] == 40  # 27 voxels of 3 mm -> 40 of 2 mm
    # the resampled labels agree with the original 2 mm crop almost everywhere
    assert np.mean(ds.volumes[2].label[0] == label) > 0.9
    assert set(np.unique(ds.volumes[2].label)) <= {0, 1, 2, 3}  # nearest neighbour: still classes
    given = load_dataset(root, spacing=(4.0, 4.0, 4.0))
    assert given.spacing == (4.0, 4.0, 4.0) and given.volumes[0].image.shape[1:] == (20, 24, 20)


def test_non_finite_voxels_are_refused_or_zeroed(cases, tmp_path):
    root = write_nnunet(tmp_path, cases[:2])
    name, chans, _, affine = cases[1]
    bad = chans[1].copy()
    bad[3, 4, 5], bad[6, 7, 8] = np.nan, np.inf
    path = save(root / "imagesTr" / f"{name}_0001.nii.gz", bad, affine)
    with pytest.raises(ValueError, match=rf"{path.name} has 2 NaN/Inf voxel\(s\).*--nan-to-num"):
        load_dataset(root)
    volume = load_dataset(root, nan_to_num=True).volumes[1]
    assert np.isfinite(volume.image).all() and volume.image[1, 3, 4, 5] == 0


def test_dataset_errors_name_the_problem(cases, tmp_path):
    root = write_nnunet(tmp_path / "a", cases[:2])
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T1", "1": "T2", "2": "FLAIR"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="case00 has 2 channel files, the dataset has 3 channels"):
        find_dataset(root)
    meta["channel_names"] = {"0": "T1", "1": "T2"}
    meta["labels"] = {"background": 0, "tumour": [1, 2]}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="region-based labels"):
        find_dataset(root)
    meta["labels"] = {"background": 0, "csf": 1}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"label value 3, but there are 2 classes"):
        load_dataset(root)
    meta["file_ending"] = ".mha"
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"file_ending '\.mha'"):
        find_dataset(root)
    (root / "labelsTr" / "case01.nii.gz").unlink()
    meta["file_ending"] = ".nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match=r"no label labelsTr/case01\.nii\.gz"):
        find_dataset(root)
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps({"training": [{"image": "nope.nii.gz", "label": "nope.nii.gz"}]}))
    with pytest.raises(FileNotFoundError, match=r"training\[0\]: no such image file"):
        find_dataset(listing)


def test_class_names_from_either_dataset_json(cases, tmp_path):
    v2 = write_nnunet(tmp_path / "v2", cases[:1])
    msd = write_decathlon(tmp_path / "msd", cases[:1])
    assert dataset_names(v2) == (CLASSES, CHANNELS) == dataset_names(msd / "dataset.json")
    assert (
        class_names([str(v2 / "dataset.json")]) == list(CLASSES) == class_names([str(msd / "dataset.json")])
    )


def test_datalist_case_names(tmp_path):
    from lowrank.data.datasets import _case_name

    assert _case_name([tmp_path / "BraTS_001_t1.nii.gz", tmp_path / "BraTS_001_flair.nii.gz"]) == "BraTS_001"
    assert _case_name([tmp_path / "x_0000.nii.gz"]) == "x"
    for case in ("a", "b"):  # every case an image.nii.gz in its own folder
        (tmp_path / case).mkdir()
        for f in ("image.nii.gz", "label.nii.gz"):
            (tmp_path / case / f).write_bytes(b"")
    listing = tmp_path / "list.json"
    entries = [{"image": f"{c}/image.nii.gz", "label": f"{c}/label.nii.gz"} for c in ("a", "b")]
    listing.write_text(json.dumps({"training": entries}))
    assert [c.name for c in find_dataset(listing).cases] == ["a/image", "b/image"]
