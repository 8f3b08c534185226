"""GPU check (issue 17 §5): kernel parity, NMF layer speed and bandwidth, a BraTS-size training step
against MONAI's SwinUNETR and SegResNet, and the ``torch.compile`` speed-up, in one run of at most
8 minutes on one CUDA device; one Markdown report (stdout, and ``--out FILE`` as ``FILE.md`` +
``FILE.json``).

Sections (each reports ``ok``, ``failed`` with its error line, or ``skipped`` with the reason; one
failing section never loses the others; a time guard skips what would run past ``--budget``):

* ``parity``: float64 ``reference`` against ``triton`` and ``auto`` for every registered solver
  part (defaults; rank 4 where the default is larger; ``ham_nmf`` with HALS too) and the NMF
  kernels at rank 1 and 8, MU and HALS, ``grad_steps`` None and 1 (float64, and float32 against
  the float64 reference): max relative error (``max|a - b| / max|b|``) of the output and of the
  input gradient, and which backend the layer picked (``ran``); and a Factorizer block (every
  kernel of the block: LayerNorm, LayerNorm + projection, MLP branch, window fold, NMF).
* ``bandwidth``: a large device-to-device copy (bytes read + written / time) and the device's
  spec-sheet peak from a table of known GPUs.
* ``nmf_layer``: the NMF layer on X (4096, 8, 512), T = 5, rank 1 and 8 (MU, HALS), fp32 and bf16
  autocast, forward + backward: median time (CUDA events) of ``reference``, ``triton``, ``auto``
  and an unrolled textbook loop written here; GB/s of the *minimum* traffic (X read in forward and
  backward, the output written, its gradient read, dX written: 5 × |X|) against both peaks.
* ``nets``: one AMP bf16 training step (forward, BCE loss, backward, AdamW) at 1×4×128³ of
  ``swin_factorizer`` defaults (in 4, out 3), SwinUNETR(feature_size=24), SegResNet(init_filters=16):
  median step time and ``torch.cuda.max_memory_allocated``, ratios to SwinUNETR and SegResNet.
* ``compile``: the Swin Factorizer step under ``torch.compile`` (compile time = first step) against
  eager, with dynamo's graph-break count.
* ``counts``: the kernel launches and traffic of those nets' training step and eval forward at
  1×4×128³, counted on the meta device (``bench/count_ops.py --nets``; seconds, no GPU time).

Usage::

    python bench/gpu_check.py --out gpu_check          # on a CUDA machine: gpu_check.md / .json
    python bench/gpu_check.py --smoke --out /tmp/smoke  # every section on CPU, tiny sizes, < 1 min

``--smoke`` runs on CPU at tiny sizes (rank 2 for 8, one thread, Triton kernels in its interpreter,
``TRITON_INTERPRET=1``, when triton imports; ``torch.compile`` with dynamo's ``eager`` backend): a
test of this script, run in CI (``tests/test_gpu_check.py``), not a measurement.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check_runner import Config, Section, Skip, free_memory, median_time, run_sections, to_markdown, write

__all__ = [
    "SECTIONS",
    "Config",
    "Skip",
    "main",
    "run_sections",
    "spec_bandwidth",
    "textbook_nmf",
    "to_markdown",
]

#: spec-sheet memory bandwidth (TB/s) by a device name's markers, first match wins
_SPEC_TBS = [
    (("H200",), 4.8),
    (("H100", "NVL"), 3.9),
    (("H100", "PCIE"), 2.0),
    (("H100",), 3.35),
    (("A100", "80GB"), 2.0),
    (("A100",), 1.55),
]


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-300)).item() if want.numel() else 0.0


# --------------------------------------------------------------------------------------- parity
def _parity_cases(ranks: tuple[int, int]) -> list[str]:
    import lowrank

    cases = []
    for name in lowrank.list_parts("solver"):
        rank = inspect.signature(lowrank.get_part("solver", name)).parameters["rank"].default
        cases.append(name if isinstance(rank, int) and rank <= 4 else f"{name}(rank=4)")
    for rank in ranks:
        for update in ("mu", "hals"):
            for grad_steps in ("none", 1):
                cases.append(f"nmf(rank={rank}, update={update}, grad_steps={grad_steps})")
    return cases


def _run_solver(layer, x, probe, backend: str):
    import lowrank

    layer = copy.deepcopy(layer)  # the same state (e.g. an init's call counter) in every backend
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(0)  # the same random init in every backend
    with lowrank.use_kernels(backend):
        out = layer(x)
        (gx,) = torch.autograd.grad((out * probe.to(out.dtype)).sum(), x)
    return out.detach(), gx


def _ran(layer, x, backend: str) -> str:
    """The backend the NMF layer's kernels pick for ``x`` under ``backend`` (other solvers and
    rules without kernels: ``reference``)."""
    import lowrank
    from lowrank.kernels import nmf_backend

    if not hasattr(layer, "_kernel") or not isinstance(layer.rank, int):
        return "reference"
    with lowrank.use_kernels(backend):
        return nmf_backend(x, 1, "mu") if layer._fast(layer.rank) else layer._kernel(x, layer.rank)


def section_parity(cfg: Config, result: dict) -> None:
    import lowrank
    from lowrank.kernels import triton_available

    have_triton = triton_available()
    if have_triton:
        try:
            import triton  # noqa: F401
        except Exception as e:
            have_triton, why = False, f"{type(e).__name__}: {e}"
    else:
        why = "the triton package is not installed (pip install 'lowrank[triton]')"
    backends = ["triton", "auto"] if have_triton else ["auto"]
    g = torch.Generator().manual_seed(0)
    x64 = torch.rand(cfg.parity_shape, generator=g, dtype=torch.float64)
    x64 = torch.where(x64 > 0.2, x64, 0.0).to(cfg.device)  # some exact zeros
    probe = torch.randn(cfg.parity_shape, generator=g, dtype=torch.float64).to(cfg.device)
    # HamNMF's own start (soft assignment) with the HALS rule: a subclass the kernels must honour
    extra = [] if cfg.smoke else ["ham_nmf(rank=4, update=hals)"]
    for spec in _parity_cases(cfg.ranks) + extra:
        cfg.need(5, f"parity of {spec}")
        layer = lowrank.build_solver(spec).to(cfg.device)
        want = _run_solver(layer, x64, probe, "reference")
        # float32 too for the NMF grid (the smoke: its Triton rows, grad_steps=1, to save time)
        fp32 = spec.startswith("nmf(") and not (cfg.smoke and "grad_steps=none" in spec)
        for backend in backends:
            dtypes = [(torch.float64, 1e-8), (torch.float32, 1e-3)]
            for dtype, tol in dtypes[: 2 if fp32 and not (cfg.smoke and backend == "auto") else 1]:
                row = {"part": spec, "backend": backend, "ran": _ran(layer, x64.to(dtype), backend)}
                out, gx = _run_solver(layer, x64.to(dtype), probe, backend)
                row.update(dtype=str(dtype).removeprefix("torch."), out_err=_rel(out, want[0]))
                row.update(grad_err=_rel(gx, want[1]), tol=tol)
                row["ok"] = bool(row["out_err"] <= tol and row["grad_err"] <= tol)
                result["rows"].append(row)
    _block_parity(cfg, result, backends)
    bad = [f"{r['part']} {r['backend']} {r['dtype']}" for r in result["rows"] if not r["ok"]]
    if bad:
        raise AssertionError(f"parity above tolerance: {', '.join(bad)}")
    if not have_triton:
        raise Skip(f"triton not importable ({why}): only `auto` compared with `reference`")


BLOCK = "factorizer(mixer=nmf(rank=1, iters=3), matricize=swin(patch=4, head_dim=8))"


def _block_parity(cfg: Config, result: dict, backends: list[str]) -> None:
    """A Factorizer block (channel LayerNorm, LayerNorm + in_proj + ReLU, window scatter and
    two-view fold, NMF, MLP branch: every kernel of the block) against ``reference``."""
    import lowrank
    from lowrank.kernels import mlp_backend

    cfg.need(5, "parity of the Factorizer block")
    channels, side = (16, 8) if cfg.smoke else (32, 24)
    torch.manual_seed(0)
    block = lowrank.build_block(BLOCK, channels).double().to(cfg.device)
    with torch.no_grad():  # a non-trivial affine part (folded into the projections)
        for name, p in block.named_parameters():
            if "norm" in name:
                p.normal_()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, channels, side, side, side, generator=g, dtype=torch.float64).to(cfg.device)
    probe = torch.randn(x.shape, generator=g, dtype=torch.float64).to(cfg.device)
    want = _run_solver(block, x, probe, "reference")
    for backend in backends:
        for dtype, tol in ((torch.float64, 1e-8), (torch.float32, 1e-3)):
            layer = copy.deepcopy(block).to(dtype)
            with lowrank.use_kernels(backend):
                ran = mlp_backend(x.to(dtype), layer.mlp.fc1.weight)
            out, gx = _run_solver(layer, x.to(dtype), probe, backend)
            row = {
                "part": f"block {BLOCK}",
                "backend": backend,
                "ran": ran,
                "dtype": str(dtype).removeprefix("torch."),
            }
            row.update(out_err=_rel(out, want[0]), grad_err=_rel(gx, want[1]), tol=tol)
            row["ok"] = bool(row["out_err"] <= tol and row["grad_err"] <= tol)
            result["rows"].append(row)


# ------------------------------------------------------------------------------------ bandwidth
def spec_bandwidth(name: str) -> float | None:
    """Spec-sheet memory bandwidth in GB/s of a GPU named ``name`` (``None`` if not in the table)."""
    upper = name.upper()
    for markers, tbs in _SPEC_TBS:
        if all(m in upper for m in markers):
            return tbs * 1e3
    return None


def section_bandwidth(cfg: Config, result: dict) -> None:
    n = cfg.copy_bytes // 4
    src, dst = torch.rand(n, device=cfg.device), torch.empty(n, device=cfg.device)
    seconds = median_time(cfg, lambda: dst.copy_(src), warmup=2, reps=10)
    name = torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda" else "CPU"
    measured = 2 * src.nbytes / seconds / 1e9
    result["rows"].append(
        {
            "device": name,
            "copy_MiB": src.nbytes / 2**20,
            "measured_GBs": measured,
            "spec_GBs": spec_bandwidth(name),
        }
    )
    result["measured_GBs"], result["spec_GBs"] = measured, spec_bandwidth(name)
    result["notes"] = "measured = (bytes read + written) / median time of one device-to-device copy"


# ------------------------------------------------------------------------------------ nmf_layer
def textbook_nmf(x: torch.Tensor, rank: int, update: str, iters: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """The textbook unrolled NMF loop (autograd through every step), the baseline: U, V ~ U(0, 1);
    MU ``U ← U ⊙ XV ⊘ (U VᵀV + eps)`` then V; HALS column by column (clone and assign)."""
    b, m, n = x.shape
    g = torch.Generator(device=x.device).manual_seed(0)
    u = torch.rand(b, m, rank, generator=g, device=x.device).to(x.dtype)
    v = torch.rand(b, n, rank, generator=g, device=x.device).to(x.dtype)

    def hals(a, xb, bb):  # columns of a for min ‖xb - a bbᵀ‖, a >= 0
        xbb, gram = xb @ bb, bb.mT @ bb
        for r in range(rank):
            col = a[..., r] + (xbb[..., r] - (a @ gram[..., r : r + 1])[..., 0]) / (
                gram[..., r, r, None] + eps
            )
            a = a.clone()
            a[..., r] = col.clamp_min(0)
        return a

    for _ in range(iters):
        if update == "mu":
            u = u * (x @ v) / (u @ (v.mT @ v) + eps)
            v = v * (x.mT @ u) / (v @ (u.mT @ u) + eps)
        else:
            u = hals(u, x, v)
            v = hals(v, x.mT, u)
    return u @ v.mT


def _nmf_step(cfg, layer, x, grad, rank: int, update: str, amp: bool, backend: str, sizes: dict):
    """Forward + backward of the NMF layer (or the textbook loop) on ``x``; records the bytes of
    the minimum traffic in ``sizes``."""
    import lowrank

    def step():
        with torch.autocast(cfg.device.type, dtype=torch.bfloat16, enabled=amp):
            if backend == "textbook":
                out = textbook_nmf(x, rank, update)
            else:
                with lowrank.use_kernels(backend):
                    out = layer(x)
        g = grad.to(out.dtype)
        (dx,) = torch.autograd.grad(out, x, g)
        sizes["bytes"] = 2 * x.nbytes + out.nbytes + g.nbytes + dx.nbytes

    return step


def section_nmf_layer(cfg: Config, result: dict, bandwidth: dict) -> None:
    import lowrank
    from lowrank.kernels import triton_available

    backends = ["reference", *(["triton"] if triton_available() else []), "auto", "textbook"]
    peaks = {"copy": bandwidth.get("measured_GBs"), "spec": bandwidth.get("spec_GBs")}
    result["notes"] = (
        "GB/s = minimum traffic / time: X read (forward), output written, output gradient read, "
        "X read again and dX written in backward = 5 × |X| bytes; the kernels move more"
    )
    low, high = cfg.ranks
    cases = [(low, "mu"), (high, "mu"), (high, "hals")]
    for (rank, update), amp in [(c, a) for a in (False, True) for c in cases]:
        dtype = torch.bfloat16 if amp else torch.float32
        x = (torch.rand(cfg.nmf_shape, device=cfg.device) - 0.3).relu().to(dtype).requires_grad_()
        grad = torch.randn_like(x)
        layer = lowrank.build_solver(f"nmf(rank={rank}, iters=5, update={update})").to(cfg.device)
        for backend in backends:
            cfg.need(10, f"nmf_layer {backend} rank {rank} {update}")
            sizes: dict = {}
            step = _nmf_step(cfg, layer, x, grad, rank, update, amp, backend, sizes)
            seconds = median_time(cfg, step)
            gbs = sizes["bytes"] / seconds / 1e9
            ran = "textbook" if backend == "textbook" else _ran(layer, x, backend)
            row = {"rank": rank, "update": update, "dtype": "bf16 autocast" if amp else "fp32"}
            row.update(backend=backend, ran=ran, ms=seconds * 1e3, GBs=gbs)
            for key, peak in peaks.items():
                row[f"pct_{key}"] = 100 * gbs / peak if peak else None
            result["rows"].append(row)
        by = {r["backend"]: r["ms"] for r in result["rows"][-len(backends) :]}
        for r in result["rows"][-len(backends) :]:
            r["vs_reference"], r["vs_textbook"] = by["reference"] / r["ms"], by["textbook"] / r["ms"]


# ----------------------------------------------------------------------------------------- nets
def _nets(cfg: Config) -> dict[str, Callable[[], torch.nn.Module]]:
    from monai.networks.nets import SegResNet, SwinUNETR

    import lowrank

    if cfg.smoke:  # channels and depths reduced; GroupNorm: InstanceNorm needs > 1 voxel at 32³
        spec = f"swin_factorizer(channels=(8, 16, 32), patch=4, pos_embed_size={cfg.net_size})"
        swin = dict(feature_size=12, depths=(1, 1, 1, 1), norm_name=("group", {"num_groups": 1}))
        filters = 8
    else:
        spec, swin, filters = "swin_factorizer", dict(feature_size=24), 16
    return {
        "swin_factorizer": lambda: lowrank.build_net(spec, 4, 3),
        "SwinUNETR": lambda: SwinUNETR(in_channels=4, out_channels=3, spatial_dims=3, **swin),
        "SegResNet": lambda: SegResNet(spatial_dims=3, in_channels=4, out_channels=3, init_filters=filters),
    }


def _train_step(cfg: Config, model: torch.nn.Module) -> Callable[[], None]:
    s = cfg.net_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, s, s, s, generator=g).to(cfg.device)
    target = (torch.rand(1, 3, s, s, s, generator=g) > 0.5).float().to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast(cfg.device.type, dtype=torch.bfloat16):
            out = model(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        loss = sum(
            F.binary_cross_entropy_with_logits(o.float(), target) for o in outs if o.shape == target.shape
        )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def section_nets(cfg: Config, result: dict) -> None:
    if cfg.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    for name, build in _nets(cfg).items():
        cfg.need(30 if not cfg.smoke else 2, f"the {name} step")
        torch.manual_seed(0)
        model = build().to(cfg.device).train()
        step = _train_step(cfg, model)
        free_memory(cfg)
        seconds = median_time(cfg, step, reps=cfg.net_reps)
        mem = torch.cuda.max_memory_allocated(cfg.device) / 2**20 if cfg.device.type == "cuda" else None
        params = sum(p.numel() for p in model.parameters())
        result["rows"].append({"model": name, "params_M": params / 1e6, "ms": seconds * 1e3, "peak_MiB": mem})
        del model, step
        free_memory(cfg)
    rows = {r["model"]: r for r in result["rows"]}
    for r in result["rows"]:
        for base in ("SwinUNETR", "SegResNet"):
            r[f"time_vs_{base}"] = r["ms"] / rows[base]["ms"]
            r[f"mem_vs_{base}"] = r["peak_MiB"] / rows[base]["peak_MiB"] if r["peak_MiB"] else None
    s = cfg.net_size
    result["notes"] = (
        f"1×4×{s}³, AMP bf16, BCE loss, AdamW, median of {cfg.net_reps} steps after {cfg.warmup}; "
        "peak = max_memory_allocated over the steps (parameters, optimizer state, input included); "
        "goals: Factorizer time < SwinUNETR, <= 1.5× SegResNet; memory <= 0.5× SwinUNETR"
    )


# -------------------------------------------------------------------------------------- compile
def section_compile(cfg: Config, result: dict) -> None:
    from torch._dynamo.utils import counters

    cfg.need(20 if cfg.smoke else 120, "torch.compile of the Swin Factorizer step")
    build = _nets(cfg)["swin_factorizer"]
    torch.manual_seed(0)
    eager = build().to(cfg.device).train()
    eager_s = median_time(cfg, _train_step(cfg, eager), reps=cfg.net_reps)
    del eager
    free_memory(cfg)
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    backend = "eager" if cfg.smoke else "inductor"
    model = torch.compile(build().to(cfg.device).train(), backend=backend)
    step = _train_step(cfg, model)
    t0 = time.perf_counter()
    step()
    cfg.sync()
    compile_s = time.perf_counter() - t0
    compiled_s = median_time(cfg, step, reps=cfg.net_reps)
    breaks = sum(counters["graph_break"].values())
    result["rows"].append(
        {"backend": backend, "compile_s": compile_s, "eager_ms": eager_s * 1e3,
         "compiled_ms": compiled_s * 1e3, "speedup": eager_s / compiled_s, "graph_breaks": breaks}
    )  # fmt: skip
    result["notes"] = "compile_s = wall time of the first compiled step (tracing, compilation, one step)"


# --------------------------------------------------------------------------------------- counts
def section_counts(cfg: Config, result: dict) -> None:
    from count_ops import NETS, count, net_step

    cfg.need(15, "the meta-device op counts")
    for name in NETS:
        for backend in ("reference", "auto") if name == "swin_factorizer" else ("auto",):
            t = count(net_step(name, backend=backend))
            e = count(net_step(name, backend=backend, train=False))
            result["rows"].append(
                {"model": name, "backend": backend, "train_ops": t.ops, "train_GB": t.bytes / 1e9,
                 "eval_ops": e.ops, "eval_GB": e.bytes / 1e9}
            )  # fmt: skip
    result["notes"] = (
        "bench/count_ops.py --nets: 1×4×128³ on the meta device (no GPU time), steady state, "
        "auto as on CUDA; budgets (issue 17 §3): Swin Factorizer train <= 1,266 ops and <= 60 GB, "
        "eval <= 1,000 ops"
    )


# --------------------------------------------------------------------------------------- runner
SECTIONS: dict[str, Section] = {
    "parity": lambda cfg, res, done: section_parity(cfg, res),
    "bandwidth": lambda cfg, res, done: section_bandwidth(cfg, res),
    "nmf_layer": lambda cfg, res, done: section_nmf_layer(cfg, res, done.get("bandwidth", {})),
    "nets": lambda cfg, res, done: section_nets(cfg, res),
    "compile": lambda cfg, res, done: section_compile(cfg, res),
    "counts": lambda cfg, res, done: section_counts(cfg, res),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every section on CPU at tiny sizes (a test)")
    parser.add_argument("--out", type=Path, help="also write OUT.md and OUT.json")
    parser.add_argument("--budget", type=float, default=None, help="seconds (default 440; smoke 120)")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("[gpu_check] no CUDA device: running --smoke (CPU, tiny sizes: a test, no measurement)")
        args.smoke = True
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels import triton
        torch.set_num_threads(1)
    # 440 s: with the imports before it, the whole run stays under 8 minutes
    cfg = Config(smoke=args.smoke, budget=args.budget or (120.0 if args.smoke else 440.0))
    try:
        import triton

        triton_version = triton.__version__
    except Exception as e:
        triton_version = f"not importable ({type(e).__name__})"
    sections = run_sections(cfg, {k: SECTIONS[k] for k in args.sections})
    meta = {
        "device": torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", ""),
        "smoke": cfg.smoke,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "total_s": round(time.monotonic() - cfg.start, 1),
    }
    markdown = to_markdown(meta, sections)
    print(markdown)
    report = {"meta": meta, "sections": sections}
    if args.out:
        base = args.out.with_suffix("") if args.out.suffix in (".md", ".json") else args.out
        write(base.with_name(base.name + ".md"), markdown)
        write(base.with_name(base.name + ".json"), json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
