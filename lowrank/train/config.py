"""The training configuration: what ``lowrank train``'s options set (the data: :mod:`.split`)."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch

from ..data import DEFAULT_HOLDOUT
from ..spec_values import spec_text

__all__ = [
    "DEFAULT_SPEC",
    "DEFAULT_STEPS",
    "RESUMABLE",
    "TrainConfig",
    "load_config_file",
    "default_lr",
    "unwrap_type",
    "LEGACY_OPTIONS",
]

#: The default net: a small Swin Factorizer (88k parameters).
DEFAULT_SPEC = (
    "swin_factorizer(channels=[8, 16, 32, 64], head_dim=4, patch=4, deep_supervision=2, pos_embed_size=none)"
)
#: Steps of the default run.
DEFAULT_STEPS = 3200
#: Peak AdamW learning rates when ``--lr`` is not given: small nets / the rest (see :func:`default_lr`).
SMALL_NET_LR, LARGE_NET_LR = 2e-2, 3e-3
#: Nets with fewer parameters than this count as small.
SMALL_NET_PARAMETERS = 1_000_000


def default_lr(parameters: int) -> float:
    """The peak learning rate of a run without ``--lr``: 2e-2 below 1M parameters, else 3e-3.

    Tuned on this repository's CPU runs (``bench/README.md``, "Training"): the default Swin
    Factorizer (88k parameters) gains +0.056 held-out GM Dice from 3e-3 to 2e-2 at 400 steps (flat
    up to 4e-2); ``unet(channels=[8, 16, 32, 64])`` (447k) is flat from 3e-3 to 2e-2 and worse at
    4e-2; the 1.7M-parameter ``ham_segnet`` (2-D) fails at 2e-2 and trains at 3e-3.
    """
    return SMALL_NET_LR if parameters < SMALL_NET_PARAMETERS else LARGE_NET_LR


@dataclass
class TrainConfig:
    """Options of one training run (see ``lowrank train --help``).

    Attributes:
        spec: the net spec (built with ``lowrank.build_net(spec, C, K, spatial_dims=dims)``).
        steps: optimizer steps (on ``--resume``: the new total, at least the steps done; the
            cosine schedule is recomputed for it).
        batch: patches per step and per process.
        patch: patch size (``dims`` values).
        dims: 3 (volumes) or 2 (axial slices).
        amp: mixed precision: ``"auto"`` (bf16 on CUDA, none on a CPU), ``"bf16"``, ``"fp16"``
            (CUDA only) or ``"none"``.
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
        compile: ``torch.compile`` the net for training (the first steps compile it).
        workers: ``DataLoader`` worker processes that sample the patches ahead of the steps
            (pinned memory on CUDA); 0: sampled in the training process. ``None``: on CUDA up
            to 4 per process (fewer than its share of the cores), on a CPU 0 (the workers
            would compete with the step for the same cores). The
            batches are the same for any value (each is a pure function of seed and step).
        log_every: read the loss back from the device (progress bar, non-finite check) every
            this many steps; the steps in between never wait for the device.
        threads: intra-op CPU threads per process (``torch.set_num_threads``, for this run
            only). 1 by default: the small nets of a CPU run are made of many small ops, and
            on a 2-core CPU a second OpenMP thread gains little on an idle machine (the
            default Swin Factorizer: none) but loses up to 8x as soon as other processes
            compete for the cores (``bench/README.md``, "Training"). ``None`` (or 0): torch's
            default (``OMP_NUM_THREADS`` or the physical cores).
        out: run folder.
        resume: continue from ``out/checkpoint.pt`` (options not given are the checkpoint's;
            only those in ``RESUMABLE`` may change).
        seed: the seed of patches, augmentation and initialization.
        lr: AdamW peak learning rate; ``None``: :func:`default_lr` of the net's parameter
            count (2e-2 below 1M parameters, 3e-3 above). On ``--resume`` a new value applies
            from the next step on.
        weight_decay: AdamW weight decay (AdamW is fused on CPU and CUDA).
        warmup: linear warm-up as a fraction of ``steps`` (then cosine to 0).
        grad_clip: gradient-norm clip (0 = off).
        val_every: validate every this many steps (0 = 10 times per run).
        ckpt_every: checkpoint every this many steps (0 = at each validation).
        data: the user's NIfTI cases (``None`` = the embedded template): an nnU-Net / Decathlon
            folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``), a MONAI datalist JSON, a
            folder with ``images/`` and ``labels/``, or a list file.
        classes: class names, background first (default: the dataset's, else ``class1``…).
        fold: validate on fold ``k`` (0-4) of a deterministic 5-fold split of the cases.
        val_cases: validate on these cases (names); default: the dataset's ``validation``
            list, else the last fifth of the cases by name.
        spacing: resample every case to this voxel size in mm (``None``: the median spacing
            of the cases when they differ; else no resampling).
        nan_to_num: replace NaN/Inf voxels of the data by 0 (default: refuse such files).
        holdout: held-out z-slab, fractions of the z extent (one-volume data).
        overlap: sliding-window overlap at validation and prediction.
        sw_batch: windows per forward pass at validation.
        report: write the PNG figures at the end.
        quiet: no progress bar or summary.
        robust_augment: add the scanner-variation augmentation of ``lowrank.data.augment`` to
            the training patches (``--no-robust-augment``: off): with ``--normalize
            debias_rank`` or ``rank`` Gaussian noise; with ``zscore`` also bias field, gamma,
            histogram shift, smoothing, lower resolution, small rotations and scalings.
        normalize: the input intensity normalization, per channel over the non-zero voxels
            (:func:`lowrank.data.normalize_intensity`): ``"debias_rank"`` (a smooth
            multiplicative field removed, then the normal scores of the ranks: invariant to a
            scaling, a gamma change and a polynomial bias field), ``"rank"`` (the scores only) or
            ``"zscore"``. Recorded in the checkpoint; ``lowrank predict`` normalizes the same way.
    """

    spec: str = DEFAULT_SPEC
    steps: int = DEFAULT_STEPS
    batch: int = 2
    patch: tuple[int, ...] = (24, 24, 24)
    dims: Literal[2, 3] = 3
    amp: Literal["auto", "bf16", "fp16", "none"] | None = "auto"
    device: Literal["cpu", "cuda"] | None = None
    compile: bool = False
    workers: int | None = None
    log_every: int = 10
    threads: int | None = 1
    out: str = "runs/default"
    resume: bool = False
    seed: int = 0
    lr: float | None = None
    weight_decay: float = 1e-2
    warmup: float = 0.05
    grad_clip: float = 1.0
    val_every: int = 0
    ckpt_every: int = 0
    data: str | None = None
    classes: tuple[str, ...] | None = None
    fold: int | None = None
    val_cases: tuple[str, ...] | None = None
    spacing: tuple[float, ...] | None = None
    nan_to_num: bool = False
    holdout: tuple[float, float] = DEFAULT_HOLDOUT
    overlap: float = 0.5
    sw_batch: int = 4
    report: bool = True
    quiet: bool = False
    robust_augment: bool = True
    normalize: Literal["debias_rank", "rank", "zscore"] = "debias_rank"

    def __post_init__(self):
        if self.dims not in (2, 3):
            raise ValueError(f"--dims {self.dims}: use 2 (axial slices) or 3 (volumes)")
        patch = tuple(int(p) for p in self.patch)
        if len(patch) == 1:
            patch = patch * self.dims
        if len(patch) == 3 and self.dims == 2:
            patch = patch[:2]
        if len(patch) != self.dims or min(patch) < 1:
            raise ValueError(
                f"--patch {' '.join(map(str, patch))}: give {self.dims} positive sizes for --dims {self.dims}"
            )
        self.patch = patch
        self.holdout = tuple(float(h) for h in self.holdout)
        if self.classes is not None:
            self.classes = tuple(str(c) for c in self.classes)
        if self.val_cases is not None:
            self.val_cases = tuple(str(c) for c in self.val_cases)
        if self.spacing is not None:
            spacing = tuple(float(s) for s in self.spacing)
            spacing = spacing * 3 if len(spacing) == 1 else spacing
            if len(spacing) != 3 or min(spacing) <= 0:
                raise ValueError(
                    f"--spacing {' '.join(map(str, spacing))}: give 1 or 3 sizes in mm, each > 0"
                )
            self.spacing = spacing
        if self.fold is not None and not 0 <= self.fold < 5:
            raise ValueError(f"--fold {self.fold}: use 0 to 4 (a 5-fold split of the cases)")
        if self.fold is not None and self.val_cases:
            raise ValueError("give --fold or --val-cases, not both")
        for name in ("steps", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.threads is not None and self.threads < 0:
            raise ValueError(f"--threads must be >= 1, or 0 for torch's default; got {self.threads}")
        self.threads = self.threads or None
        if self.amp in ("none", "fp32"):
            self.amp = None
        if self.amp not in (None, "auto", "bf16", "fp16"):
            raise ValueError(f"--amp {self.amp!r}: use auto, bf16, fp16 or none")
        if self.workers is not None and self.workers < 0:
            raise ValueError(
                f"--workers must be >= 0 (0: sample in the training process), got {self.workers}"
            )
        if self.log_every < 1:
            raise ValueError(f"--log-every must be >= 1, got {self.log_every}")

    @property
    def val_interval(self) -> int:
        return self.val_every or max(1, self.steps // 10)

    @property
    def ckpt_interval(self) -> int:
        return self.ckpt_every or self.val_interval

    def resolved(self, lr: float, spacing, device: torch.device | None = None) -> TrainConfig:
        """These options as a run uses them: the peak lr, absolute paths, the voxel size, and
        ``amp="auto"`` as on ``device`` (bf16 on CUDA, else none)."""
        from dataclasses import replace

        from .infer import resolve_amp

        amp = resolve_amp(self.amp, torch.device("cpu" if device is None else device))
        return replace(
            self,
            lr=lr,
            amp=amp,
            data=None if self.data is None else str(Path(self.data).resolve()),
            out=str(Path(self.out).resolve()),
            spacing=tuple(spacing) if self.data is not None or self.spacing is not None else None,
        )

    def to_json(self) -> str:
        """The options as JSON (a valid ``--config`` file; tuples as lists)."""
        data = asdict(self)
        if not isinstance(self.spec, str):
            data["spec"] = spec_text(self.spec)
        return json.dumps(data, indent=2, sort_keys=True)


#: Options that may differ from the checkpoint's on ``--resume`` (the others are refused):
#: ``steps`` (a new total, at least the steps done), ``lr`` (from the next step on), and the
#: options that do not change the optimization.
RESUMABLE = frozenset(
    {
        "steps",
        "lr",
        "device",
        "threads",
        "compile",
        "workers",
        "log_every",
        "out",
        "resume",
        "val_every",
        "ckpt_every",
        "overlap",
        "sw_batch",
        "report",
        "quiet",
    }
)


#: The values of options that checkpoints written before the option existed were trained with
#: (``--resume`` of such a checkpoint keeps them).
LEGACY_OPTIONS = {"robust_augment": False, "normalize": "zscore"}


def load_config_file(path: str | Path) -> dict:
    """The options of a ``--config`` file (YAML or JSON; keys are :class:`TrainConfig` fields).

    Dashes in keys are read as underscores (``val-every`` = ``val_every``). Relative paths are
    kept as written (relative to the working directory, like the flags).

    Raises:
        FileNotFoundError: no such file. ValueError: not a mapping, or an unknown key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # yaml.YAMLError, json.JSONDecodeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"--config {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"--config {path}: expected a mapping of options (key: value), got {type(data).__name__}"
        )
    from ..registry import did_you_mean

    names = [f.name for f in fields(TrainConfig)]
    hints = typing.get_type_hints(TrainConfig)
    options = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise ValueError(
                f"--config {path}: unknown option {key!r};{did_you_mean(name, names)} "
                "see `lowrank train --help`"
            )
        options[name] = _coerce(value, hints[name], f"--config {path}: {key}")
    return options


def unwrap_type(tp) -> tuple[Any, list | None, bool]:
    """``(base type, Literal choices or None, optional)`` of a :class:`TrainConfig` annotation."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
    if typing.get_origin(tp) is typing.Literal:
        choices = list(typing.get_args(tp))
        return type(choices[0]), choices, optional
    return tp, None, optional


def _coerce(value, hint, where: str):
    """A value of a config file as the field's type (a scalar for a tuple field is one item)."""
    base, choices, optional = unwrap_type(hint)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: a value is required (not null)")
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        values = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_scalar(v, item, where) for v in values)
    result = _scalar(value, base, where)
    if choices and result not in choices:
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    return result


def _scalar(value, tp, where: str):
    if tp is bool and isinstance(value, bool):
        return value
    if tp in (int, float) and not isinstance(value, bool):
        try:  # YAML reads 1e-3 (no dot) as a string
            number = tp(value) if isinstance(value, str) else value
        except ValueError:
            number = None
        if isinstance(number, (int, float)) and (tp is float or float(number).is_integer()):
            return tp(number)
    if tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{where}: expected {'true/false' if tp is bool else tp.__name__}, got {value!r}")
