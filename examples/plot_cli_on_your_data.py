"""
The command line on your own dataset
====================================

``lowrank train --data`` reads NIfTI cases from a folder with ``images/`` and ``labels/`` (file
names matching) or from a list file. This example writes a tiny dataset of that layout — two
cases cut from the shipped brain MRI template — and runs ``lowrank train``, ``lowrank predict``
and ``lowrank evaluate`` on it, as subprocesses, exactly as you would in a shell. The run is
a few steps long, so its scores are near zero: use the defaults (or more ``--steps``) on real data.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from lowrank.data import load_template

# %%
# A dataset in the ``images/`` + ``labels/`` layout
# -------------------------------------------------

root = Path(tempfile.mkdtemp()) / "my_dataset"
(root / "images").mkdir(parents=True)
(root / "labels").mkdir()
template = load_template()
affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels
for case, x0 in [("case_001", 10), ("case_002", 30)]:
    image = template.image[0, x0 : x0 + 32, 30:62, 20:52]
    label = template.label[0, x0 : x0 + 32, 30:62, 20:52]
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / "images" / f"{case}.nii.gz")
    nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), root / "labels" / f"{case}.nii.gz")
print(sorted(str(p.relative_to(root)) for p in root.rglob("*.nii.gz")))

# %%
# Train
# -----
# ``python -m lowrank`` is the ``lowrank`` command; ``--quiet`` leaves only the summary out.


def lowrank(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "lowrank", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"lowrank {args[0]} failed:\n{result.stderr}")
    return result.stdout


run = root.parent / "run"
lowrank(
    "train",
    "--data",
    str(root),
    "--out",
    str(run),
    "--steps",
    "4",
    "--patch",
    "16",
    "16",
    "16",
    "--batch",
    "1",
    "--val-every",
    "4",
    "--no-report",
    "--quiet",
)
print(sorted(p.name for p in run.iterdir()))
metrics = json.loads((run / "metrics.json").read_text())
print({key: metrics[key] for key in ("steps", "parameters", "spec")})

# %%
# Predict and evaluate
# --------------------

prediction = root.parent / "case_001_seg.nii.gz"
lowrank(
    "predict", str(run / "checkpoint.pt"), str(root / "images" / "case_001.nii.gz"), "-o", str(prediction)
)
segmentation = nib.load(prediction)
print(segmentation.shape, np.unique(np.asarray(segmentation.dataobj)).tolist())
print(lowrank("evaluate", str(prediction), str(root / "labels" / "case_001.nii.gz")))
