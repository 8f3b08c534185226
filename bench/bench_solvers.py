"""Benchmark the NMF layers against a textbook baseline written here, in the same run.

Textbook baseline: the unrolled autograd loop (``U ← U ⊙ XV ⊘ (U VᵀV + 1e-16)``, then V),
HALS with a clone-and-assign Python loop over columns, eps 1e-16, U and V initialized U(0, 1).

Cases (X post-ReLU Gaussian, fp32, T = 5 unless said):
  rank1      X (4096, 8, 512), rank 1, full gradient, forward+backward (loss = out.sum())
  hals8      X (4096, 8, 512), HALS rank 8, full gradient, forward+backward (+ finiteness of dX)
  hamburger  X (B, 512, 4096), r = 64, K = 6, MU: one-step gradient vs unrolled autograd memory
  compile    rank-1 forward (no grad), torch.compile vs eager
  limits     one read of X (x.sum()) and sgemm GFLOP/s, for the distance to the machine's limits

Timing: medians of repeated runs (``torch.utils.benchmark``-style, after a warm-up).
Memory: each case runs in a fresh subprocess; peak RSS during fwd+bwd (``VmHWM`` after
resetting it with ``/proc/self/clear_refs``) minus the RSS with X allocated; and the bytes
autograd keeps for backward (unique storages seen by ``saved_tensors_hooks``, X excluded).

Usage: ``OMP_NUM_THREADS=2 python bench/bench_solvers.py [--batch 4096] [--repeats 7] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from lowrank import build_solver

EPS = 1e-16


# ------------------------------------------------------------------------- textbook baseline
def textbook_init(x: torch.Tensor, rank: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(*x.shape[:-1], rank, generator=g, dtype=x.dtype)
    v = torch.rand(*x.shape[:-2], x.shape[-1], rank, generator=g, dtype=x.dtype)
    return u, v


def textbook_mu(x, u, v, iters):
    for _ in range(iters):
        u = u * (x @ v) / (u @ (v.mT @ v) + EPS)
        v = v * (x.mT @ u) / (v @ (u.mT @ u) + EPS)
    return u @ v.mT


def _textbook_hals_half(x, w, h):
    a, b = x @ h, h.mT @ h
    for r in range(w.shape[-1]):
        column = (
            w[..., r] + (a[..., r] - (w @ b[..., r : r + 1])[..., 0]) / (b[..., r, r, None] + EPS)
        ).clamp(min=0)
        w = w.clone()
        w[..., r] = column
    return w


def textbook_hals(x, u, v, iters):
    for _ in range(iters):
        u = _textbook_hals_half(x, u, v)
        v = _textbook_hals_half(x.mT, v, u)
    return u @ v.mT


def textbook_mu_one_step(x, u, v, iters):
    """Hamburger's one-step gradient written the textbook way (for reference)."""
    with torch.no_grad():
        for _ in range(iters - 1):
            u = u * (x @ v) / (u @ (v.mT @ v) + EPS)
            v = v * (x.mT @ u) / (v @ (u.mT @ u) + EPS)
    u = u * (x @ v) / (u @ (v.mT @ v) + EPS)
    v = v * (x.mT @ u) / (v @ (u.mT @ u) + EPS)
    return u @ v.mT


