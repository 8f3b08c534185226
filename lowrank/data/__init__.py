"""Embedded training data (the MNI ICBM152 2009a template, 2 mm, 4 classes), NIfTI input, patches.

The template ships with the package (``mni152_2mm.npz``, McGill notice in ``NOTICE.txt``); it is
rebuilt byte-for-byte from an installed nilearn by ``scripts/build_data.py``.
"""

from .datasets import (
    Case,
    Dataset,
    dataset_names,
    find_dataset,
    group_channel_files,
    load_cases,
    load_dataset,
    resample,
)
from .loader import StepBatches, patch_loader
from .sampler import PatchSampler
from .transforms import train_transform
from .volumes import (
    DEFAULT_HOLDOUT,
    TEMPLATE_FILE,
    Volume,
    find_cases,
    load_template,
    normalize_intensity,
    read_nifti,
    require_nibabel,
    split_cases,
    split_slab,
)

__all__ = [
    "Case",
    "Dataset",
    "dataset_names",
    "find_dataset",
    "group_channel_files",
    "load_dataset",
    "resample",
    "split_cases",
    "DEFAULT_HOLDOUT",
    "TEMPLATE_FILE",
    "PatchSampler",
    "StepBatches",
    "patch_loader",
    "Volume",
    "find_cases",
    "load_cases",
    "load_template",
    "normalize_intensity",
    "read_nifti",
    "require_nibabel",
    "split_slab",
    "train_transform",
]
