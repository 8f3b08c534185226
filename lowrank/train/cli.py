"""The ``train``, ``predict`` and ``evaluate`` subcommands of ``lowrank``.

Examples::

    lowrank train                                   # the default Swin Factorizer, 41 s on a 2-core CPU
    lowrank train --spec "unet(channels=[8, 16, 32, 64])" --steps 300 --out runs/unet
    lowrank train --dims 2 --patch 64 64 --spec "ham_segnet" --out runs/ham2d
    lowrank train --resume --out runs/default        # continue after an interruption
    torchrun --nproc_per_node 2 -m lowrank.train train --device cuda --amp bf16
    lowrank predict runs/default/checkpoint.pt T1.nii.gz -o seg.nii.gz
    lowrank evaluate seg.nii.gz labels.nii.gz --classes background csf gm wm
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_commands", "main"]


def _clean_errors(handler):
    """Report a missing file or package as one line and exit code 2 (like the ValueErrors)."""
    import functools

    @functools.wraps(handler)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (FileNotFoundError, ImportError, FloatingPointError) as err:
            print(f"lowrank {args.command}: error: {err}", file=sys.stderr)
            return 2

    return wrapper


@_clean_errors
def _train(args: argparse.Namespace) -> int:
    _retain_memory(args)
    import dataclasses
    import json
    from pathlib import Path

    from .checkpoint import load_checkpoint
    from .config import TrainConfig
    from .loop import CHECKPOINT, train

    # options not given: the checkpoint's when resuming, else the defaults of TrainConfig
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options: dict = {}
    path = Path(args.out) / CHECKPOINT
    if args.resume and path.exists():
        saved = json.loads(load_checkpoint(path)["config"])
        options.update(
            {k: v for k, v in saved.items() if k in fields and k not in ("out", "resume", "quiet")}
        )
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    options.update(given)
    options.update(out=args.out, resume=args.resume, report=not args.no_report, quiet=args.quiet)
    for key in ("patch", "holdout"):
        if key in options:
            options[key] = tuple(options[key])
    train(TrainConfig(**options))
    return 0


@_clean_errors
def _predict(args: argparse.Namespace) -> int:
    _retain_memory(args)
    from .predict import predict_file

    seg = predict_file(
        args.checkpoint, args.images, args.output, device=args.device, overlap=args.overlap, amp=args.amp
    )
    counts = ", ".join(f"{c}: {n}" for c, n in enumerate(__import__("numpy").bincount(seg.ravel()).tolist()))
    print(f"wrote {args.output} {seg.shape} (voxels per class: {counts})")
    return 0


@_clean_errors
def _evaluate(args: argparse.Namespace) -> int:
    from .predict import evaluate_files

    metrics = evaluate_files(args.prediction, args.label, classes=args.classes)
    print(f"{'class':<14}{'Dice':>8}{'HD95 (mm)':>12}")
    for name, m in metrics.items():
        print(f"{name:<14}{m['dice']:>8.4f}{m['hd95']:>12.2f}")
    if metrics:
        mean = sum(m["dice"] for m in metrics.values()) / len(metrics)
        print(f"{'mean':<14}{mean:>8.4f}")
    return 0


def _add_memory_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-retain-memory",
        action="store_true",
        help="keep glibc's default allocator settings (default: the process restarts itself once with "
        "malloc tunables that reuse freed memory instead of page-faulting large tensors in again at "
        "every step; see lowrank.runtime)",
    )


def _retain_memory(args: argparse.Namespace) -> None:
    """From the shell, restart once with the allocator tunables (never when called from Python)."""
    if getattr(args, "command_line", False) and not args.no_retain_memory:
        from ..runtime import reexec_with_allocator_env

        reexec_with_allocator_env()


def add_commands(subparsers) -> None:
    """Add ``train``, ``predict`` and ``evaluate`` to an argparse subparsers object."""
    from .config import DEFAULT_STEPS, TrainConfig

    d = TrainConfig()
    p = subparsers.add_parser(
        "train",
        help="train a net on the embedded MRI template (or your NIfTI data)",
        description="Train a segmentation net from a spec. Default: a small Swin Factorizer on the embedded "
        "MNI ICBM152 template (background/CSF/GM/WM, 2 mm), validated on a held-out axial slab.",
    )
    p.add_argument(
        "--spec", default=None, help="net spec (default: a small swin_factorizer; see `lowrank list net`)"
    )
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {DEFAULT_STEPS})")
    p.add_argument(
        "--batch", type=int, default=None, help=f"patches per step and process (default {d.batch})"
    )
    p.add_argument(
        "--patch",
        type=int,
        nargs="+",
        default=None,
        help=f"patch size (default {' '.join(map(str, d.patch))})",
    )
    p.add_argument(
        "--dims", type=int, choices=[2, 3], default=None, help="3: volumes (default); 2: axial slices"
    )
    p.add_argument(
        "--amp", choices=["bf16", "fp16", "none"], default=None, help="mixed precision (fp16: CUDA only)"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"CPU threads per process (default {d.threads}; 0: torch's default: OMP_NUM_THREADS or cores)",
    )
    _add_memory_flag(p)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--out", default=d.out, help=f"run folder (default {d.out})")
    p.add_argument(
        "--data", default=None, help="your NIfTI cases: a folder (images/, labels/) or a list file"
    )
    p.add_argument(
        "--holdout",
        type=float,
        nargs=2,
        default=None,
        metavar=("START", "STOP"),
        help="held-out z-slab as fractions of the z extent (default 0.5 0.7)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of patches, augmentation and init")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="AdamW peak learning rate (default 2e-2 below 1M parameters, else 3e-3)",
    )
    p.add_argument("--val-every", type=int, default=None, help="validate every N steps (default: 10 times)")
    p.add_argument(
        "--ckpt-every", type=int, default=None, help="checkpoint every N steps (default: at validation)"
    )
    p.add_argument("--no-report", action="store_true", help="skip the PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("predict", help="segment a NIfTI image with a trained checkpoint")
    p.add_argument("checkpoint", help="checkpoint.pt written by `lowrank train`")
    p.add_argument(
        "images", nargs="+", help="image.nii.gz (4-D for several channels, or one file per channel)"
    )
    p.add_argument("-o", "--output", required=True, help="output label map (.nii.gz)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    p.set_defaults(func=_predict)

    p = subparsers.add_parser("evaluate", help="Dice and HD95 of a label map against a reference")
    p.add_argument("prediction", help="predicted label map (.nii.gz)")
    p.add_argument("label", help="reference label map on the same grid")
    p.add_argument("--classes", nargs="+", default=None, help="class names, background first")
    p.set_defaults(func=_evaluate)


def main(argv=None) -> int:
    """Stand-alone entry point (``python -m lowrank.train``), same commands as ``lowrank``."""
    try:
        from ..cli import main as lowrank_main
    except ImportError:  # pragma: no cover
        lowrank_main = None
    if lowrank_main is not None:
        return lowrank_main(argv)
    parser = argparse.ArgumentParser(prog="lowrank")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.command_line = argv is None
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
