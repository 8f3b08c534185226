"""Count the kernels a computation launches and the memory traffic they imply, on the meta device.

A ``TorchDispatchMode`` sees every ATen (and custom) op that reaches a backend. Counted: every op
except views and allocations (``is_view`` ops, ``empty*`` / ``new_empty*``, ``detach``, ``alias``,
metadata queries): on a GPU each counted op is at least one kernel launch. Traffic: the bytes of
every tensor argument and result of a counted op (an in-place op reads and writes its tensor; an
``out=`` tensor is written once), with
no cache reuse — an upper estimate of DRAM traffic. On the meta device nothing runs, so counting
the BraTS-size cases takes seconds; the backend is chosen by ``lowrank.use_kernels`` (on meta,
``triton`` runs the custom ops' fake implementations, ``reference`` the plain-autograd formulas).

Importable (tests use :func:`count` and :func:`nmf_layer_step`)::

    from count_ops import count, nmf_layer_step
    c = count(nmf_layer_step("nmf(rank=8, update=hals)", backend="triton"))
    c.ops, c.bytes

Usage: ``python bench/count_ops.py`` (prints the table recorded in ``bench/README.md``).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import lowrank

__all__ = ["Counts", "OpCounter", "count", "nmf_layer_step"]

_aten = torch.ops.aten
#: allocations and metadata-only ops: no kernel, no traffic
_FREE = {
    _aten.empty.memory_format,
    _aten.empty_like.default,
    _aten.empty_strided.default,
    _aten.new_empty.default,
    _aten.new_empty_strided.default,
    _aten.detach.default,
    _aten.alias.default,
    _aten.lift_fresh.default,
    _aten.sym_size.int,
    _aten.sym_stride.int,
    _aten.sym_numel.default,
    _aten.sym_storage_offset.default,
    _aten.is_same_size.default,
}


def _free(func: torch._ops.OpOverload) -> bool:
    return func in _FREE or getattr(func, "is_view", False) or func.namespace == "prim"


@dataclass
class Counts:
    """What :class:`OpCounter` saw: ``ops`` counted ops, ``bytes`` their traffic, ``by_op`` per name."""

    ops: int = 0
    bytes: int = 0
    by_op: Counter = field(default_factory=Counter)

    def top(self, k: int = 10) -> list[tuple[str, int]]:
        """The ``k`` most frequent ops."""
        return self.by_op.most_common(k)


class OpCounter(TorchDispatchMode):
    """Counts the ops dispatched inside it (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.counts = Counts()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not _free(func):
            # inputs (an ``out=`` argument is the result, counted once as written) and results
            inputs = (args, {k: v for k, v in (kwargs or {}).items() if k != "out"})
            tensors = [t for t in tree_leaves((inputs, out)) if isinstance(t, torch.Tensor)]
            self.counts.ops += 1
            self.counts.bytes += sum(t.numel() * t.element_size() for t in tensors)
            self.counts.by_op[str(func.overloadpacket).removeprefix("aten.")] += 1
        return out


def count(fn: Callable[[], object]) -> Counts:
    """Run ``fn()`` under an :class:`OpCounter` and return its counts."""
    with OpCounter() as counter:
        fn()
    return counter.counts


def nmf_layer_step(
    spec: str, *, backend: str, shape: tuple[int, int, int] = (4096, 8, 512)
) -> Callable[[], None]:
    """Forward and backward of a factorization layer on ``meta`` tensors under ``backend``.

    Returns the step to count. The input and the output gradient are allocated here, and one
    no-grad forward runs here first (a warm-up: an init that draws its table on the first call,
    ``uniform`` without ``dim``, draws it then, as in any training run's first step).
    """
    layer = lowrank.build_solver(spec).to("meta")
    x = torch.empty(shape, device="meta", requires_grad=True)
    grad = torch.empty(shape, device="meta")
    with torch.no_grad(), lowrank.use_kernels(backend):
        layer(x)

    def step() -> None:
        with lowrank.use_kernels(backend):
            layer(x).backward(grad)

    return step


CASES = [
    ("NMF layer rank 1 (MU ≡ HALS), T=5, fwd+bwd", "nmf(rank=1, iters=5)"),
    ("NMF layer HALS rank 8, T=5, fwd+bwd", "nmf(rank=8, iters=5, update=hals)"),
    ("NMF layer MU rank 8, T=5, fwd+bwd", "nmf(rank=8, iters=5, update=mu)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--top", type=int, default=0, help="also list the most frequent ops per case")
    args = parser.parse_args()
    x_bytes = 4096 * 8 * 512 * 4
    print(f"X (4096, 8, 512) float32 = {x_bytes / 2**20:.0f} MiB, meta device\n")
    print("| case | backend | ops | est. traffic |")
    print("|---|---|---|---|")
    for name, spec in CASES:
        for backend in ("reference", "triton"):
            c = count(nmf_layer_step(spec, backend=backend))
            print(f"| {name} | `{backend}` | {c.ops:,} | {c.bytes / 1e9:.2f} GB |")
            if args.top:
                print("|  |  | " + ", ".join(f"{k} {v}" for k, v in c.top(args.top)) + " | |")


if __name__ == "__main__":
    main()
