"""Reading the user's NIfTI cases (``--data``): folders, list files, orientation, errors."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from lowrank.data import find_cases, load_cases, read_nifti  # noqa: E402
from lowrank.train.split import load_split  # noqa: E402


def _save(path, array, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine), str(path))
    return path


def _case(rng, shape=(12, 10, 8)):
    label = rng.integers(0, 3, shape).astype(np.uint8)
    image = (label * 10 + rng.random(shape)).astype(np.float32)
    return image, label


def test_folder_layout_pairs_by_name(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        image, label = _case(rng)
        _save(tmp_path / "images" / f"{name}.nii.gz", image)
        _save(tmp_path / "labels" / f"{name}.nii.gz", label)
    cases = find_cases(tmp_path)
    assert [c[0][0].name for c in cases] == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    volumes = load_cases(tmp_path)
    assert [v.name for v in volumes] == ["a", "b", "c"]
    assert volumes[0].classes == ("background", "class1", "class2")
    assert volumes[0].image.shape == (1, 12, 10, 8) and volumes[0].label.shape == (1, 12, 10, 8)
    split = load_split(tmp_path)
    assert [v.name for v in split.val] == ["c"] and [v.name for v in split.train] == ["a", "b"]


def test_nnunet_channel_files_and_list_file(tmp_path):
    rng = np.random.default_rng(1)
    image, label = _case(rng)
    _save(tmp_path / "imagesTr" / "x_0000.nii.gz", image)
    _save(tmp_path / "imagesTr" / "x_0001.nii.gz", 2 * image)
    _save(tmp_path / "labelsTr" / "x.nii.gz", label)
    (vol,) = load_cases(tmp_path)
    assert vol.image.shape == (2, 12, 10, 8)
    listing = tmp_path / "cases.txt"
    listing.write_text(
        "# image channels, then label\nimagesTr/x_0000.nii.gz, imagesTr/x_0001.nii.gz, labelsTr/x.nii.gz\n"
    )
    (vol2,) = load_cases(listing)
    np.testing.assert_array_equal(vol.image, vol2.image)
    # one volume: a z-slab is held out
    split = load_split(listing, (0.5, 0.75))
    assert split.slab == (4, 6) and split.val[0].image.shape[-1] == 2


def test_read_nifti_reorients_to_ras(tmp_path):
    rng = np.random.default_rng(2)
    image, _ = _case(rng)
    ras = _save(tmp_path / "ras.nii.gz", image)
    las_affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    las_affine[0, 3] = 2.0 * (image.shape[0] - 1)
    las = _save(tmp_path / "las.nii.gz", image[::-1].copy(), las_affine)
    a, _ = read_nifti(ras)
    b, img = read_nifti(las)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(img.affine, np.diag([2.0, 2.0, 2.0, 1.0]))


def test_errors_name_the_problem(tmp_path):
    rng = np.random.default_rng(3)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        find_cases(tmp_path / "missing")
    with pytest.raises(ValueError, match="images/ and labels/"):
        find_cases(tmp_path)
    image, label = _case(rng)
    _save(tmp_path / "images" / "a.nii.gz", image)
    (tmp_path / "labels").mkdir()
    with pytest.raises(FileNotFoundError, match="no label"):
        find_cases(tmp_path)
    _save(tmp_path / "labels" / "a.nii.gz", label[:, :, :4])
    with pytest.raises(ValueError, match="must match"):
        load_cases(tmp_path)
    _save(tmp_path / "labels" / "a.nii.gz", label + 0.5)
    with pytest.raises(ValueError, match="integer"):
        load_cases(tmp_path)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="cannot read"):
        read_nifti(bad)
    listing = tmp_path / "list.txt"
    listing.write_text("only_one_path.nii.gz\n")
    with pytest.raises(ValueError, match="expected"):
        find_cases(listing)
