"""Benchmark: the CPU paths whose reasons used to be timings in docstrings, each against its baseline.

- ``upsample``: a 3-D transposed conv ``1×64×32³ → 1×32×64³`` (kernel 2, stride 2) fed a
  channels-last input (what :func:`lowrank.nets.skeleton._upsample` does) vs a contiguous one;
- ``stem``: a one-sample stem conv ``1×4×64³ → 32`` channels (kernel 3) through
  :func:`lowrank.kernels.convolution` (oneDNN) vs ``conv(x)`` (PyTorch's ``slow_conv3d`` there);
- ``adamw``: one AdamW step over the default ``swin_factorizer``'s parameters (4 → 3 channels)
  with ``fused=True`` (:func:`lowrank.train.steps.make_optimizer`) vs the default implementation.

Forward only for the convs. Candidate and baseline are timed in interleaved rounds in one
process (machine noise hits both alike); the medians and their ratio are printed as a markdown
table.

Usage:
    OMP_NUM_THREADS=1 python bench/bench_cpu_paths.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from lowrank import build_net
from lowrank.kernels import convolution

__all__ = ["cases", "main"]


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cases() -> dict[str, tuple[str, Callable[[], object], Callable[[], object]]]:
    """name -> (what, candidate, baseline); each callable runs the operation once."""
    g = torch.Generator().manual_seed(0)
    up = nn.ConvTranspose3d(64, 32, 2, stride=2)
    h = torch.randn(1, 64, 32, 32, 32, generator=g)
    h_last = h.contiguous(memory_format=torch.channels_last_3d)
    stem = nn.Conv3d(4, 32, 3, padding=1)
    x = torch.randn(1, 4, 64, 64, 64, generator=g)
    params = list(build_net("swin_factorizer", 4, 3).parameters())
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    fused = torch.optim.AdamW(params, lr=1e-4, fused=True)
    plain = torch.optim.AdamW(params, lr=1e-4)
    return {
        "upsample": ("transposed conv 1×64×32³ → 1×32×64³", lambda: up(h_last), lambda: up(h)),
        "stem": ("stem conv 1×4×64³ → 32, kernel 3", lambda: convolution(stem, x), lambda: stem(x)),
        "adamw": (f"AdamW step, swin_factorizer ({len(params)} tensors)", fused.step, plain.step),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.rounds} rounds")
    print("| case | candidate median (ms) | baseline median (ms) | baseline / candidate |")
    print("|---|---|---|---|")
    with torch.no_grad():
        for what, candidate, baseline in cases().values():
            candidate(), baseline()  # warm-up
            times: dict[str, list[float]] = {"c": [], "b": []}
            for _ in range(args.rounds):
                times["c"].append(_time(candidate))
                times["b"].append(_time(baseline))
            c, b = (statistics.median(times[k]) * 1e3 for k in ("c", "b"))
            print(f"| {what} | {c:.1f} | {b:.1f} | {b / c:.2f}× |")


if __name__ == "__main__":
    main()
