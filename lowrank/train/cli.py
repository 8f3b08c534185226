"""The ``train``, ``predict`` and ``evaluate`` subcommands of ``lowrank``.

The ``train`` options are generated from :class:`lowrank.train.TrainConfig` (one flag per field,
its help from the field's docstring), so a ``--config`` file (YAML or JSON, the same keys) and
the flags always hold the same options; flags override the file, and a run's ``config.json``
is itself a valid ``--config``.

Examples::

    lowrank train                                   # the default Swin Factorizer on the bundled data
    lowrank train --spec "unet(channels=[8, 16, 32, 64])" --steps 300 --out runs/unet
    lowrank train --config run.yaml --fold 0       # a Decathlon / nnU-Net dataset, fold 0 of 5
    lowrank train --resume --out runs/default       # continue after an interruption
    torchrun --nproc_per_node 2 -m lowrank.train train --device cuda --amp bf16
    lowrank predict runs/default/checkpoint.pt T1.nii.gz -o seg.nii.gz
    lowrank predict runs/brats/checkpoint.pt -i imagesTs -o predictions --tta
    lowrank evaluate predictions labelsTs           # Dice / HD95 per case and class
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import typing
from pathlib import Path

__all__ = ["add_commands", "add_config_arguments", "config_help"]

#: set to 1 to restart ``lowrank train``/``predict`` once with glibc's allocator tunables
RETAIN_MEMORY_ENV = "LOWRANK_RETAIN_MEMORY"


def _clean_errors(handler):
    """Report a missing file or package, a full disk or a read-only folder as one line and exit
    code 2 (like the ValueErrors)."""
    import functools

    @functools.wraps(handler)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (OSError, ImportError, FloatingPointError) as err:  # missing files, disk full, read-only
            print(f"lowrank {args.command}: error: {err}", file=sys.stderr)
            return 2

    return wrapper


def config_help(cls) -> dict[str, str]:
    """The one-line help of each field, from the ``Attributes:`` section of ``cls``'s docstring."""
    helps: dict[str, str] = {}
    lines = (cls.__doc__ or "").splitlines()
    inside, names = False, []
    for line in lines:
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if line.strip() and not line.startswith(" " * 8):
            break
        match = re.match(r"^ {8}(\w+(?:, \w+)*):\s+(.*)$", line)
        if match:
            names = [n.strip() for n in match.group(1).split(",")]
            for n in names:
                helps[n] = match.group(2).strip()
        elif line.strip() and names:
            for n in names:
                helps[n] += " " + line.strip()
    return {k: v.replace("``", "").replace(":func:", "").replace("`", "") for k, v in helps.items()}


def add_config_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per dataclass field (``--val-every`` for ``val_every``); not given = not set.

    ``bool`` fields get ``--x``/``--no-x``; tuples take several values; ``Literal`` types give
    the choices; the help text is the field's docstring line and its default.
    """
    from .config import unwrap_type

    helps = config_help(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, choices, _ = unwrap_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        kwargs: dict = {"default": argparse.SUPPRESS, "help": f"{helps.get(f.name, '')} (default: {shown})"}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is tuple:
            args = typing.get_args(tp)
            kwargs["type"] = args[0]
            kwargs["nargs"] = "+" if (len(args) == 2 and args[1] is Ellipsis) else len(args)
        else:
            kwargs["type"] = tp
        if choices:
            kwargs["choices"] = choices
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)


def _train_options(args: argparse.Namespace) -> dict:
    """The options of a run: defaults < the checkpoint's (``--resume``) < ``--config`` < flags."""
    import json

    from .checkpoint import load_checkpoint
    from .config import LEGACY_OPTIONS, TrainConfig, load_config_file
    from .loop import CHECKPOINT

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    from_file = load_config_file(args.config) if args.config else {}
    options: dict = {}
    resume = given.get("resume", from_file.get("resume", False))
    out = given.get("out", from_file.get("out", TrainConfig.out))
    path = Path(out) / CHECKPOINT
    if resume and path.exists():
        saved = {**LEGACY_OPTIONS, **json.loads(load_checkpoint(path)["config"])}
        options.update({k: v for k, v in saved.items() if k in names and k not in ("out", "resume", "quiet")})
    options.update(from_file)
    options.update(given)
    return options


@_clean_errors
def _train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .loop import train

    cfg = TrainConfig(**_train_options(args))
    _retain_memory(args, cfg.device)
    train(cfg)
    return 0


@_clean_errors
def _predict(args: argparse.Namespace) -> int:
    _retain_memory(args, args.device)
    from .predict import predict_cases

    written = predict_cases(
        args.checkpoint,
        inputs=args.input,
        images=args.images,
        output=args.output,
        device=args.device,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch,
        amp=args.amp,
        tta=args.tta,
        save_probabilities=args.save_probabilities,
        allow_background=args.allow_background,
        nan_to_num=args.nan_to_num,
        progress=not args.quiet,
    )
    if not args.quiet:
        for path, counts in written:
            print(f"wrote {path} (voxels per class: {counts})")
    return 0


