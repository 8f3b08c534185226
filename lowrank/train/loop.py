"""The training loop: AdamW + warm-up/cosine, DiceCE (+ deep supervision), validation, resume.

Every step is a pure function of the state before it and ``(seed, step, rank)``: the patches
come from :class:`lowrank.data.PatchSampler`, and the net's own randomness (dropout, random
factor inits) runs under ``torch.random.fork_rng`` seeded by ``(seed, step, rank)``. So
``--resume`` after a crash (even ``kill -9``) reproduces the uninterrupted run exactly on a CPU,
and the checkpoint's RNG states are restored as well.

Example:
    >>> from lowrank.train import TrainConfig, train
    >>> metrics = train(TrainConfig(spec="unet", steps=2, out="/tmp/run"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import build_net
from ..data.augment import ROBUST_PATCH
from ..data.loader import patch_loader
from ..spec import SpecError
from ..spec_values import spec_text
from . import distributed as D
from .checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    net_info,
    remove_stale_temp_files,
    save_checkpoint,
)
from .config import LEGACY_OPTIONS, RESUMABLE, TrainConfig, default_lr
from .infer import autocast_context, mean_metric
from .report import data_text, validation_text, write_text_atomic
from .split import load_split
from .steps import (
    forward_backward,
    make_loss,
    make_optimizer,
    make_scheduler,
    read_losses,
    step_seed,
    validate,
)

__all__ = [
    "train",
    "make_loss",
    "make_optimizer",
    "make_scheduler",
    "forward_backward",
    "validate",
    "step_seed",
    "spec_text",
]

CHECKPOINT = "checkpoint.pt"


def _build(cfg: TrainConfig, in_channels: int, out_channels: int) -> nn.Module:
    try:
        return build_net(cfg.spec, in_channels, out_channels, spatial_dims=cfg.dims)
    except (SpecError, TypeError, ValueError) as err:
        raise type(err)(f"cannot build --spec {cfg.spec!r} for --dims {cfg.dims}: {err}") from None


def _resume_state(cfg: TrainConfig, path: Path, net: dict) -> dict | None:
    if not cfg.resume:
        return None
    if not path.exists():
        raise CheckpointError(f"--resume: no checkpoint at {path}; start without --resume")
    state = load_checkpoint(path)
    if state["spec"] != spec_text(cfg.spec):
        raise CheckpointError(
            f"--resume: {path} was trained with spec {state['spec']!r}, not {spec_text(cfg.spec)!r}; "
            "give the same --spec (or none), or another --out"
        )
    old = net_info(state)
    for key in ("in_channels", "out_channels", "spatial_dims", "patch"):
        if old.get(key) != net.get(key):
            raise CheckpointError(f"--resume: {path} has {key}={old.get(key)}, this run has {net.get(key)}")
    saved = json.loads(state.get("config") or "{}")
    now = json.loads(cfg.to_json())
    for key, value in now.items():
        before = saved.get(key, LEGACY_OPTIONS.get(key, value))  # an option the checkpoint predates
        if key in RESUMABLE or key == "spec" or before == value:
            continue
        flag = "--" + key.replace("_", "-")
        raise CheckpointError(
            f"--resume: {path} was trained with {flag} {before!r}, this run asks {value!r}; on resume "
            f"only {', '.join('--' + k.replace('_', '-') for k in sorted(RESUMABLE - {'out', 'resume'}))} "
            f"may change: leave {flag} out (or give the same value), or train into another --out"
        )
    done = int(state["step"])
    if cfg.steps < done:
        raise CheckpointError(
            f"--resume: {path} has already {done} steps, --steps {cfg.steps} is fewer: give --steps {done} "
            "or more to continue (or another --out)"
        )
    return state


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train a net on the embedded template (or ``cfg.data``) and write ``cfg.out``.

    Returns:
        The final metrics (also written to ``out/metrics.json``).

    Raises:
        SpecError, TypeError, ValueError: a bad spec or option (before any file is written).
        CheckpointError: ``--resume`` with a missing, corrupt or mismatching checkpoint.
    """
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(threads)  # --threads applies to this run only
        torch.backends.cudnn.benchmark = benchmark  # and so does cuDNN's autotuner


