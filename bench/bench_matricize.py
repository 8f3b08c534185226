"""Benchmark: ``swin`` forward + inverse against a roll-and-cat baseline, in one run.

The baseline is the straightforward reference implementation (Factorizer Algorithm 3): local
windows of ``x`` and of ``torch.roll(x, patch // 2)`` by ``einops.rearrange``, concatenated; back:
split, fold each, roll back, average. ``swin`` is measured in its default (non-wrapping: more
windows in the shifted view) and ``cyclic=true`` (the baseline's exact layout) modes.

Time: median of repeated runs, by wall clock (``time.perf_counter``) and by the process's CPU
time (``time.process_time``, all threads): on a shared, oversubscribed machine the CPU time is
the stable figure, the wall clock the one a lone user sees. Peak memory: each method runs in a fresh
subprocess and reports the growth of its peak resident set (``VmHWM``, else ``ru_maxrss``) over
the input already allocated.

Usage::

    python bench/bench_matricize.py [--shape 2 32 64 64 64] [--patch 8] [--threads 2] [--backward]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from einops import rearrange

__all__ = ["roll_and_cat_forward", "roll_and_cat_inverse", "main"]

_EQ = {
    1: ("b (c1 c2) (h1 h2) -> (b c1 h1) c2 h2", "(b c1 h1) c2 h2 -> b (c1 c2) (h1 h2)"),
    2: (
        "b (c1 c2) (h1 h2) (w1 w2) -> (b c1 h1 w1) c2 (h2 w2)",
        "(b c1 h1 w1) c2 (h2 w2) -> b (c1 c2) (h1 h2) (w1 w2)",
    ),
    3: (
        "b (c1 c2) (h1 h2) (w1 w2) (d1 d2) -> (b c1 h1 w1 d1) c2 (h2 w2 d2)",
        "(b c1 h1 w1 d1) c2 (h2 w2 d2) -> b (c1 c2) (h1 h2) (w1 w2) (d1 d2)",
    ),
}
_AXES = ("h", "w", "d")


def _sizes(x_shape, head_dim, patch):
    nd = len(x_shape) - 2
    sizes = {"c2": head_dim}
    for a in range(nd):
        sizes[f"{_AXES[a]}2"] = patch
    return nd, sizes


def roll_and_cat_forward(x: torch.Tensor, head_dim: int, patch: int) -> torch.Tensor:
    """The baseline: ``cat([local(x), local(roll(x, patch // 2))])``."""
    nd, sizes = _sizes(x.shape, head_dim, patch)
    dims = tuple(range(2, 2 + nd))
    rolled = torch.roll(x, (patch // 2,) * nd, dims)
    return torch.cat([rearrange(x, _EQ[nd][0], **sizes), rearrange(rolled, _EQ[nd][0], **sizes)])


def roll_and_cat_inverse(mats: torch.Tensor, shape, head_dim: int, patch: int) -> torch.Tensor:
    """The baseline's way back: split, fold, roll back, average."""
    nd, sizes = _sizes(shape, head_dim, patch)
    sizes.update({f"{_AXES[a]}1": shape[2 + a] // patch for a in range(nd)}, c1=shape[1] // head_dim)
    dims = tuple(range(2, 2 + nd))
    first, second = mats.chunk(2)
    a = rearrange(first, _EQ[nd][1], **sizes)
    b = torch.roll(rearrange(second, _EQ[nd][1], **sizes), (-(patch // 2),) * nd, dims)
    return (a + b) / 2


def _methods(patch: int, head_dim: int):
    from lowrank import build_matricize

    default = build_matricize(f"swin(patch={patch}, head_dim={head_dim})")
    cyclic = build_matricize(f"swin(patch={patch}, head_dim={head_dim}, cyclic=true)")

    def baseline(x):
        return roll_and_cat_inverse(roll_and_cat_forward(x, head_dim, patch), x.shape, head_dim, patch)

    def ours(module):
        def run(x):
            mats, ctx = module(x)
            return module.inverse(mats, ctx)

        return run

    return {"roll_and_cat": baseline, "swin_default": ours(default), "swin_cyclic": ours(cyclic)}


_HWM = (
    "def hwm():\n"
    "    try:\n"
    "        for line in open('/proc/self/status'):\n"
    "            if line.startswith('VmHWM:'):\n"
    "                return int(line.split()[1])\n"
    "    except OSError:\n"
    "        pass\n"
    "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
)


def _peak(name: str, shape, patch: int, head_dim: int, threads: int, backward: bool) -> float:
    """Peak memory growth (MiB) of one call of ``name``, in a fresh subprocess.

    The peak resident set is read from ``VmHWM`` (``/proc/self/status``), which starts afresh at
    ``exec``; ``resource.getrusage``'s ``ru_maxrss`` is the fallback (on Linux it inherits the
    parent's peak through ``exec``, so it is not used where ``VmHWM`` exists).
    """
    code = (
        "import resource, sys, torch; sys.path.insert(0, 'bench')\n"
        + _HWM
        + "from bench_matricize import _methods\n"
        f"torch.set_num_threads({threads}); f = _methods({patch}, {head_dim})[{name!r}]\n"
        f"x = torch.randn({tuple(shape)}, requires_grad={backward}); f(x[:1, :, :8].detach())\n"
        "r0 = hwm(); y = f(x)\n" + ("y.sum().backward()\n" if backward else "") + "del y; print(hwm() - r0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"the peak-memory subprocess for {name} failed:\n{out.stderr}")
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def _timings(f, x, backward: bool, min_run_time: float) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of repeated calls (at least 5, at least ``min_run_time`` in all)."""

    def call():
        y = f(x)
        if backward:
            y.sum().backward()
            x.grad = None

    call()  # warm-up
    wall, cpu = [], []
    while len(wall) < 5 or sum(wall) < min_run_time:
        w0, c0 = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[2, 32, 64, 64, 64])
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=3.0)
    parser.add_argument("--backward", action="store_true", help="also time forward+inverse+backward")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = _methods(args.patch, args.head_dim)
    x = torch.randn(*args.shape)

    ref = roll_and_cat_forward(x, args.head_dim, args.patch)
    from lowrank import build_matricize

    cyc = build_matricize(f"swin(patch={args.patch}, head_dim={args.head_dim}, cyclic=true)")
    mats, _ = cyc(x)
    assert torch.equal(mats, ref), "cyclic swin must equal the roll-and-cat baseline"
    del mats, ref
    for f in methods.values():
        assert torch.equal(f(x), x)

    results: dict = {"shape": args.shape, "patch": args.patch, "threads": args.threads, "rows": {}}
    modes = [("forward+inverse", False)] + ([("forward+inverse+backward", True)] if args.backward else [])
    for label, backward in modes:
        xin = x.clone().requires_grad_(backward)
        rows = {}
        for name, f in methods.items():
            wall, cpu = _timings(f, xin, backward, args.min_run_time)
            rows[name] = {"median_ms": statistics.median(wall) * 1e3, "runs": len(wall)}
            rows[name]["cpu_median_ms"] = statistics.median(cpu) * 1e3
            rows[name]["peak_mib"] = _peak(
                name, args.shape, args.patch, args.head_dim, args.threads, backward
            )
        base = rows["roll_and_cat"]
        for row in rows.values():
            row["speedup"] = base["median_ms"] / row["median_ms"]
            row["cpu_speedup"] = base["cpu_median_ms"] / row["cpu_median_ms"]
            row["peak_ratio"] = row["peak_mib"] / max(base["peak_mib"], 1e-9)
        results["rows"][label] = rows
        print(f"\n{label}  shape={tuple(args.shape)} patch={args.patch} threads={args.threads}")
        print(
            f"{'method':<14}{'wall ms':>9}{'speedup':>9}{'cpu ms':>9}{'speedup':>9}"
            f"{'peak MiB':>10}{'peak ratio':>12}"
        )
        for name, row in rows.items():
            print(
                f"{name:<14}{row['median_ms']:>9.1f}{row['speedup']:>8.2f}x"
                f"{row['cpu_median_ms']:>9.1f}{row['cpu_speedup']:>8.2f}x"
                f"{row['peak_mib']:>10.0f}{row['peak_ratio']:>12.2f}"
            )
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