@_clean_errors
def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_table

    result = evaluate(args.prediction, args.reference, classes=args.classes, output=args.output)
    print(format_table(result))
    if result.get("written"):
        print(f"wrote {', '.join(result['written'])}")
    return 0


def _launched_as_lowrank() -> bool:
    """Whether this process is the ``lowrank`` console script or ``python -m lowrank[.train]``."""
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    if spec is not None and spec.name in ("lowrank.__main__", "lowrank.train.__main__"):
        return True
    script = getattr(main_module, "__file__", None)
    return bool(script) and Path(script).name in ("lowrank", "lowrank.exe", "lowrank-script.py")


def _retain_memory(args: argparse.Namespace, device: str | None) -> None:
    """Restart once with glibc's allocator tunables: only when asked (``--retain-memory`` or
    ``LOWRANK_RETAIN_MEMORY=1``), only from the shell (never when :func:`lowrank.cli.main` is
    called from Python or a script), and never for a CUDA run."""
    wanted = getattr(args, "retain_memory", False) or os.environ.get(RETAIN_MEMORY_ENV, "") not in ("", "0")
    if not (wanted and getattr(args, "command_line", False) and _launched_as_lowrank()):
        return
    import torch

    if device == "cuda" or (device in (None, "auto") and torch.cuda.is_available()):
        return
    from ..runtime import reexec_with_allocator_env

    reexec_with_allocator_env()


def _add_memory_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--retain-memory",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="CPU runs from the shell: restart the process once with glibc malloc tunables that reuse "
        f"freed memory instead of page-faulting large tensors in again at every step (or set "
        f"{RETAIN_MEMORY_ENV}=1; or `export $(python -m lowrank.runtime)` yourself; see lowrank.runtime)",
    )


def add_commands(subparsers) -> None:
    """Add ``train``, ``predict`` and ``evaluate`` to an argparse subparsers object."""
    from .config import TrainConfig

    p = subparsers.add_parser(
        "train",
        help="train a net on the embedded MRI template (or your NIfTI dataset)",
        description="Train a segmentation net from a spec. Default: a small Swin Factorizer on the embedded "
        "MNI ICBM152 template (background/CSF/GM/WM, 2 mm), validated on a held-out axial slab. Every "
        "option can also be given in a --config file (YAML or JSON, same names); flags override it.",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="YAML or JSON file of options (e.g. a run's config.json)",
    )
    add_config_arguments(p, TrainConfig)
    _add_memory_flag(p)
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "predict",
        help="segment NIfTI images (one case, files or a folder) with a trained checkpoint",
        description="Segment images with a checkpoint of `lowrank train`. One case: `lowrank predict CKPT "
        "image.nii.gz [channel2.nii.gz ...] -o seg.nii.gz`. Many cases: `lowrank predict CKPT -i FOLDER "
        "-o OUT_FOLDER` (nnU-Net naming CASE_0000.nii.gz for channels, or 4-D files). Each output has its "
        "input's grid, affine and header.",
    )
    p.add_argument("checkpoint", help="checkpoint.pt written by `lowrank train`")
    p.add_argument(
        "images", nargs="*", help="one case: image.nii.gz (4-D for several channels, or one file per channel)"
    )
    p.add_argument(
        "-i", "--input", nargs="+", default=None, help="folder(s) or files of cases (one output per case)"
    )
    p.add_argument("-o", "--output", required=True, help="output .nii.gz (one case) or output folder (-i)")
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the net runs (default auto: CUDA when available, else the CPU)",
    )
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    p.add_argument("--sw-batch", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="mixed precision (fp16: CUDA only)")
    p.add_argument(
        "--tta", action="store_true", help="average over flips along every axis (8x the time in 3-D)"
    )
    p.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write CASE_probabilities.nii.gz (4-D, one softmax channel per class)",
    )
    p.add_argument(
        "--allow-background",
        action="store_true",
        help="predict images without zero background although the net was trained on skull-stripped ones",
    )
    p.add_argument("--nan-to-num", action="store_true", help="set NaN/Inf voxels to 0 (default: refuse)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    _add_memory_flag(p)
    p.set_defaults(func=_predict)

    p = subparsers.add_parser(
        "evaluate",
        help="Dice and HD95 per class: two label maps, or two folders (per case and mean)",
        description="Dice and HD95 (mm) per class of predicted label maps against references (MONAI "
        "metrics). Folders: files paired by name, every reference needs a prediction; per-case and mean "
        "values are written to summary.json and metrics.csv (in the prediction folder, or -o).",
    )
    p.add_argument("prediction", help="predicted label map (.nii.gz) or folder")
    p.add_argument("reference", help="reference label map or folder (same grid)")
    p.add_argument(
        "--classes",
        nargs="+",
        default=None,
        help="class names, background first; or a dataset.json / checkpoint.pt to take them from "
        "(default: the dataset.json next to a reference folder such as Task01/labelsTs, else "
        "background, class1, ... up to the largest reference label)",
    )
    p.add_argument(
        "-o", "--output", default=None, help="summary JSON file (metrics.csv is written next to it)"
    )
    p.set_defaults(func=_evaluate)
