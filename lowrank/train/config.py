"""The training configuration (what ``lowrank train`` options set) and the data it trains on."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data import DEFAULT_HOLDOUT, Volume, load_cases, load_template, split_slab

__all__ = ["DEFAULT_SPEC", "DEFAULT_STEPS", "TrainConfig", "DataSplit", "load_split", "default_lr"]

#: The default net: a small Swin Factorizer (88k parameters), about a minute of training on a CPU.
DEFAULT_SPEC = (
    "swin_factorizer(channels=[8, 16, 32, 64], head_dim=4, patch=4, deep_supervision=2, pos_embed_size=none)"
)
#: Steps of the default run.
DEFAULT_STEPS = 400
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
        steps: optimizer steps.
        batch: patches per step and per process.
        patch: patch size (``dims`` values).
        dims: 3 (volumes) or 2 (axial slices).
        amp: ``"bf16"``, ``"fp16"`` (CUDA) or ``None``.
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
        threads: intra-op CPU threads per process (``torch.set_num_threads``, for this run
            only). 1 by default: the small nets of a CPU run are made of many small ops, and
            on a 2-core CPU a second OpenMP thread gains little on an idle machine (the
            default Swin Factorizer: none) but loses up to 8x as soon as other processes
            compete for the cores (``bench/README.md``, "Training"). ``None`` (or 0): torch's
            default (``OMP_NUM_THREADS`` or the physical cores).
        out: run folder.
        resume: continue from ``out/checkpoint.pt``.
        seed: the seed of patches, augmentation and initialization.
        lr: AdamW peak learning rate; ``None``: :func:`default_lr` of the net's parameter
            count (2e-2 below 1M parameters, 3e-3 above).
        weight_decay: AdamW weight decay (AdamW is fused on CPU and CUDA).
        warmup: linear warm-up as a fraction of ``steps`` (then cosine to 0).
        grad_clip: gradient-norm clip (0 = off).
        val_every: validate every this many steps (0 = 10 times per run).
        ckpt_every: checkpoint every this many steps (0 = at each validation).
        data: a folder or list file of the user's NIfTI cases (``None`` = the embedded template).
        holdout: held-out z-slab, fractions of the z extent (one-volume data).
        overlap: sliding-window overlap at validation and prediction.
        sw_batch: windows per forward pass at validation.
        report: write the PNG figures at the end.
        quiet: no progress bar or summary.
        robust_augment: add the scanner-variation augmentation of
            :mod:`lowrank.data.augment` (bias field, gamma, histogram shift, noise, smoothing,
            low resolution, small rotations and scalings) to the training patches (opt-in: see
            that module for what it measured).
    """

    spec: str = DEFAULT_SPEC
    steps: int = DEFAULT_STEPS
    batch: int = 2
    patch: tuple[int, ...] = (24, 24, 24)
    dims: int = 3
    amp: str | None = None
    device: str | None = None
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
    holdout: tuple[float, float] = DEFAULT_HOLDOUT
    overlap: float = 0.5
    sw_batch: int = 4
    report: bool = True
    quiet: bool = False
    robust_augment: bool = False

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
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"--amp {self.amp!r}: use bf16, fp16 or none")

    @property
    def val_interval(self) -> int:
        return self.val_every or max(1, self.steps // 10)

    @property
    def ckpt_interval(self) -> int:
        return self.ckpt_every or self.val_interval

    def to_json(self) -> str:
        data = asdict(self)
        if not isinstance(self.spec, str):
            from .loop import spec_text

            data["spec"] = spec_text(self.spec)
        return json.dumps(data, indent=2, sort_keys=True)


@dataclass
class DataSplit:
    """Training volumes, validation volumes, and the whole volume for the figures.

    Attributes:
        train, val: lists of volumes.
        full: the volume the overlay figure shows (the whole template, or the first
            validation case).
        slab: ``(z0, z1)`` of the held-out slab inside ``full``, or ``None`` (case hold-out).
        classes: class names.
        in_channels: image channels.
    """

    train: list[Volume]
    val: list[Volume]
    full: Volume
    slab: tuple[int, int] | None
    classes: tuple[str, ...]
    in_channels: int


def load_split(data: str | Path | None = None, holdout=DEFAULT_HOLDOUT) -> DataSplit:
    """The embedded template (or the user's cases) split into training and validation.

    One volume: a z-slab is held out (see :func:`lowrank.data.split_slab`). Several cases: the
    last ``max(1, round(0.2 n))`` cases (by name) are held out whole.
    """
    volumes = [load_template()] if data is None else sorted(load_cases(data), key=lambda v: v.name)
    if len(volumes) == 1:
        train, val = split_slab(volumes[0], holdout)
        z0 = val.offset[-1]
        return DataSplit(
            train,
            [val],
            volumes[0],
            (z0, z0 + val.image.shape[-1]),
            volumes[0].classes,
            volumes[0].image.shape[0],
        )
    n_val = max(1, round(0.2 * len(volumes)))
    train, val = volumes[:-n_val], volumes[-n_val:]
    return DataSplit(train, val, val[0], None, volumes[0].classes, volumes[0].image.shape[0])
