"""Same-wall-time comparison of the default Swin Factorizer with a U-Net baseline, and a profile.

Comparison: the default ``lowrank train`` run (the Swin Factorizer, ``DEFAULT_STEPS``) and
``unet(channels=[8, 16, 32, 64])`` with the *same training recipe* (learning rate, warm-up,
weight decay, batch, patch, validation schedule: every ``TrainConfig`` default; the U-Net gets
the learning rate the Factorizer's run used) are run as
``lowrank train`` subprocesses, one after the other. The U-Net gets the number of steps that fits
in the Factorizer's wall time: the per-step cost of both nets at 1 and 2 intra-op threads is
probed in this process first (interleaved training steps, median), each net runs at its faster
thread count (``--threads``), and the U-Net's steps are ``round(steps · t_factorizer / t_unet)``.
Both runs' measured wall times are printed so the match can be checked; the table (held-out Dice
and HD95 per class) is printed as Markdown. A U-Net run at equal steps is added with
``--equal-steps``.

Profile (``--profile``): one training step of each net (forward, DiceCE + deep supervision,
backward, AdamW) under ``torch.profiler`` (top ops by self CPU time, ATen ops per step), and the
forward+backward time of each component (stem, down/up convs, the Factorizer blocks' mixer branch
split into NMF solver, window copies and norm + projections, the MLP branch, ...) at its real input
shape, grouped by type.

Usage::

    python bench/train_compare.py --out runs/compare --equal-steps   # same-wall-time table
    OMP_NUM_THREADS=2 python bench/train_compare.py --profile        # why a step costs what it does
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main", "probe_step_time", "profile_net", "component_times"]

UNET = "unet(channels=[8, 16, 32, 64])"


def _setup(spec: str, patch: list[int], batch: int, seed: int = 0):
    """A net in training mode, the run's loss and optimizer, and one random batch."""
    import torch

    from lowrank import build_net
    from lowrank.train import TrainConfig
    from lowrank.train.config import default_lr
    from lowrank.train.loop import make_loss, make_optimizer

    cfg = TrainConfig()
    gen = torch.Generator().manual_seed(seed)
    net = build_net(spec, 1, 4, spatial_dims=len(patch)).train()
    lr = cfg.lr or default_lr(sum(p.numel() for p in net.parameters()))
    opt = make_optimizer(net.parameters(), lr, cfg.weight_decay, torch.device("cpu"))
    x = torch.randn(batch, 1, *patch, generator=gen)
    y = torch.randint(0, 4, (batch, 1, *patch), generator=gen).float()
    loss_fn = make_loss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    return net, step, x


