"""Hamburger vs SDPA self-attention on 1×512×H×W feature maps (CPU): time, peak memory, MACs.

Times: all models of one size are built in one process and timed interleaved, rep by rep
(medians), so a shared machine's noise hits them alike. Peak memory: each (model, size) runs one
forward + backward in its own subprocess, so that the peak RSS increase belongs to that model
alone (Linux: the peak is reset through ``/proc/self/clear_refs`` after the model and input are
built and read from ``VmHWM``). Ratios are against the Hamburger of the same run.

Models (same width C=512, 2-D, training mode, forward + backward of ``out.sum()``):

- ``ham``: ``hamburger(ham=<--ham>, dim=512, version=v1)``, default ``ham_nmf`` (NMF with the
  softmax coefficient init) r=64, K=6, one-step gradient;
- ``sdpa1`` / ``sdpa8``: ``x + proj(SDPA(q, k, v))`` with a 1×1 qkv conv and ``heads`` = 1 / 8,
  via ``torch.nn.functional.scaled_dot_product_attention`` (CPU flash kernel);
- ``math1`` / ``math8``: the same with SDPA restricted to its math backend (naive attention, the
  N×N scores materialized — what the paper compares against).

MACs (FLOPs / 2) of one forward + backward are counted with the formulas of
``torch.utils.flop_counter`` (FlopCounterMode's ``flop_registry``; see :class:`_FlopCount` for
why not FlopCounterMode itself); attention is counted on the ``meta`` device, where SDPA
decomposes into counted ``bmm`` (the CPU flash kernel has no FLOP formula).

Usage::

    OMP_NUM_THREADS=1 python bench/bench_hamburger.py --sizes 32 64 128 --reps 5
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from lowrank.flops import inplace_flop_formulas

__all__ = ["SDPABlock", "build_model", "main"]

DEFAULT_HAM = "ham_nmf(rank=64, iters=6, eval_iters=7, grad_steps=1)"


class SDPABlock(nn.Module):
    """Self-attention block ``x + proj(SDPA(q, k, v))`` over the positions of ``(B, C, H, W)``.

    Tokens are laid out ``(B, N, C)`` so that q, k, v have a unit last-dim stride: with that
    layout CPU SDPA uses its flash kernel (O(N) memory); q/k/v taken as transposed views of a
    ``(B, 3C, N)`` conv output fall back to the math kernel, which materializes the N×N scores.
    """

    def __init__(self, channels: int = 512, heads: int = 1, backend: str | None = None):
        super().__init__()
        self.heads = heads
        self.backend = backend
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, *S = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        qkv = self.qkv(tokens).reshape(B, -1, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if self.backend == "math":  # naive attention: materializes the N×N scores
            with sdpa_kernel(SDPBackend.MATH):
                o = F.scaled_dot_product_attention(*qkv.unbind(0))
        else:
            o = F.scaled_dot_product_attention(*qkv.unbind(0))  # (B, heads, N, C/heads)
        out = self.proj(o.transpose(1, 2).reshape(B, -1, C))
        return x + out.transpose(1, 2).reshape(B, C, *S)


def build_model(name: str, ham: str, channels: int = 512) -> nn.Module:
    """Build the benchmarked model ``name`` (``ham``, ``sdpa1``, ``sdpa8``)."""
    if name == "ham":
        from lowrank import build_block

        return build_block(f"hamburger(ham={ham}, dim={channels}, version=v1)", channels, spatial_dims=2)
    if name.startswith("sdpa"):
        return SDPABlock(channels, heads=int(name[4:]))
    if name.startswith("math"):
        return SDPABlock(channels, heads=int(name[4:]), backend="math")
    raise ValueError(f"unknown model {name!r}")


class _FlopCount(TorchDispatchMode):
    """FlopCounterMode's formulas (``flop_registry``) without its module tracker.

    ``FlopCounterMode`` registers gradient hooks on the inputs of every module call; a module
    called under ``torch.no_grad()`` with an input that requires grad (the hams' no-grad
    iterations) makes it fail with "Expected gradient function to be set" (torch 2.13).
    """

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.flops += count(*args, **kwargs, out_val=out)
        return out


def _macs(name: str, ham: str, size: int, channels: int) -> float:
    device = "cpu" if name == "ham" else "meta"
    with torch.device(device):
        model = build_model(name, ham, channels)
        x = torch.randn(1, channels, size, size, requires_grad=True)
    with inplace_flop_formulas(), _FlopCount() as counter:
        model(x).sum().backward()
    return counter.flops / 2


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> int:
    """Reset the peak RSS (Linux ``clear_refs`` 5) and return the current RSS in KiB.

    Without ``/proc`` (not Linux), returns ``ru_maxrss``: the delta is then only an upper bound
    of nothing below the earlier peak.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS") or 0
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss() -> int:
    """Peak RSS in KiB since the last reset (``VmHWM``), else ``ru_maxrss``."""
    peak = _status_kib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_worker(name: str, ham: str, size: int, channels: int) -> dict:
    """Peak RSS increase of one forward + backward, MACs and parameters, in this process."""
    torch.manual_seed(0)
    model = build_model(name, ham, channels).train()
    x = torch.randn(1, channels, size, size, requires_grad=True)
    base = _reset_peak_rss()
    model(x).sum().backward()
    peak = _peak_rss()
    return {
        "model": name,
        "size": size,
        "peak_mib": (peak - base) / 1024,
        "macs": _macs(name, ham, size, channels),
        "params": sum(p.numel() for p in model.parameters()),
    }