def _train(cfg: TrainConfig) -> dict[str, Any]:
    from tqdm.auto import tqdm

    info, device = D.setup(cfg.device)
    if device.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif device.type == "cpu" and info.enabled and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world_size))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch shapes: autotune each conv once
    split = load_split(
        cfg.data,
        cfg.holdout,
        classes=cfg.classes,
        fold=cfg.fold,
        val_cases=cfg.val_cases,
        spacing=cfg.spacing,
        nan_to_num=cfg.nan_to_num,
        normalize=cfg.normalize,
    )
    k = len(split.classes)
    if cfg.data is not None and info.is_main and not cfg.quiet:
        print(data_text(cfg, split), flush=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = _build(cfg, split.in_channels, k).to(device)
    from ..data import PatchSampler

    sampler = PatchSampler(split.train, cfg.patch, seed=cfg.seed)
    if cfg.robust_augment:  # scanner variations (lowrank/data/augment.py)
        from ..data.augment import add_robust_augmentation

        add_robust_augmentation(sampler, **ROBUST_PATCH[cfg.normalize])
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    spacing = list(split.full.spacing)
    net = {
        "in_channels": split.in_channels,
        "out_channels": k,
        "spatial_dims": cfg.dims,
        "patch": list(cfg.patch),
        "classes": list(split.classes),
        "spacing": spacing,
        "channels": list(split.channels),
        "normalize": cfg.normalize,  # the input normalization predict and evaluate repeat
        # fraction of zero voxels in the training images (skull-stripped data: a large one)
        "zero_fraction": float(np.mean([np.mean(np.all(v.image == 0, axis=0)) for v in split.train])),
    }
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in model.parameters())
    lr = cfg.lr if cfg.lr is not None else default_lr(n_params)
    optimizer = make_optimizer(params, lr, cfg.weight_decay, device)
    scheduler = make_scheduler(optimizer, cfg.steps, cfg.warmup)
    # what this run uses (config.json and the checkpoint): resolved lr, paths, spacing and amp
    cfg = cfg.resolved(lr, spacing, device)
    scaler = torch.amp.GradScaler("cuda") if (cfg.amp == "fp16" and device.type == "cuda") else None
    autocast_context(cfg.amp, device)  # validates --amp against the device before training
    history: dict[str, Any] = {"step": [], "loss": [], "lr": [], "val": []}
    start, elapsed_before, cpu_before = 0, 0.0, 0.0
    state = _resume_state(cfg, ckpt_path, net)
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise CheckpointError(f"--resume: {ckpt_path} does not fit the net: {str(err)[:300]}") from None
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        start, history = int(state["step"]), json.loads(state["history"])
        elapsed_before = float(history.get("elapsed", 0.0))
        cpu_before = float(history.get("cpu", 0.0))
        saved = json.loads(state.get("config") or "{}")
        if saved.get("lr") != lr or saved.get("steps") != cfg.steps:  # honoured from the next step on
            scheduler.base_lrs = [lr for _ in optimizer.param_groups]
            for group in optimizer.param_groups:
                group["initial_lr"] = lr
                group["lr"] = lr * scheduler.lr_lambdas[0](start)
    history["lr_peak"] = lr
    ddp = model
    if info.enabled:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        ddp = torch.compile(ddp)  # the training forward; validation and checkpoints use `model`
    loss_fn = make_loss()
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(ckpt_path)  # left by a writer killed mid-save
        write_text_atomic(out / "config.json", cfg.to_json() + "\n")
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        unit="step",
        desc="train",
        disable=cfg.quiet or not info.is_main,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    t0, c0, ema = time.perf_counter(), time.process_time(), None
    cuda = [device] if device.type == "cuda" else []
    workers = cfg.workers
    if workers is None:  # CPU: the step needs the cores (see TrainConfig.workers)
        workers = min(4, max(1, (os.cpu_count() or 1) // info.world_size - 1)) if cuda else 0
    loader = patch_loader(
        sampler,
        start=start,
        steps=cfg.steps,
        batch_size=cfg.batch,
        rank=info.rank,
        world_size=info.world_size,
        workers=workers,
        pin_memory=bool(cuda),
    )
    pending: list[torch.Tensor] = []  # losses on the device, read back every --log-every steps
    for step, (images, labels) in zip(range(start, cfg.steps), loader, strict=True):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        ddp.train()
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(step_seed(cfg.seed, step, info.rank))
            optimizer.zero_grad(set_to_none=True)
            loss = forward_backward(ddp, loss_fn, images, labels, cfg.amp, scaler)
            if scaler is not None:
                scaler.unscale_(optimizer)
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
        pending.append(loss)
        history["step"].append(step + 1)
        history["lr"].append(optimizer.param_groups[0]["lr"])
        done = step + 1
        validating = done % cfg.val_interval == 0 or done == cfg.steps
        saving = done % cfg.ckpt_interval == 0 or done == cfg.steps
        if done % cfg.log_every == 0 or validating or saving:  # the only host syncs of the loop
            for value in read_losses(pending, done - len(pending), device):
                ema = value if ema is None else 0.9 * ema + 0.1 * value
                history["loss"].append(value)
            pending.clear()
        postfix = f"loss {ema:.3f}" if ema is not None else ""
        if validating:  # every rank validates its share (no rank idles in a collective)
            metrics = validate(model, split.val, cfg, split.classes, device, info)
            history["val"].append({"step": done, "metrics": metrics})
        if history["val"]:
            last = history["val"][-1]["metrics"]
            postfix += " dice " + "/".join(f"{m['dice']:.2f}" for m in last.values())
        bar.set_postfix_str(postfix, refresh=False)
        bar.update(1)
        history["elapsed"] = elapsed_before + time.perf_counter() - t0
        history["cpu"] = cpu_before + time.process_time() - c0
        if saving and info.is_main:
            save_checkpoint(
                ckpt_path,
                {
                    "format": FORMAT,
                    "spec": spec_text(cfg.spec),
                    "net": json.dumps(net),
                    "config": cfg.to_json(),
                    "history": json.dumps(history),
                    "step": done,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "rng": {
                        "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if cuda else [],
                    },
                },
            )
    bar.close()
    if not history["val"]:  # a resumed run that had already finished (every rank validates)
        metrics = validate(model, split.val, cfg, split.classes, device, info)
        history["val"].append({"step": cfg.steps, "metrics": metrics})
    result = _finish(cfg, model, split, history, n_params, device, info, out)
    D.barrier()
    return result


def _finish(cfg, model, split, history, n_params, device, info, out: Path) -> dict[str, Any]:
    """metrics.json, figures and the summary (rank 0)."""
    if not info.is_main:
        return {}
    final = history["val"][-1]["metrics"]
    elapsed = float(history.get("elapsed", 0.0))
    metrics = {
        "spec": spec_text(cfg.spec),
        "parameters": n_params,
        "steps": cfg.steps,
        "batch": cfg.batch * info.world_size,
        "patch": list(cfg.patch),
        "dims": cfg.dims,
        "wall_time_s": round(elapsed, 2),
        "steps_per_s": round(cfg.steps / elapsed, 3) if elapsed > 0 else None,
        "cpu_time_s": round(float(history.get("cpu", 0.0)), 1),
        "device": str(device),
        "world_size": info.world_size,
        "amp": cfg.amp,
        "lr": history.get("lr_peak", cfg.lr),
        "threads": torch.get_num_threads(),
        "classes": list(split.classes[1:]),
        "channels": list(split.channels),
        "normalize": cfg.normalize,  # the input normalization predict and evaluate repeat
        "spacing_mm": [round(s, 4) for s in split.full.spacing],
        "dice": {c: round(m["dice"], 4) for c, m in final.items()},
        "hd95_mm": {c: (round(m["hd95"], 3) if math.isfinite(m["hd95"]) else None) for c, m in final.items()},
        "mean_dice": round(mean_metric(final, "dice"), 4),
        "validation": validation_text(cfg, split),
        "slab": list(split.slab) if split.slab else None,
    }
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    figures: list[str] = []
    if cfg.report:
        from .report import write_figures

        figures = write_figures(out, model, split, history, cfg, device)
    if not cfg.quiet:
        from .report import summary

        print(summary(metrics, out, figures))
    return metrics