# ------------------------------------------------------------------------------------- cases
def make_input(case: str, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    shape = (batch, 512, 4096) if case.startswith("ham") else (batch, 8, 512)
    return torch.randn(*shape, generator=g).relu()


def make_fn(name: str):
    """A function x -> output (fwd) for a case name ``<case>:<impl>``."""
    case, impl = name.split(":")
    if case == "rank1":
        if impl == "ours":
            layer = build_solver("nmf(rank=1, iters=5)")
            return layer
        return lambda x: textbook_mu(x, *textbook_init(x, 1), 5)
    if case == "hals8":
        if impl == "ours":
            return build_solver("nmf(rank=8, iters=5, update=hals)")
        return lambda x: textbook_hals(x, *textbook_init(x, 8), 5)
    if case == "ham":
        spec = {"ours1": "nmf(rank=64, iters=6, grad_steps=1)", "oursfull": "nmf(rank=64, iters=6)"}
        if impl in spec:
            return build_solver(spec[impl])
        if impl == "textbook1":
            return lambda x: textbook_mu_one_step(x, *textbook_init(x, 64), 6)
        return lambda x: textbook_mu(x, *textbook_init(x, 64), 6)
    raise ValueError(name)


def fwd_bwd(fn, x):
    x.grad = None
    fn(x).sum().backward()
    return x.grad


def saved_bytes(fn, x) -> int:
    storages: dict[int, int] = {}
    own = x.untyped_storage().data_ptr()

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() != own:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    del out
    return sum(storages.values())


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _reset_peak_rss_kb() -> int:
    """Reset the peak RSS (Linux ``clear_refs``) and return the current RSS in KiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmRSS")
    except OSError:  # not Linux: fall back to the lifetime peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss_kb() -> int:
    try:
        return _status_kb("VmHWM")
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(name: str, batch: int) -> None:
    """Run one fwd+bwd in this fresh process and print its memory figures as JSON."""
    fn = make_fn(name)
    fwd_bwd(fn, make_input(name, 2).requires_grad_())  # load kernels, allocate tables
    x = make_input(name, batch).requires_grad_()
    before = _reset_peak_rss_kb()
    grad = fwd_bwd(fn, x)
    peak = _peak_rss_kb()
    finite = bool(torch.isfinite(grad).all())
    x.grad = None
    saved = saved_bytes(fn, x)
    print(json.dumps({"peak_mb": (peak - before) / 1024, "saved_mb": saved / 2**20, "finite_grad": finite}))


def memory(name: str, batch: int) -> dict:
    # every block above 64 KiB is mmapped and unmapped on free (a fixed threshold turns off
    # glibc's dynamic one), so the RSS follows the live tensors instead of the heap's high water
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, "--batch", str(batch)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_time(fn, x, repeats: int, backward: bool = True) -> float:
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        if backward:
            fwd_bwd(fn, x)
        else:
            with torch.no_grad():
                fn(x)
        if i:  # the first run is a warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def limits(x: torch.Tensor, repeats: int) -> dict:
    read = statistics.median([_timed(lambda: x.sum()) for _ in range(repeats)])
    a = torch.randn(2048, 2048)
    mm = statistics.median([_timed(lambda: a @ a) for _ in range(max(3, repeats // 2))])
    return {
        "read_ms": read * 1e3,
        "read_gbs": x.numel() * 4 / read / 1e9,
        "sgemm_gflops": 2 * 2048**3 / mm / 1e9,
    }


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--ham-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cases", default="rank1,hals8,ham,compile,limits")
    parser.add_argument("--child", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batch)
        return
    cases = args.cases.split(",")
    results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch}
    for case in ("rank1", "hals8"):
        if case not in cases:
            continue
        x = make_input(case, args.batch).requires_grad_()
        row = {}
        for impl in ("ours", "textbook"):
            name = f"{case}:{impl}"
            row[impl] = {"ms": median_time(make_fn(name), x, args.repeats) * 1e3, **memory(name, args.batch)}
        row["speedup"] = row["textbook"]["ms"] / row["ours"]["ms"]
        row["peak_ratio"] = row["ours"]["peak_mb"] / max(row["textbook"]["peak_mb"], 1e-9)
        results[case] = row
        print(case, json.dumps(row), flush=True)
    if "ham" in cases:
        row = {}
        for impl in ("ours1", "oursfull", "textbook", "textbook1"):
            name = f"ham:{impl}"
            row[impl] = memory(name, args.ham_batch)
        row["saved_ratio_one_step_vs_unrolled"] = row["ours1"]["saved_mb"] / row["textbook"]["saved_mb"]
        row["peak_ratio_one_step_vs_unrolled"] = row["ours1"]["peak_mb"] / max(
            row["textbook"]["peak_mb"], 1e-9
        )
        results["ham"] = row
        print("ham", json.dumps(row), flush=True)
    if "compile" in cases:
        x = make_input("rank1", args.batch)
        layer = build_solver("nmf(rank=1, iters=5)").eval()
        eager = median_time(layer, x, args.repeats, backward=False)
        compiled = torch.compile(layer)
        t0 = time.perf_counter()
        with torch.no_grad():
            compiled(x)
        compile_s = time.perf_counter() - t0
        fast = median_time(compiled, x, args.repeats, backward=False)
        results["compile"] = {"eager_ms": eager * 1e3, "compiled_ms": fast * 1e3, "speedup": eager / fast}
        results["compile"]["compile_s"] = compile_s
        print("compile", json.dumps(results["compile"]), flush=True)
    if "limits" in cases:
        results["limits"] = limits(make_input("rank1", args.batch), args.repeats)
        print("limits", json.dumps(results["limits"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
