"""Same-budget comparison of the default Swin Factorizer with a U-Net baseline (``lowrank train``).

The machine this was written on is a shared 2-core CPU, so the budget is equalized in CPU time
(process time, robust to other load) rather than wall time: the U-Net gets as many steps as fit in
the CPU seconds the default run used. Each run is a subprocess of ``lowrank train``; the table
(held-out Dice and HD95 per class, steps, CPU and wall time) is printed as Markdown.

Usage::

    python bench/train_compare.py --out runs/compare            # default + U-Net, same CPU budget
    python bench/train_compare.py --steps 160 --patch 24 24 24  # shorter
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main"]

UNET = "unet(channels=[8, 16, 32, 64])"


def _probe_cpu_per_step(spec: str, patch: list[int], batch: int, steps: int = 4) -> float:
    """Median CPU seconds of a training step (forward, loss, backward, AdamW) on random data."""
    import torch

    from lowrank import build_net
    from lowrank.train.loop import make_loss

    net = build_net(spec, 1, 4, spatial_dims=len(patch))
    loss_fn, opt = make_loss(), torch.optim.AdamW(net.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, *patch, generator=gen)
    y = torch.randint(0, 4, (batch, 1, *patch), generator=gen).float()
    times = []
    for _ in range(steps):
        t = time.process_time()
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
        times.append(time.process_time() - t)
    return sorted(times)[len(times) // 2]


def _run(spec: str | None, steps: int, patch: list[int], out: Path) -> dict:
    cmd = [sys.executable, "-m", "lowrank.train", "train", "--steps", str(steps), "--patch", *map(str, patch),
           "--out", str(out), "--quiet"]  # fmt: skip
    if spec:
        cmd += ["--spec", spec]
    subprocess.run(cmd, check=True, env=dict(os.environ))
    return json.loads((out / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    from lowrank.train import DEFAULT_SPEC, DEFAULT_STEPS, TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--patch", type=int, nargs=3, default=list(TrainConfig().patch))
    parser.add_argument("--baseline", default=UNET)
    args = parser.parse_args(argv)
    batch = TrainConfig().batch
    ratio = _probe_cpu_per_step(DEFAULT_SPEC, args.patch, batch) / _probe_cpu_per_step(
        args.baseline, args.patch, batch
    )
    runs = {
        "swin_factorizer (default)": _run(None, args.steps, args.patch, args.out / "default"),
        "U-Net baseline": _run(
            args.baseline, max(1, round(args.steps * ratio)), args.patch, args.out / "unet"
        ),
    }
    print("| net | params | steps | CPU s | wall s | Dice CSF | Dice GM | Dice WM | HD95 GM | HD95 WM |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in runs.items():
        d, h = m["dice"], m["hd95_mm"]
        cells = [f"{name} `{m['spec']}`", f"{m['parameters']:,}", m["steps"], f"{m['cpu_time_s']:.0f}"]
        cells += [f"{m['wall_time_s']:.0f}", *(f"{d[c]:.3f}" for c in ("csf", "gm", "wm")), h["gm"], h["wm"]]
        print("| " + " | ".join(map(str, cells)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
