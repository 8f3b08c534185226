"""Figures and the end-of-run summary of ``lowrank train``.

- ``curves.png``: training loss (raw and smoothed, log scale) and learning rate; validation
  Dice per class over the steps.
- ``overlay.png``: axial / coronal / sagittal slices: the image, the reference labels and the
  prediction over it; the held-out slab is marked.
- ``components.png``: the NMF component maps (the spatial factor of each head) of the first and
  the last factorizer blocks, for the middle axial slice of the held-out region.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .. import controls
from ..files import atomic_path

__all__ = [
    "data_text",
    "validation_text",
    "write_text_atomic",
    "write_figures",
    "plot_curves",
    "plot_overlay",
    "plot_components",
    "component_maps",
    "summary",
]

#: label colours (background transparent): CSF, GM, WM, then matplotlib's tab10
_COLOURS = ["#00000000", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def data_text(cfg, split) -> str:
    """One line on the data of a run: cases, channels, classes, voxel size, validation."""
    cases = len(split.train) + len(split.val) if split.slab is None else 1
    spacing = "×".join(f"{v:g}" for v in split.full.spacing)
    return (
        f"[lowrank] {cfg.data}: {cases} case(s), channels {', '.join(split.channels)}; classes "
        f"{', '.join(split.classes)}; voxels {spacing} mm; validation: {validation_text(cfg, split)}"
    )


def validation_text(cfg, split) -> str:
    """How a run validates: the held-out slab, or the held-out cases (and the fold)."""
    if split.slab:
        return "held-out z-slab"
    names = [v.name for v in split.val]
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    fold = f"fold {cfg.fold} of 5: " if cfg.fold is not None else ""
    return f"{fold}{len(names)} held-out case(s) ({shown})"


def write_text_atomic(path: Path, text: str) -> Path:
    """Write a text file atomically (:func:`lowrank.files.atomic_path`).

    A reader, or a crash at any moment, sees the previous file or the new one, never a part.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _cmap(k: int):
    from matplotlib.colors import ListedColormap

    colours = (_COLOURS * (k // len(_COLOURS) + 1))[:k]
    return ListedColormap(colours)


def plot_curves(history: dict, classes, path: Path) -> Path:
    """Loss/learning-rate and validation-Dice curves."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    steps, loss = np.asarray(history["step"]), np.asarray(history["loss"])
    ax1.plot(steps, loss, color="0.75", lw=0.8, label="loss")
    if len(loss) > 5:
        window = max(2, len(loss) // 25)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax1.plot(steps[window - 1 :], smooth, color="C0", lw=1.8, label=f"loss ({window}-step mean)")
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("Dice + CE loss")
    ax1.grid(alpha=0.3, which="both")
    lr_ax = ax1.twinx()
    lr_ax.plot(steps, history["lr"], color="C3", lw=1, ls="--", label="learning rate")
    lr_ax.set_ylabel("learning rate", color="C3")
    lines = ax1.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
    ax1.legend(lines, [h.get_label() for h in lines], loc="upper right", fontsize=8)
    ax1.set_title("training")
    vsteps = [v["step"] for v in history["val"]]
    for i, name in enumerate(classes[1:]):
        ax2.plot(
            vsteps,
            [v["metrics"][name]["dice"] for v in history["val"]],
            "o-",
            ms=3,
            color=_COLOURS[1 + i % 7],
            label=name.upper() if len(name) <= 3 else name,
        )
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("step")
    ax2.set_ylabel("Dice (held-out)")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="lower right", fontsize=8)
    ax2.set_title("validation")
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_overlay(
    image: np.ndarray, label: np.ndarray, pred: np.ndarray, classes, slab, path: Path, spacing=(1.0, 1.0, 1.0)
) -> Path:
    """Three orthogonal slices: image, reference overlay, prediction overlay.

    Args:
        image: ``(X, Y, Z)`` intensities; label, pred: ``(X, Y, Z)`` class indices.
        slab: ``(z0, z1)`` of the held-out slab (marked; the axial slice is its middle) or None.
    """
    plt = _plt()
    from matplotlib.patches import Patch

    k = len(classes)
    cmap = _cmap(k)
    x, y, z = image.shape
    zc = (slab[0] + slab[1]) // 2 if slab else z // 2
    views = [
        ("axial", lambda a: a[:, :, zc], (spacing[0], spacing[1])),
        ("coronal", lambda a: a[:, y // 2, :], (spacing[0], spacing[2])),
        ("sagittal", lambda a: a[round(0.3 * x), :, :], (spacing[1], spacing[2])),
    ]
    lo, hi = np.percentile(image[image != 0], [0.5, 99.5]) if np.any(image) else (0, 1)
    shown = np.where(image == 0, lo, image)  # background black
    fig, axes = plt.subplots(3, 3, figsize=(9, 9.6), constrained_layout=True)
    for row, (name, cut, (sx, sy)) in enumerate(views):
        im = cut(shown).T
        extent = (0, im.shape[1] * sx, 0, im.shape[0] * sy)
        for col, (title, seg) in enumerate((("image", None), ("reference", label), ("prediction", pred))):
            ax = axes[row, col]
            ax.imshow(
                im, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=extent, interpolation="nearest"
            )
            if seg is not None:
                ax.imshow(
                    cut(seg).T,
                    cmap=cmap,
                    vmin=-0.5,
                    vmax=k - 0.5,
                    alpha=0.55,
                    origin="lower",
                    extent=extent,
                    interpolation="nearest",
                )
            if slab and name != "axial":
                for zz in slab:
                    ax.axhline(zz * sy, color="yellow", lw=1, ls="--")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title)
            if col == 0:
                ax.set_ylabel(name + (f" (z={zc})" if name == "axial" else ""))
    handles = [Patch(color=_COLOURS[i % len(_COLOURS)], label=c) for i, c in enumerate(classes) if i > 0]
    if slab:
        handles.append(Patch(facecolor="none", edgecolor="yellow", ls="--", label="held-out slab"))
    fig.legend(
        handles=handles, loc="lower center", ncol=len(handles), frameon=False, bbox_to_anchor=(0.5, -0.03)
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


@torch.no_grad()
def component_maps(model: torch.nn.Module, image: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    """The spatial NMF component maps of the first and last factorizer blocks (in eval mode).

    Recorded by :func:`lowrank.controls.component_maps`.

    Args:
        model: a net containing blocks with ``.matricize`` and ``.mixer`` (storing its factors).
        image: ``(1, C, *S)`` input, sized for the net.

    Returns:
        ``[(block name, maps (components, *S_block)), ...]`` (empty if the net has no such block).
    """
    names = [n for n, b in controls.factorizer_blocks(model).items() if hasattr(b.mixer, "store_factors")]
    if not names:
        return []
    chosen = names[:1] if len(names) == 1 else [names[0], names[-1]]
    was_training = model.training
    model.eval()
    try:
        maps = controls.component_maps(model, image, blocks=chosen)
    finally:
        model.train(was_training)
    return [(n, maps[n][0].float().cpu().numpy()) for n in chosen if n in maps]


def plot_components(
    maps: list[tuple[str, np.ndarray]], background: np.ndarray, path: Path, max_maps: int = 8
) -> Path:
    """One row per block: the background slice, then each component map (axial middle slice)."""
    plt = _plt()
    cols = 1 + min(max_maps, max(m.shape[0] for _, m in maps))
    fig, axes = plt.subplots(
        len(maps), cols, figsize=(2.1 * cols, 2.4 * len(maps)), squeeze=False, constrained_layout=True
    )

    def cut(a: np.ndarray) -> np.ndarray:
        return a[:, :, a.shape[2] // 2].T if a.ndim == 3 else a.T

    for row, (name, m) in enumerate(maps):
        shown = cut(background)
        axes[row, 0].imshow(np.where(shown == 0, shown.min(), shown), cmap="gray", origin="lower")
        axes[row, 0].set_ylabel(
            f"{name}\n{m.shape[1]}×{m.shape[2]}" + (f"×{m.shape[3]}" if m.ndim == 4 else ""), fontsize=8
        )
        axes[row, 0].set_title("input" if row == 0 else "", fontsize=9)
        for c in range(cols - 1):
            ax = axes[row, c + 1]
            if c < m.shape[0]:
                img = cut(m[c])
                ax.imshow(
                    img,
                    cmap="magma",
                    origin="lower",
                    vmin=0,
                    vmax=max(float(np.percentile(img, 99.5)), 1e-12),
                )
                ax.set_title(f"component {c}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
    fig.suptitle(
        "NMF component maps (spatial factor per head), first and last factorizer blocks", fontsize=10
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(out: Path, model, split, history, cfg, device) -> list[str]:
    """All figures of a run; returns the file names written."""
    from .infer import sliding_window_predict

    written = [plot_curves(history, split.classes, out / "curves.png").name]
    full = split.full
    image = torch.from_numpy(np.ascontiguousarray(full.image)).to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        probs = sliding_window_predict(
            model, image, cfg.patch, overlap=cfg.overlap, sw_batch_size=cfg.sw_batch, amp=cfg.amp
        )
        pred = probs.argmax(0).cpu().numpy()
        written.append(
            plot_overlay(
                full.image[0],
                full.label[0],
                pred,
                split.classes,
                split.slab,
                out / "overlay.png",
                full.spacing,
            ).name
        )
        # component maps on a window of the held-out region (axial middle slice shown)
        zc = (split.slab[0] + split.slab[1]) // 2 if split.slab else full.image.shape[-1] // 2
        if cfg.dims == 3:
            size = [min(s, 4 * p) for s, p in zip(full.image.shape[1:], cfg.patch)]
            starts = [(s - w) // 2 for s, w in zip(full.image.shape[1:3], size[:2])]
            z0 = min(max(zc - size[2] // 2, 0), full.image.shape[3] - size[2])
            crop = full.image[
                :, starts[0] : starts[0] + size[0], starts[1] : starts[1] + size[1], z0 : z0 + size[2]
            ]
        else:
            crop = full.image[..., zc]
        x = torch.from_numpy(np.ascontiguousarray(crop))[None].to(device)
        try:
            maps = component_maps(model, x)
        except Exception as err:  # a net whose blocks do not support component maps
            print(f"[lowrank] component maps skipped: {err}")
            maps = []
        if maps:
            written.append(plot_components(maps, crop[0], out / "components.png").name)
    return written


def summary(metrics: dict, out: Path, figures: list[str]) -> str:
    """The one-screen end-of-run summary."""
    lines = [
        "",
        "─" * 64,
        f" lowrank train · {metrics['spec'][:90]}",
        f" {metrics['parameters']:,} parameters · {metrics['steps']} steps × batch {metrics['batch']} · "
        f"{metrics['dims']}-D patches {'×'.join(map(str, metrics['patch']))}",
        f" {metrics['wall_time_s']:.0f} s on {metrics['device']} ({metrics['threads']} "
        f"thread{'s' if metrics['threads'] != 1 else ''}, "
        f"{metrics['world_size']} process{'es' if metrics['world_size'] > 1 else ''}), "
        f"{metrics['steps_per_s'] or 0:.2f} steps/s",
        f" data: channels {', '.join(metrics.get('channels') or ['?'])} · voxels "
        f"{'×'.join(f'{v:g}' for v in metrics.get('spacing_mm') or [])} mm",
        f" validation: {metrics['validation']}",
        "",
        f" {'class':<12}{'Dice':>8}{'HD95 (mm)':>12}",
    ]
    for name, dice in metrics["dice"].items():
        hd = metrics["hd95_mm"][name]
        lines.append(
            f" {name:<12}{dice:>8.3f}{(f'{hd:.2f}' if hd is not None and math.isfinite(hd) else '—'):>12}"
        )
    lines.append(f" {'mean':<12}{metrics['mean_dice']:>8.3f}")
    lines += [
        "",
        f" {out}/: checkpoint.pt, metrics.json, config.json" + "".join(f", {f}" for f in figures),
        "─" * 64,
    ]
    return "\n".join(lines)
