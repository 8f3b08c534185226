"""Benchmark the nets at 1×4×64³: forward+backward time and peak RSS, ratios in one run.

Models: our Swin Factorizer (BraTS widths, patch 4), MONAI's SwinUNETR and SegResNet, our U-Net.
Each measurement runs in a fresh subprocess (so ``ru_maxrss`` is that model's peak), and the
models are interleaved over rounds so that load drifts on a shared machine hit all of them;
the table reports medians over rounds and ratios to SwinUNETR and SegResNet. ``--profile``
also prints the top forward ops of the Swin Factorizer (``torch.profiler``). ``--baseline DIR``
also times the Swin Factorizer of another source tree (e.g. ``git archive HEAD lowrank | tar -x
-C DIR``) in the same rounds, as the before/after comparison. ``--retain-memory`` starts every
model's process (and the profile's) with glibc's malloc tunables
:data:`lowrank.runtime.ALLOCATOR_ENV` (freed memory reused, as ``lowrank train`` runs), so that
large activations are not page-faulted in again at each step.

Usage::

    OMP_NUM_THREADS=2 python bench/bench_nets.py [--rounds 3] [--iters 2] [--size 64] [--profile]
        [--baseline DIR] [--retain-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

__all__ = ["MODELS", "BASELINE", "build", "measure", "main"]

MODELS = {
    "swin_factorizer": "ours: swin_factorizer(patch=4, pos_embed_size=64)",
    "swinunetr": "MONAI SwinUNETR(feature_size=48)",
    "segresnet": "MONAI SegResNet(init_filters=8)",
    "unet": "ours: unet (nnU-Net-like, 28.7M)",
}
#: the row of ``--baseline``: the Swin Factorizer of another source tree
BASELINE = "swin_factorizer_baseline"


def build(name: str, size: int):
    """The model ``name`` for a 4-channel input of ``size³`` and 3 output channels."""
    from lowrank import build_net

    if name == "swin_factorizer":
        return build_net(f"swin_factorizer(patch=4, pos_embed_size={size})", 4, 3)
    if name == "unet":
        return build_net("unet", 4, 3)
    if name == "swinunetr":
        from monai.networks.nets import SwinUNETR

        return SwinUNETR(in_channels=4, out_channels=3, feature_size=48, spatial_dims=3)
    if name == "segresnet":
        from monai.networks.nets import SegResNet

        return SegResNet(spatial_dims=3, in_channels=4, out_channels=3, init_filters=8)
    raise ValueError(f"unknown model {name!r}; choose from {list(MODELS)}")


def measure(name: str, size: int, iters: int) -> dict:
    """Forward+backward median time and peak RSS of one model (call in a fresh process)."""
    import resource
    import time

    import torch

    torch.manual_seed(0)
    model = build(name, size).train()
    x = torch.randn(1, 4, size, size, size)
    params = sum(p.numel() for p in model.parameters())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        out = model(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        sum(o.float().mean() for o in outs).backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import lowrank

    return {
        "name": name,
        "src": os.path.dirname(os.path.dirname(lowrank.__file__)),
        "params": params,
        "time_s": statistics.median(times),
        "peak_rss_mb": peak / 1024,
        "rss_model_mb": rss_before / 1024,
    }


def profile(size: int, rows: int = 12) -> str:
    """The top forward ops (self CPU time) of the Swin Factorizer."""
    import torch

    model = build("swin_factorizer", size).eval()
    x = torch.randn(1, 4, size, size, size)
    with torch.no_grad():
        model(x)
        with torch.profiler.profile() as prof:
            model(x)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--baseline", help="source tree of a baseline lowrank to time as well")
    parser.add_argument("--retain-memory", action="store_true", help="glibc keeps freed memory (see above)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--profile-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_only:
        print(profile(args.size))
        return
    if args.one:
        print(json.dumps(measure(args.one, args.size, args.iters)))
        return
    from lowrank.runtime import ALLOCATOR_ENV, allocator_env_active

    models = list(args.models) + ([BASELINE] if args.baseline else [])
    results: dict[str, list[dict]] = {m: [] for m in models}
    for r in range(args.rounds):
        for name in models:
            env = dict(os.environ)
            if name == BASELINE:
                env["PYTHONPATH"] = os.path.abspath(args.baseline)
            cmd = [
                sys.executable,
                __file__,
                "--one",
                "swin_factorizer" if name == BASELINE else name,
                "--size",
                str(args.size),
                "--iters",
                str(args.iters),
            ]
            if args.retain_memory:
                env.update(ALLOCATOR_ENV)
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r}: {results[name][-1]}", file=sys.stderr)
    med = {
        name: {
            "params": runs[0]["params"],
            "time_s": statistics.median(x["time_s"] for x in runs),
            "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in runs),
        }
        for name, runs in results.items()
    }
    size = args.size
    print(f"\n1x4x{size}^3, forward+backward, median of {args.rounds} rounds x {args.iters} iterations\n")
    print("| model | params | fwd+bwd (s) | / SwinUNETR | / SegResNet | peak RSS (MB) | / SwinUNETR |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ref_t = med.get("swinunetr", {}).get("time_s")
    ref_m = med.get("swinunetr", {}).get("peak_rss_mb")
    seg_t = med.get("segresnet", {}).get("time_s")
    for name, m in med.items():
        rt = f"{m['time_s'] / ref_t:.2f}" if ref_t else "-"
        rs = f"{m['time_s'] / seg_t:.2f}" if seg_t else "-"
        rm = f"{m['peak_rss_mb'] / ref_m:.2f}" if ref_m else "-"
        label = (
            f"{MODELS['swin_factorizer']} [baseline {args.baseline}]" if name == BASELINE else MODELS[name]
        )
        print(
            f"| {label} | {m['params'] / 1e6:.2f}M | {m['time_s']:.2f} | {rt} | {rs} | "
            f"{m['peak_rss_mb']:.0f} | {rm} |"
        )
    if args.profile:
        print("\nSwin Factorizer forward, top ops by self CPU time:\n")
        if args.retain_memory and not allocator_env_active():  # the profile runs in a child too
            cmd = [sys.executable, __file__, "--profile-only", "--size", str(size)]
            env = {**os.environ, **ALLOCATOR_ENV}
            print(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
        else:
            print(profile(size))


if __name__ == "__main__":
    main()
