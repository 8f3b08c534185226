"""Count the kernels a computation launches and the memory traffic they imply, on the meta device.

A ``TorchDispatchMode`` sees every ATen (and custom) op that reaches a backend. Counted: every op
except views and allocations (``is_view`` ops, ``empty*`` / ``new_empty*``, ``detach``, ``alias``,
metadata queries): on a GPU each counted op is at least one kernel launch.

Traffic: for each counted op, the bytes of every tensor argument and result (an in-place op reads
and writes its tensor; an ``out=`` tensor is written once), with no cache reuse: an upper
estimate of DRAM traffic. Each tensor counts the *distinct* elements a kernel can touch, not its
``numel()``:

* a strided tensor counts ``min(∏ size_i over the dims with a non-zero stride,
  1 + Σ (size_i - 1)·|stride_i|)`` elements: an expanded (stride-0) tensor counts what it was
  expanded from, an overlapping ``as_strided`` view at most the memory it spans;
* a gather (``gather``, ``index_select``, ``index``, ``take``, ``embedding``) reads at most one
  source element per result element: its source counts ``min(its distinct elements, the
  result's)``; the index and the result count as above;
* an indexed write (``scatter*``, ``index_put_``, ``index_add_``, ``index_copy_``) writes at most
  the elements its index (broadcast with the values) addresses: its destination counts at most
  that many.

On the meta device nothing runs, so counting the BraTS-size cases takes seconds; the backend is
chosen by ``lowrank.use_kernels`` (on meta, ``triton`` runs the custom ops' fake implementations,
``reference`` the plain-autograd formulas). Under :func:`count`'s ``meta_as="cuda"`` (the default)
``auto`` chooses for meta tensors what it chooses for CUDA tensors.

Importable (tests use :func:`count` and :func:`nmf_layer_step`)::

    from count_ops import count, nmf_layer_step
    c = count(nmf_layer_step("nmf(rank=8, update=hals)", backend="triton"))
    c.ops, c.bytes

Usage: ``python bench/count_ops.py`` (prints the table recorded in ``bench/README.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import lowrank
from lowrank.kernels import _switch

__all__ = [
    "NETS",
    "Counts",
    "OpCounter",
    "count",
    "distinct_elements",
    "net_step",
    "nmf_layer_step",
    "traffic",
]

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


#: gathers: the source (first argument) is read at most once per result element
_GATHERS = {"gather", "index_select", "index", "_unsafe_index", "take", "embedding"}
#: indexed writes: the destination (first argument) is written where the index addresses
_INDEXED_WRITES = {
    "scatter",
    "scatter_",
    "scatter_add",
    "scatter_add_",
    "scatter_reduce",
    "scatter_reduce_",
    "index_put",
    "index_put_",
    "_index_put_impl_",
    "index_add",
    "index_add_",
    "index_copy",
    "index_copy_",
}


def distinct_elements(t: torch.Tensor) -> int:
    """The elements of ``t``'s memory a kernel can touch: ``min(∏ size_i over the dims with a
    non-zero stride, 1 + Σ (size_i - 1)·|stride_i|)`` (0 for an empty tensor)."""
    if t.numel() == 0:
        return 0
    dims = [(n, abs(s)) for n, s in zip(t.shape, t.stride(), strict=True) if n > 1 and s != 0]
    return min(math.prod(n for n, _ in dims), 1 + sum((n - 1) * s for n, s in dims))


def _addressed(name: str, args: tuple, dest: torch.Tensor) -> int:
    """Elements an indexed write addresses in ``dest`` (see the module docstring)."""
    tensors = [t for t in tree_leaves(args[1:]) if isinstance(t, torch.Tensor)]
    if name.startswith("index_put") or name == "_index_put_impl_":
        indices = [t for t in tree_leaves(args[1]) if isinstance(t, torch.Tensor)]
        if not indices or any(t.dtype == torch.bool for t in indices):
            return distinct_elements(dest)
        shape = torch.broadcast_shapes(*(t.shape for t in indices))
        rest = dest.shape[len(args[1]) :]
        return math.prod(shape) * math.prod(rest)
    return max((t.numel() for t in tensors), default=0)


def traffic(func: torch._ops.OpOverload, args: tuple, kwargs: dict, out: object) -> int:
    """The bytes one counted op moves (the rules of the module docstring)."""
    name = str(func.overloadpacket).rsplit(".", 1)[-1]
    inputs = (args, {k: v for k, v in kwargs.items() if k != "out"})
    results = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    first = args[0] if args and isinstance(args[0], torch.Tensor) else None
    limit = None
    if first is not None and name in _GATHERS:
        limit = sum(t.numel() for t in results)
    elif first is not None and name in _INDEXED_WRITES:
        limit = _addressed(name, args, first)
    total = 0
    for t in tree_leaves(inputs) + results:  # an in-place op's result is its first argument again
        if isinstance(t, torch.Tensor):
            n = distinct_elements(t)
            total += (n if limit is None or t is not first else min(n, limit)) * t.element_size()
    return total


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
            self.counts.ops += 1
            self.counts.bytes += traffic(func, args, kwargs or {}, out)
            self.counts.by_op[str(func.overloadpacket).removeprefix("aten.")] += 1
        return out


def count(fn: Callable[[], object], *, meta_as: str | None = "cuda") -> Counts:
    """Run ``fn()`` under an :class:`OpCounter` and return its counts.

    Args:
        fn: the computation (on meta tensors, for the large cases).
        meta_as: ``"cuda"`` (default): ``use_kernels("auto")`` chooses for meta tensors what it
            chooses for CUDA tensors (:class:`lowrank.kernels._switch.meta_as`); ``None``: as for
            meta tensors (``reference``).
    """
    with contextlib.ExitStack() as stack:
        if meta_as is not None:
            stack.enter_context(_switch.meta_as(meta_as))
        counter = stack.enter_context(OpCounter())
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


#: the nets of issue 17's table: (label, factory of a ``(4 → 3)``-channel 3-D net)
NETS: dict[str, Callable[[], torch.nn.Module]] = {
    "swin_factorizer": lambda: lowrank.build_net("swin_factorizer", 4, 3),
    "SwinUNETR (feature_size=24)": lambda: _monai_net("SwinUNETR", feature_size=24),
    "SegResNet (init_filters=16)": lambda: _monai_net("SegResNet", init_filters=16),
}


def _monai_net(name: str, **options: int) -> torch.nn.Module:
    from monai.networks import nets

    if name == "SwinUNETR":
        return nets.SwinUNETR(in_channels=4, out_channels=3, spatial_dims=3, **options)
    return nets.SegResNet(spatial_dims=3, in_channels=4, out_channels=3, **options)


def net_step(
    net: str | torch.nn.Module, *, backend: str, train: bool = True, size: int = 128
) -> Callable[[], None]:
    """One training step (gradients set to None, forward, DiceCE loss, backward; no optimizer
    step) or one no-grad eval forward of a 4 → 3 channel 3-D segmentation net on a ``meta`` input
    ``(1, 4, size, size, size)`` under ``backend``.

    Returns the step to count, in steady state: the same step runs once here first (a warm-up, as
    a training loop's first step: cached index tensors and init tables are built then).

    Args:
        net: a key of :data:`NETS` or a module (moved to ``meta``).
        backend: the kernel backend (``use_kernels``).
        train: a training step (train mode); else an eval-mode no-grad forward.
        size: the cubic patch side.
    """
    from monai.losses import DiceCELoss

    module = (NETS[net]() if isinstance(net, str) else net).to("meta").train(train)
    x = torch.empty(1, 4, size, size, size, device="meta")
    target = torch.empty(1, 3, size, size, size, device="meta")
    loss = DiceCELoss(sigmoid=True)

    def step() -> None:
        with lowrank.use_kernels(backend):
            if not train:
                with torch.no_grad():
                    module(x)
                return
            module.zero_grad(set_to_none=True)  # as a training loop does (no accumulation kernels)
            out = module(x)
            loss(out[0] if isinstance(out, (list, tuple)) else out, target).backward()

    with _switch.meta_as("cuda"):
        step()
    return step


CASES = [
    ("NMF layer rank 1 (MU ≡ HALS), T=5, fwd+bwd", "nmf(rank=1, iters=5)"),
    ("NMF layer HALS rank 8, T=5, fwd+bwd", "nmf(rank=8, iters=5, update=hals)"),
    ("NMF layer MU rank 8, T=5, fwd+bwd", "nmf(rank=8, iters=5, update=mu)"),
]


def _top(c: Counts, k: int) -> str:
    return ", ".join(f"{name} {n}" for name, n in c.top(k))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--top", type=int, default=0, help="also list the most frequent ops per case")
    parser.add_argument(
        "--nets", action="store_true", help="the 3-D nets at 1×4×128³ (train step and eval forward) instead"
    )
    args = parser.parse_args()
    if args.nets:
        print("input (1, 4, 128, 128, 128) float32, meta device, steady state (after one warm-up step)\n")
        print("| net | backend | train step ops | train traffic | eval forward ops | eval traffic |")
        print("|---|---|---|---|---|---|")
        for name in NETS:
            backends = ("reference", "triton", "auto") if name == "swin_factorizer" else ("auto",)
            for backend in backends:
                t = count(net_step(name, backend=backend))
                e = count(net_step(name, backend=backend, train=False))
                print(
                    f"| {name} | `{backend}` | {t.ops:,} | {t.bytes / 1e9:.1f} GB "
                    f"| {e.ops:,} | {e.bytes / 1e9:.1f} GB |"
                )
                if args.top:
                    print(f"|  |  | {_top(t, args.top)} | | {_top(e, args.top)} | |")
        return
    x_bytes = 4096 * 8 * 512 * 4
    print(f"X (4096, 8, 512) float32 = {x_bytes / 2**20:.0f} MiB, meta device\n")
    print("| case | backend | ops | est. traffic |")
    print("|---|---|---|---|")
    for name, spec in CASES:
        for backend in ("reference", "triton"):
            c = count(nmf_layer_step(spec, backend=backend))
            print(f"| {name} | `{backend}` | {c.ops:,} | {c.bytes / 1e9:.2f} GB |")
            if args.top:
                print(f"|  |  | {_top(c, args.top)} | |")


if __name__ == "__main__":
    main()
