"""The generalization figure of the training guide: a trained checkpoint on unseen images.

Columns: the held-out slab of the template, clean and after a synthetic bias field, gamma change
and noise of its raw intensities (``tests/test_nets_generalization.py``: ``variants``), each
normalized as ``lowrank predict`` does, with their Dice against the known labels; and the real
T1 of another subject shipped in nibabel's test data (``nibabel/tests/data/anatomical.nii``, no
labels) through ``predict_array``. Rows: the raw image, and the prediction over it. Run after
``lowrank train``::

    python scripts/generalization_figure.py runs/default/checkpoint.pt docs/guides/_static/generalization.png
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel
    from test_nets_generalization import variant_predictions

    from lowrank.data import read_nifti
    from lowrank.train import load_model
    from lowrank.train.predict import predict_array

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    args = parser.parse_args()
    model, info = load_model(args.checkpoint)
    dice, shown, _ = variant_predictions(model, info)
    panels = []
    for name, (image, pred) in shown.items():
        title = f"template, {name}\nGM {dice[name]['gm']:.3f}  WM {dice[name]['wm']:.3f}"
        panels.append((title, image, pred))
        print(name, {c: round(d, 3) for c, d in dice[name].items()})
    path = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
    array, _ = read_nifti([path])
    pred = predict_array(model, info, array)
    panels.append(("nibabel anatomical.nii\n(another subject, no labels)", array[0], pred))

    colors = matplotlib.colors.ListedColormap(
        [(0, 0, 0, 0), (0.2, 0.5, 1, 0.5), (1, 0.3, 0.2, 0.5), (1, 1, 0.3, 0.5)]
    )
    fig, axes = plt.subplots(2, len(panels), figsize=(3 * len(panels), 6))
    for j, (title, image, pred) in enumerate(panels):
        z = image.shape[-1] // 2
        for i, overlay in enumerate((False, True)):
            ax = axes[i, j]
            ax.imshow(np.rot90(image[..., z]), cmap="gray")
            if overlay:
                ax.imshow(np.rot90(pred[..., z]), cmap=colors, vmin=0, vmax=3, interpolation="nearest")
            ax.set_axis_off()
        axes[0, j].set_title(title, fontsize=9)
    fig.suptitle("Predicted tissue (blue CSF, red GM, yellow WM) on images the model never saw", fontsize=11)
    fig.tight_layout()
    tmp = f"{args.out}.tmp.png"
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