def _memory(name: str, ham: str, size: int, channels: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--ham", ham, "--sizes", str(size)]
    cmd += ["--channels", str(channels)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def time_models(names: list[str], ham: str, size: int, reps: int, channels: int, warmup: set[str]) -> dict:
    """Median forward + backward time per model, the models interleaved rep by rep.

    Interleaving spreads the noise of a shared machine over all models alike. Models in
    ``warmup`` get one untimed run first.
    """
    torch.manual_seed(0)
    models = {n: build_model(n, ham, channels).train() for n in names}
    x = torch.randn(1, channels, size, size, requires_grad=True)

    def once(model) -> float:
        model.zero_grad(set_to_none=True)
        x.grad = None
        t0 = time.perf_counter()
        model(x).sum().backward()
        return time.perf_counter() - t0

    for n in names:
        if n in warmup:
            once(models[n])
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(reps):
        for n in names:
            times[n].append(once(models[n]))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--models", nargs="+", default=["ham", "sdpa1", "sdpa8", "math1", "math8"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--reps-large", type=int, default=2, help="interleaved reps at H=W >= 128")
    parser.add_argument("--max-math-size", type=int, default=64, help="skip math attention above this")
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--ham", default=DEFAULT_HAM)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(memory_worker(args.worker, args.ham, args.sizes[0], args.channels)))
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, ham={args.ham}")
    header = "| H=W | model | fwd+bwd (s) | × ham time | peak ΔRSS (MiB) | × ham mem | GMACs | params |"
    print(header + "\n|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        names = [n for n in args.models if not (n.startswith("math") and size > args.max_math_size)]
        large = size >= 128
        warmup = {"ham"} if large else set(names)  # attention at 128 runs for minutes: no warm-up
        times = time_models(
            names, args.ham, size, args.reps_large if large else args.reps, args.channels, warmup
        )
        rows = []
        for n in names:
            row = _memory(n, args.ham, size, args.channels)
            row.update(time_s=statistics.median(times[n]), times=times[n])
            rows.append(row)
        ref = next((r for r in rows if r["model"] == "ham"), rows[0])
        for r in rows:
            print(
                f"| {size} | {r['model']} | {r['time_s']:.3f} | {r['time_s'] / ref['time_s']:.1f} "
                f"| {r['peak_mib']:.0f} | {r['peak_mib'] / max(ref['peak_mib'], 1e-9):.2f} "
                f"| {r['macs'] / 1e9:.1f} | {r['params'] / 1e6:.2f}M |",
                flush=True,
            )
        print("raw:", json.dumps(rows), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
