"""The pieces of one training step: seeds, loss, optimizer, schedule, the forward/backward pass,
validation and the periodic loss read-back. :mod:`lowrank.train.loop` puts them together.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from . import distributed as D
from .config import TrainConfig
from .infer import autocast_context, segmentation_metrics, sliding_window_predict

__all__ = [
    "make_loss",
    "make_optimizer",
    "make_scheduler",
    "forward_backward",
    "validate",
    "read_losses",
    "step_seed",
]


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of the net's randomness at ``step`` on ``rank`` (a 63-bit integer)."""
    return int(
        np.random.SeedSequence([int(seed), int(step), int(rank), 7]).generate_state(2, np.uint64)[0] >> 1
    )


def make_loss() -> nn.Module:
    """DiceCE (softmax, one-hot target) wrapped in MONAI ``DeepSupervisionLoss`` (weights 1, ½, ¼, …).

    Takes ``(logits (B, K, *S) or a list of them, highest resolution first; labels (B, 1, *S))``.
    """
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    return DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), weight_mode="exp")


def make_optimizer(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW; the fused implementation on CPU and CUDA (one kernel for all parameters).

    The default (per-parameter loop) AdamW launches ~10 small ops per parameter tensor; the
    small nets of the default run have ~100 tensors, so the fused step launches far fewer
    (timed by ``bench/bench_cpu_paths.py``).
    """
    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def make_scheduler(
    optimizer: torch.optim.Optimizer, steps: int, warmup: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup·steps`` steps, then cosine decay to 0 at ``steps``."""
    warm = max(1, round(warmup * steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def forward_backward(
    model: nn.Module,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    amp: str | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """One forward and backward pass (the loss in fp32 outside autocast).

    Returns:
        The detached loss, a 0-d tensor on the device: nothing here waits for the device (the
        loop reads the losses back every ``--log-every`` steps and checks them there).
    """
    with autocast_context(amp, images.device):
        out = model(images)
    out = [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()
    loss = loss_fn(out, labels.float())
    (scaler.scale(loss) if scaler is not None else loss).backward()
    return loss.detach()


def validate(
    model: nn.Module, volumes, cfg: TrainConfig, classes, device, info: D.DistInfo | None = None
) -> dict[str, dict[str, float]]:
    """Per-class Dice/HD95 averaged over the validation volumes (sliding-window inference).

    In a distributed run (``info``) every rank validates its share of the volumes (``rank``,
    ``rank + W``, …) and the sums are all-reduced, so no rank waits in a collective while
    another one validates alone (which could outlast the NCCL timeout); every rank returns the
    same means.
    """
    ranks = info.world_size if info is not None and info.enabled else 1
    rank = info.rank if ranks > 1 else 0
    names = list(classes[1:])
    sums = torch.zeros(len(names), 2, dtype=torch.float64)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        for vol in volumes[rank::ranks]:
            image = torch.from_numpy(np.ascontiguousarray(vol.image)).to(device)
            probs = sliding_window_predict(
                model, image, cfg.patch, overlap=cfg.overlap, sw_batch_size=cfg.sw_batch, amp=cfg.amp
            )
            pred = probs.argmax(0).cpu().numpy()
            result = segmentation_metrics(pred, vol.label[0], classes, vol.spacing)
            sums += torch.tensor([[result[c]["dice"], result[c]["hd95"]] for c in names], dtype=torch.float64)
    if ranks > 1:
        sums = D.all_reduce_sum(sums.to(device)).cpu()
    means = (sums / len(volumes)).tolist()
    return {c: {"dice": m[0], "hd95": m[1]} for c, m in zip(names, means, strict=True)}


def read_losses(pending: list[torch.Tensor], first_step: int, device: torch.device) -> list[float]:
    """The losses of the steps since the last read, mean over the ranks: one host sync (and one
    collective) for ``--log-every`` steps.

    Raises:
        FloatingPointError: a non-finite loss (naming its step).
    """
    values = D.all_reduce_mean(torch.stack(pending).double(), device).tolist()
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise FloatingPointError(
                f"the loss is {value} at step {first_step + i + 1}: lower --lr or try without --amp"
            )
    return values