def probe_step_time(
    specs: list[str], patch: list[int], batch: int, repeats: int = 12, threads: tuple[int, ...] = (0,)
) -> list[list[float]]:
    """Median wall seconds of a training step of each spec at each thread count (0: current).

    All (spec, threads) pairs are interleaved step by step, so changing load hits them alike.
    Returns ``times[spec index][threads index]``.
    """
    import torch

    current = torch.get_num_threads()
    steps = [_setup(s, patch, batch)[1] for s in specs]
    times = [[[] for _ in threads] for _ in specs]
    try:
        for r in range(repeats + 2):
            for fn, per_spec in zip(steps, times):
                for n, ts in zip(threads, per_spec):
                    torch.set_num_threads(n or current)
                    t = time.perf_counter()
                    fn()
                    if r >= 2:  # warm-up
                        ts.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(current)
    return [[sorted(ts)[len(ts) // 2] for ts in per_spec] for per_spec in times]


def profile_net(spec: str, patch: list[int], batch: int, rows: int = 15) -> str:
    """``torch.profiler`` table of one training step (after two warm-up steps)."""
    from torch.profiler import ProfilerActivity, profile

    _, step, _ = _setup(spec, patch, batch)
    step(), step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    n_aten = sum(e.count for e in events if e.key.startswith("aten::"))
    table = events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)
    return f"{spec}: {n_aten} ATen ops per training step\n{table}"


def _timed(fn, repeats: int = 9) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[repeats // 2]


def _mlp_branch(block, x):
    """``x + mlp(norm2(x))`` of a Factorizer block (its forward with the mixer skipped)."""
    block.skip_mixer = True
    try:
        return block(x)
    finally:
        block.skip_mixer = False


def component_times(spec: str, patch: list[int], batch: int) -> tuple[float, dict[str, float]]:
    """Median training-step time and forward+backward time of each component (seconds).

    Components are run alone on their captured real inputs (a ones cotangent); keys are
    ``"<type> <stage>"``, the Factorizer's mixer branch also split into ``"  nmf solver"``,
    ``"  window copies"`` (matricize + inverse) and ``"  norm + projections"`` (the rest).
    """
    import torch

    net, step, x = _setup(spec, patch, batch)
    captured: dict[str, tuple] = {}

    def capture(name, module, fn=None):
        def hook(mod, args, out):
            captured[name] = (
                fn or mod,
                [a.detach().clone().requires_grad_(a.is_floating_point()) for a in args],
            )

        module.register_forward_hook(hook)

    if net.stem is not None:
        capture("stem conv", net.stem)
    for i, m in enumerate(net.downs):
        capture(f"down conv {i}", m)
    for i, m in enumerate(net.ups):
        capture(f"up conv {i}", m)
    for i, m in enumerate(net.heads):
        capture(f"head {i}", m)
    for i, stage in enumerate(net.stages):
        if stage.adapter is not None:
            capture(f"adapter {i}", stage.adapter)
        for b in stage.blocks:
            if hasattr(b, "mix") and hasattr(b, "matricize"):
                capture(f"factorizer mixer branch {i}", b, b.mix)
                capture(f"  nmf solver {i}", b.mixer)
                capture(f"  window copies {i}", b.matricize, lambda h, m=b.matricize: m.inverse(*m(h)))
                if b.mlp is not None:
                    capture(f"factorizer mlp branch {i}", b, lambda t, b=b: _mlp_branch(b, t))
            else:
                capture(f"{type(b).__name__} block {i}", b)
    net(x)

    def run(fn, args):
        out = fn(*args)
        out = out[0] if isinstance(out, tuple) else out
        out.backward(torch.ones_like(out))

    full = _timed(step)
    times = {name: _timed(lambda fn=fn, args=args: run(fn, args)) for name, (fn, args) in captured.items()}
    for name in [n for n in times if n.startswith("factorizer mixer branch")]:
        stage = name.rsplit(" ", 1)[1]
        rest = times[name] - times[f"  nmf solver {stage}"] - times[f"  window copies {stage}"]
        times[f"  norm + projections {stage}"] = rest
    return full, times


def _component_report(spec: str, patch: list[int], batch: int) -> str:
    full, times = component_times(spec, patch, batch)
    groups: dict[str, float] = collections.defaultdict(float)
    for name, t in times.items():
        groups[name.strip().rsplit(" ", 1)[0]] += t
    top = {k: v for k, v in groups.items() if not k.startswith(("nmf", "norm +", "window"))}
    rest = full - sum(top.values())
    lines = [f"{spec}: training step {full * 1e3:.1f} ms (median)"]
    for key, value in sorted(top.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {key:<34} {value * 1e3:7.1f} ms  {100 * value / full:5.1f} %")
        if key == "factorizer mixer branch":
            for sub in ("window copies", "nmf solver", "norm + projections"):
                v = groups[sub]
                lines.append(f"    {sub:<32} {v * 1e3:7.1f} ms  {100 * v / full:5.1f} %")
    lines.append(f"  {'loss, optimizer, glue (rest)':<34} {rest * 1e3:7.1f} ms  {100 * rest / full:5.1f} %")
    return "\n".join(lines)


def _run(spec: str | None, steps: int, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "lowrank.train", "train", "--steps", str(steps), "--out", str(out),
           "--quiet", "--no-report", *extra]  # fmt: skip
    if spec:
        cmd += ["--spec", spec]
    subprocess.run(cmd, check=True, env=dict(os.environ))
    return json.loads((out / "metrics.json").read_text())


def _load() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


def main(argv: list[str] | None = None) -> int:
    import torch

    from lowrank.train import DEFAULT_SPEC, DEFAULT_STEPS, TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps of the Factorizer run")
    parser.add_argument("--spec", default=DEFAULT_SPEC, help="the Factorizer spec (default: the default)")
    parser.add_argument("--baseline", default=UNET)
    parser.add_argument("--baseline-steps", type=int, default=None, help="instead of the probed ratio")
    parser.add_argument("--equal-steps", action="store_true", help="also run the baseline at equal steps")
    parser.add_argument("--profile", action="store_true", help="profile one step of each net and exit")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="thread counts to probe (default 1 2; each net runs at its faster)",
    )
    parser.add_argument(
        "extra", nargs=argparse.REMAINDER, help="after --: more `lowrank train` options for both"
    )
    args = parser.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    cfg = TrainConfig()
    patch, batch = list(cfg.patch), cfg.batch
    print(f"threads {torch.get_num_threads()}, load {_load()}, patch {patch}, batch {batch}")
    if args.profile:
        for spec in (args.spec, args.baseline):
            print(profile_net(spec, patch, batch))
        for spec in (args.spec, args.baseline):
            print(_component_report(spec, patch, batch))
        return 0
    counts = tuple(args.threads) if args.threads else (1, 2)
    probe = probe_step_time([args.spec, args.baseline], patch, batch, threads=counts)
    best = []
    for name, times in zip(("factorizer", "baseline"), probe):
        cells = ", ".join(f"{n} thread(s) {t * 1e3:.1f} ms" for n, t in zip(counts, times))
        print(f"step of the {name}: {cells}")
        best.append(min(zip(times, counts)))
    (t_f, n_f), (t_u, n_u) = best
    unet_steps = args.baseline_steps or max(1, round(args.steps * t_f / t_u))
    print(f"each at its faster thread count: factorizer {n_f}, baseline {n_u}; step ratio {t_f / t_u:.2f}")
    runs = {
        "Swin Factorizer": _run(
            args.spec, args.steps, args.out / "factorizer", [*extra, "--threads", str(n_f)]
        )
    }
    print(f"load after the Factorizer run: {_load()}")
    base = [*extra, "--threads", str(n_u)]
    if "--lr" not in extra:  # the same learning rate as the Factorizer's run (its default)
        base += ["--lr", str(runs["Swin Factorizer"]["lr"])]
    runs["U-Net, same wall time"] = _run(args.baseline, unet_steps, args.out / "unet", base)
    if args.equal_steps:
        runs["U-Net, same steps"] = _run(args.baseline, args.steps, args.out / "unet_equal", base)
    print(f"load at the end: {_load()}")
    print("| run | spec | params | threads | steps | wall s | Dice CSF | GM | WM | HD95 GM / WM (mm) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in runs.items():
        d, h = m["dice"], m["hd95_mm"]
        cells = [
            name,
            f"`{m['spec']}`",
            f"{m['parameters']:,}",
            m["threads"],
            m["steps"],
            f"{m['wall_time_s']:.0f}",
        ]
        cells += [*(f"{d[c]:.3f}" for c in ("csf", "gm", "wm")), f"{h['gm']} / {h['wm']}"]
        print("| " + " | ".join(map(str, cells)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
