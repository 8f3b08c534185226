"""Benchmark: low-rank 3-D convolutions (CP / Tucker / TT) against a dense ``nn.Conv3d``.

Input ``(2, C, 32, 32, 32)``, kernel 3, padding 1, rank ``alpha = 0.5`` (R = C/2), forward +
backward (sum of the output), fp32. Every variant is timed in interleaved rounds in one process,
in a shuffled order each round (so machine noise hits all of them alike); medians, minima and
their ratios to the dense conv of the same run are reported. Peak memory (max RSS growth) is
measured per variant in a fresh subprocess.

Usage:
    OMP_NUM_THREADS=2 python bench/bench_convs.py [--channels 32 64 128] [--rounds 7] [--memory]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from lowrank.convs.cp import CPConv
from lowrank.convs.tt import TTConv
from lowrank.convs.tucker import TuckerConv

__all__ = ["make", "main"]

FORMATS = {"cp": CPConv, "tucker": TuckerConv, "tt": TTConv}


def make(variant: str, channels: int) -> nn.Module:
    """Build ``dense`` or ``<format>_<implementation>`` for ``channels`` in/out channels."""
    if variant == "dense":
        return nn.Conv3d(channels, channels, 3, padding=1)
    if variant == "tltorch":
        import tltorch

        return tltorch.FactorizedConv(
            channels,
            channels,
            3,
            order=3,
            rank=0.5,
            factorization="cp",
            implementation="factorized",
            padding=1,
        )
    fmt, impl = variant.split("_", 1)
    return FORMATS[fmt](channels, channels, 3, padding=1, rank=0.5, implementation=impl)


def step(module: nn.Module, x: torch.Tensor) -> float:
    """One forward + backward; returns seconds."""
    start = time.perf_counter()
    module(x).sum().backward()
    module.zero_grad(set_to_none=True)
    x.grad = None
    return time.perf_counter() - start


def time_all(variants: list[str], channels: int, rounds: int) -> dict[str, list[float]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 32, 32, 32, generator=gen, requires_grad=True)
    modules = {v: make(v, channels) for v in variants}
    for module in modules.values():  # warm-up (oneDNN primitives, opt_einsum paths)
        step(module, x)
    times: dict[str, list[float]] = {v: [] for v in variants}
    order = random.Random(channels)  # own generator: the global RNG is left alone
    for _ in range(rounds):
        for v in order.sample(variants, len(variants)):  # a fresh order each round: no position bias
            times[v].append(step(modules[v], x))
    return times


def peak_memory(variant: str, channels: int) -> float:
    """Peak resident-memory growth (MiB) of one forward + backward, in a fresh interpreter.

    The kernel's high-water mark (VmHWM) is reset through ``/proc/self/clear_refs`` after the
    input and the module exist, so import-time peaks do not hide the step's.
    """
    code = f"""
import sys, torch
sys.path.insert(0, "bench")
from bench_convs import make, step
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
x = torch.randn(2, {channels}, 32, 32, 32, requires_grad=True)
m = make({variant!r}, {channels})
step(m, x)  # warm-up: oneDNN scratch buffers, opt_einsum paths
base = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
step(m, x)
print((status("VmHWM:") - base) / 1024)
"""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # big buffers go back to the OS when freed
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def probe_choice(fmt: str, channels: int) -> str:
    """The implementation ``auto`` picks for the benchmark input."""
    return make(f"{fmt}_auto", channels).choose((32, 32, 32))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--formats", nargs="+", default=["cp", "tucker", "tt"])
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (subprocesses)")
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args()
    variants = ["dense"] + [f"{f}_{i}" for f in args.formats for i in ("factorized", "reconstructed", "auto")]
    try:
        import tltorch  # noqa: F401

        variants.append("tltorch")
    except ImportError:
        pass
    results = {}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for c in args.channels:
        times = time_all(variants, c, args.rounds)
        med = {v: statistics.median(t) for v, t in times.items()}
        low = {v: min(t) for v, t in times.items()}
        probe = CPConv(c, c, 3, padding=1, rank=0.5)
        print(f"\nC={c}  (CP auto picks {probe.choose((32, 32, 32))!r})")
        header = f"{'variant':<22}{'median ms':>11}{'min ms':>9}{'med/dense':>10}{'min/dense':>10}"
        print(header + ("  peak MiB" if args.memory else ""))
        for v in variants:
            line = f"{v:<22}{med[v] * 1e3:>11.1f}{low[v] * 1e3:>9.1f}"
            line += f"{med[v] / med['dense']:>10.2f}{low[v] / low['dense']:>10.2f}"
            if args.memory:
                line += f"{peak_memory(v, c):>10.0f}"
            print(line, flush=True)
        for f in args.formats:
            ours = [f"{f}_factorized", f"{f}_reconstructed"]
            best_med = min(med[v] for v in ["dense", *ours])
            best_min = min(low[v] for v in ["dense", *ours])
            print(
                f"  {f}: auto / best-of(dense, ours) = {med[f'{f}_auto'] / best_med:.2f} (medians), "
                f"{low[f'{f}_auto'] / best_min:.2f} (minima); auto ran {probe_choice(f, c)!r}"
            )
        results[c] = {v: times[v] for v in variants}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh)


if __name__ == "__main__":
    main()
