"""Rebuild ``lowrank/data/mni152_2mm.npz`` byte-for-byte from an installed nilearn.

nilearn's wheel ships the MNI ICBM152 2009a symmetric T1 template and its grey- and white-matter
probability maps (197×233×189, 1 mm) under ``nilearn/datasets/data/``. This script reads them
offline with nibabel and derives the compact copy that ``lowrank`` ships:

1. ``brain = T1 > 0`` (the template is brain-extracted);
2. crop to the brain's bounding box plus a 2-voxel margin, each side extended to an even length;
3. 2 mm: mean over 2×2×2 blocks of the T1 and of the class probabilities
   ``[1 − brain, brain − GM − WM (CSF, clipped at 0), GM, WM]``;
4. label = argmax of the four block-mean probabilities (0 background, 1 CSF, 2 GM, 3 WM);
   image = the block-mean T1 rounded to uint8;
5. written as an ``.npz`` (``image``, ``label``, ``affine``, ``classes``) whose zip entries carry a
   fixed timestamp, so the bytes depend only on the inputs and zlib.

Usage::

    python scripts/build_data.py                 # writes lowrank/data/mni152_2mm.npz
    python scripts/build_data.py --check         # exit 1 if the shipped file differs
    python scripts/build_data.py --out other.npz
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["CLASSES", "derive", "read_nilearn_template", "npz_bytes", "write_npz", "main"]

CLASSES = ("background", "csf", "gm", "wm")
FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "lowrank" / "data" / "mni152_2mm.npz"
MARGIN = 2
FACTOR = 2


def read_nilearn_template() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Read the T1, GM and WM maps that nilearn ships (no download).

    Returns:
        ``({"t1", "gm", "wm"}: uint8 arrays (197, 233, 189), affine (4, 4))``.

    Raises:
        ImportError: nilearn or nibabel is not installed (``pip install lowrank[data]``).
    """
    try:
        import nibabel as nib
        import nilearn
    except ImportError as err:
        raise ImportError(f"{err.name} is needed to rebuild the data: pip install 'lowrank[data]'") from None
    folder = Path(nilearn.__file__).parent / "datasets" / "data"
    arrays, affine = {}, None
    for key, name in FILES.items():
        image = nib.load(folder / name)
        arrays[key] = np.asarray(image.dataobj)
        affine = image.affine if affine is None else affine
        if not np.allclose(image.affine, affine):
            raise ValueError(f"{name} has a different affine from the T1")
    return arrays, np.asarray(affine, dtype=np.float64)


def _crop_box(mask: np.ndarray) -> list[tuple[int, int]]:
    """Per axis ``(lo, hi)``: bounding box of ``mask`` + margin, extended to an even length."""
    idx = np.argwhere(mask)
    box = []
    for axis, size in enumerate(mask.shape):
        lo = max(int(idx[:, axis].min()) - MARGIN, 0)
        hi = min(int(idx[:, axis].max()) + 1 + MARGIN, size)
        if (hi - lo) % FACTOR:
            if hi < size:
                hi += 1
            else:
                lo -= 1
        box.append((lo, hi))
    return box


def _block_mean(a: np.ndarray) -> np.ndarray:
    x, y, z = (s // FACTOR for s in a.shape)
    return a.reshape(x, FACTOR, y, FACTOR, z, FACTOR).mean(axis=(1, 3, 5))


def derive(arrays: dict[str, np.ndarray], affine: np.ndarray) -> dict[str, np.ndarray]:
    """The 2 mm cropped image and 4-class label from the 1 mm maps (see the module docstring).

    Args:
        arrays: ``{"t1", "gm", "wm"}`` uint8 arrays of one shape (probabilities scaled to 0–255).
        affine: the voxel-to-world affine of the inputs.

    Returns:
        ``image`` (X, Y, Z) uint8, ``label`` (X, Y, Z) uint8 in 0..3, ``affine`` (4, 4) float64
        of the 2 mm grid, ``classes`` (4,) str.
    """
    t1 = arrays["t1"].astype(np.float64)
    brain = (t1 > 0).astype(np.float64)
    gm = arrays["gm"].astype(np.float64) / 255.0
    wm = arrays["wm"].astype(np.float64) / 255.0
    box = _crop_box(brain > 0)
    sl = tuple(slice(lo, hi) for lo, hi in box)
    t1, brain, gm, wm = (_block_mean(a[sl]) for a in (t1, brain, gm, wm))
    csf = np.clip(brain - gm - wm, 0.0, None)
    probs = np.stack([1.0 - brain, csf, gm, wm])
    label = probs.argmax(axis=0).astype(np.uint8)
    image = np.clip(np.rint(t1), 0, 255).astype(np.uint8)
    to_block = np.eye(4)
    to_block[:3, :3] *= FACTOR
    to_block[:3, 3] = [lo + (FACTOR - 1) / 2 for lo, _ in box]
    return {
        "image": image,
        "label": label,
        "affine": (affine @ to_block).astype(np.float64),
        "classes": np.array(CLASSES),
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of an ``.npz`` that :func:`numpy.load` reads, reproducibly.

    ``numpy.savez_compressed`` stamps each zip entry with the current time; here each entry gets
    a fixed timestamp (1980-01-01) and a fixed order, so equal arrays give equal files.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            payload = io.BytesIO()
            np.lib.format.write_array(payload, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            archive.writestr(info, payload.getvalue(), compresslevel=9)
    return buffer.getvalue()


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write :func:`npz_bytes` of ``arrays`` to ``path``."""
    Path(path).write_bytes(npz_bytes(arrays))


def main(argv: list[str] | None = None) -> int:
    """Command line entry: build (or ``--check``) the embedded data file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output file (default {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    data = derive(*read_nilearn_template())
    if args.check:
        same = Path(args.out).is_file() and npz_bytes(data) == Path(args.out).read_bytes()
        print(f"{args.out}: {'identical' if same else 'DIFFERENT'}")
        return 0 if same else 1
    write_npz(args.out, data)
    shape = data["image"].shape
    counts = np.bincount(data["label"].ravel(), minlength=4)
    print(
        f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KiB), shape {shape}, voxels per class"
    )
    print("  " + ", ".join(f"{c}={n}" for c, n in zip(CLASSES, counts.tolist())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
