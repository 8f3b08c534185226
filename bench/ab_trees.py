"""Same-run A/B timing of two source trees of ``lowrank`` (e.g. before and after a refactor).

Each round runs one child process per tree (``PYTHONPATH`` = the tree), alternating, and every
child times the same CPU cases (medians of ``--repeats`` after a warm-up, ``OMP_NUM_THREADS``
as given). The report gives, per case, the median over rounds for each tree and their ratio, so
machine load drifts hit both trees alike.

Cases (float32, CPU):
  rank1        nmf(rank=1, iters=5) fwd+bwd on X (4096, 8, 512), loss out.sum()
  hals8        nmf(rank=8, iters=5, update=hals) fwd+bwd, same X
  hals8_k1     the same with grad_steps=1 (the recomputed tail)
  block        Factorizer block (swin, rank 1) fwd+bwd on (1, 32, 32, 32, 32)
  block_eval   the same block's no-grad eval forward (the rank-1 inference fold)

Usage: ``python bench/ab_trees.py --base /tmp/base [--rounds 3] [--repeats 5]`` (the tree under
test is this script's repository; ``--base`` a copy of another commit, e.g.
``git archive <commit> | tar -x -C /tmp/base``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = ["rank1", "hals8", "hals8_k1", "block", "block_eval"]


def _child(repeats: int, cases: list[str]) -> dict[str, float]:
    import torch

    from lowrank import build_block, build_solver

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 8, 512, generator=g).relu().requires_grad_()
    vol = torch.randn(1, 32, 32, 32, 32, generator=g).requires_grad_()
    block = build_block("factorizer(mixer=nmf(rank=1, iters=5), matricize=swin(patch=8, head_dim=8))", 32)

    def fwd_bwd(fn, inp):
        inp.grad = None
        fn(inp).sum().backward()

    def block_eval():
        block.eval()
        with torch.no_grad():
            block(vol)
        block.train()

    runs = {
        "rank1": lambda: fwd_bwd(build_solver("nmf(rank=1, iters=5)"), x),
        "hals8": lambda: fwd_bwd(build_solver("nmf(rank=8, iters=5, update=hals)"), x),
        "hals8_k1": lambda: fwd_bwd(build_solver("nmf(rank=8, iters=5, update=hals, grad_steps=1)"), x),
        "block": lambda: fwd_bwd(block, vol),
        "block_eval": block_eval,
    }
    out = {}
    for name in cases:
        fn = runs[name]
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", help="the other tree (a directory holding lowrank/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of the cases")
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    cases = args.cases.split(",")
    if args.child:
        print(json.dumps(_child(args.repeats, cases)))
        return
    trees = {"base": str(Path(args.base).resolve()), "this": str(Path(__file__).resolve().parents[1])}
    times: dict[str, dict[str, list[float]]] = {t: {c: [] for c in cases} for t in trees}
    for r in range(args.rounds):
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": tree}
            cmd = [sys.executable, __file__, "--child", "--repeats", str(args.repeats), "--cases", args.cases]
            res = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
            for c in cases:
                times[name][c].append(res[c])
            line = ", ".join(f"{c} {res[c] * 1e3:.0f} ms" for c in cases)
            print(f"round {r + 1} {name}: {line}", flush=True)
    print("\n| case | base | this | this / base |\n|---|---|---|---|")
    for c in cases:
        b, t = statistics.median(times["base"][c]), statistics.median(times["this"][c])
        print(f"| {c} | {b * 1e3:.0f} ms | {t * 1e3:.0f} ms | {t / b:.2f} |")


if __name__ == "__main__":
    main()
