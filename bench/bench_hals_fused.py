"""HALS rank 8 (issue 5, case ``hals8``): the fused node vs the general autograd loop vs the textbook.

All in one process, interleaved, on X (4096, 8, 512) fp32 post-ReLU Gaussian, ``nmf(rank=8,
iters=5, update=hals)``, full gradient, loss ``out.sum()``: forward alone (no grad) and
forward+backward for the fused node (``ours``) and the general loop (``generic``, the private
switch ``_fused_hals = False``); forward+backward for the textbook baseline of
``bench_solvers.py`` (slow: ``--textbook-runs``). Medians (and minima) of the runs. The textbook
runs are *paired*: each one sits between two fused forward+backward runs, and
``paired_ratios`` are textbook / (mean of its two neighbours), so a slow phase of a noisy machine
hits both sides of a ratio. ``allocator_env`` says whether glibc's tunables of
:mod:`lowrank.runtime` were set (``export $(python -m lowrank.runtime)``): without them both
sides pay page faults on fresh memory, the textbook far more. ``--profile`` prints the top ops of
one fused forward+backward.

Usage: ``python bench/bench_hals_fused.py [--runs 5] [--textbook-runs 2]``
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from bench_solvers import _timed as _time
from bench_solvers import fwd_bwd, make_fn, make_input

from lowrank.runtime import allocator_env_active

__all__ = ["main"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--textbook-runs", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    x = make_input("hals8", args.batch).requires_grad_()
    fused = make_fn("hals8:ours")
    generic = make_fn("hals8:ours")
    generic._fused_hals = False
    textbook = make_fn("hals8:textbook")

    def forward(layer):
        with torch.no_grad():
            layer(x)

    cases = {
        "fused_fwd": lambda: forward(fused),
        "fused_fwdbwd": lambda: fwd_bwd(fused, x),
        "generic_fwd": lambda: forward(generic),
        "generic_fwdbwd": lambda: fwd_bwd(generic, x),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm-up
        fn()
    for _ in range(args.runs):
        for name, fn in cases.items():
            times[name].append(_time(fn))
    grad = fwd_bwd(fused, x)
    times["textbook_fwdbwd"], paired = [], []
    for _ in range(args.textbook_runs):
        before = _time(cases["fused_fwdbwd"])
        times["textbook_fwdbwd"].append(_time(lambda: fwd_bwd(textbook, x)))
        after = _time(cases["fused_fwdbwd"])
        paired.append(times["textbook_fwdbwd"][-1] / ((before + after) / 2))
    result = {
        "threads": torch.get_num_threads(),
        "allocator_env": allocator_env_active(),
        "paired_ratios": [round(r, 2) for r in paired],
        "finite_grad": bool(torch.isfinite(grad).all()),
        **{f"{k}_ms": statistics.median(v) * 1e3 for k, v in times.items()},
        **{f"{k}_min_ms": min(v) * 1e3 for k, v in times.items()},
    }
    for name in ("fused_fwdbwd", "generic_fwdbwd"):
        result[f"textbook_over_{name}"] = result["textbook_fwdbwd_ms"] / result[f"{name}_ms"]
    result["generic_over_fused_fwd"] = result["generic_fwd_ms"] / result["fused_fwd_ms"]
    print(json.dumps(result, indent=1))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fwd_bwd(fused, x)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
