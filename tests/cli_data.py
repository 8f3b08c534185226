"""Helpers of the command-line tests: run ``lowrank`` as users do, and write small datasets.

The datasets are cut from the embedded MNI template (no download): crops of its centre,
left-right flips and intensity-changed copies, with a second channel (an inverted contrast
inside the head) where asked, written in the layouts ``lowrank train --data`` reads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

TINY = "unet(channels=[4, 8], deep_supervision=1)"
#: options of a few-second training run
FAST = ["--spec", TINY, "--steps", "2", "--patch", "16", "--batch", "1", "--overlap", "0", "--no-report"]
CLASSES = ("background", "csf", "gm", "wm")
CHANNELS = ("T1", "T1inv")


def lowrank_command() -> list[str]:
    """The installed ``lowrank`` console script (what users run)."""
    script = Path(sys.executable).with_name("lowrank")
    found = str(script) if script.is_file() else shutil.which("lowrank")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("the lowrank console script is not installed (pip install -e .)")
        pytest.skip("the lowrank console script is not installed (pip install -e .)")
    return [found]


def run(*args, module: bool = False, env: dict | None = None, cwd=None, timeout: int = 300):
    """``lowrank ARGS`` (or ``python -m lowrank ARGS``) in a subprocess; returns the result."""
    command = [sys.executable, "-m", "lowrank"] if module else lowrank_command()
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout
    )


def one_error_line(result, command: str) -> str:
    """The single error line of a failed command (exit code 2, no traceback)."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if lines and lines[0].startswith("usage:"):  # argparse: the usage, then one error line
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith(f"lowrank {command}: "), result.stderr[-3000:]
    return lines[0]


def main_error(capsys, argv: list, command: str) -> str:
    """``lowrank.cli.main(argv)`` in this process: exit code 2 and one error line on stderr."""
    from lowrank.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"lowrank {command}: "), (code, err)
    return lines[0]


def template():
    """``(image (X, Y, Z) float32, label uint8, affine)`` of the embedded template."""
    with resources.files("lowrank.data").joinpath("mni152_2mm.npz").open("rb") as fh, np.load(fh) as data:
        return data["image"].astype(np.float32), data["label"].astype(np.uint8), data["affine"]


def make_cases(n: int, *, channels: int = 2, size=(40, 48, 40)):
    """``n`` cases: crops of the template (shifted), every other one flipped, intensities scaled.

    Returns:
        ``[(name, [channel arrays], label, affine)]``.
    """
    image, label, affine = template()
    cases = []
    for i in range(n):
        starts = [
            (s - c) // 2 + d for s, c, d in zip(image.shape, size, ((i % 3) - 1, (i % 2) * 2, -(i % 2)))
        ]
        box = tuple(slice(a, a + c) for a, c in zip(starts, size))
        img, lab = image[box] * (1.0 + 0.1 * i), label[box]
        if i % 2:
            img, lab = img[::-1], lab[::-1]
        inv = np.where(img > 0, img.max() - img + 1.0, 0.0).astype(np.float32)
        chans = [np.ascontiguousarray(img), np.ascontiguousarray(inv)][:channels]
        aff = affine.copy()
        aff[:3, 3] = affine[:3, :3] @ np.array(starts, float) + affine[:3, 3]
        cases.append((f"case{i:02d}", chans, np.ascontiguousarray(lab), aff))
    return cases


def save(path: Path, array, affine) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def write_nnunet(root: Path, cases, *, labels_key: str = "labels", split: str = "Tr") -> Path:
    """An nnU-Net v2 raw folder: dataset.json, imagesTr/CASE_000c.nii.gz, labelsTr/CASE.nii.gz."""
    for name, chans, label, affine in cases:
        for c, array in enumerate(chans):
            save(root / f"images{split}" / f"{name}_{c:04d}.nii.gz", array, affine)
        save(root / f"labels{split}" / f"{name}.nii.gz", label, affine)
    if split == "Tr":
        meta = {
            "channel_names": {str(c): CHANNELS[c] for c in range(len(cases[0][1]))},
            labels_key: {name: i for i, name in enumerate(CLASSES)},
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
        }
        (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def write_decathlon(root: Path, cases) -> Path:
    """A Medical Segmentation Decathlon folder: 4-D images (channels last) and a training list."""
    training = []
    for name, chans, label, affine in cases:
        save(root / "imagesTr" / f"{name}.nii.gz", np.stack(chans, -1), affine)
        save(root / "labelsTr" / f"{name}.nii.gz", label, affine)
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    meta = {
        "modality": {str(c): CHANNELS[c] for c in range(len(cases[0][1]))},
        "labels": {str(i): name for i, name in enumerate(CLASSES)},
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def write_datalist(root: Path, cases, *, validation: int = 0) -> Path:
    """A MONAI datalist JSON (image = a list of channel files) with files in a data/ folder."""
    entries = []
    for name, chans, label, affine in cases:
        files = [save(root / "data" / f"{name}_ch{c}.nii.gz", a, affine) for c, a in enumerate(chans)]
        save(root / "data" / f"{name}_seg.nii.gz", label, affine)
        entries.append({"image": [f"data/{f.name}" for f in files], "label": f"data/{name}_seg.nii.gz"})
    meta = {
        "training": entries[: len(entries) - validation],
        "labels": {str(i): n for i, n in enumerate(CLASSES)},
        "modality": {str(c): CHANNELS[c] for c in range(len(cases[0][1]))},
    }
    if validation:
        meta["validation"] = entries[len(entries) - validation :]
    path = root / "datalist.json"
    path.write_text(json.dumps(meta, indent=2))
    return path
