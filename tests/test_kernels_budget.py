"""Launch and traffic budgets of the NMF layer on the ``triton`` backend (issue 17 §3), counted on
the meta device by ``bench/count_ops.py``'s dispatch-mode counter (views and allocations are not
kernels); and the counter itself on computations whose counts are known."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from count_ops import count, nmf_layer_step

pytest.importorskip("triton")


def test_counter_counts_kernels_and_bytes_not_views_or_allocations():
    x = torch.empty(4, 8, device="meta")
    y = torch.empty(4, 8, device="meta")

    def work():
        z = torch.empty_like(x)  # allocation: free
        v = x.view(8, 4).t()  # views: free
        torch.add(x, y, out=z)  # one kernel: reads x, y, writes z (3 × 128 B)
        (v @ torch.empty(8, 2, device="meta")).relu_()  # mm (32·4 + 16·4 + 8·4 B) and relu_ (2 × 8·4 B)

    c = count(work)
    assert c.ops == 3, c.by_op
    assert c.bytes == 3 * 128 + (128 + 64 + 32) + 2 * 32
    assert set(c.by_op) == {"add", "mm", "relu_"}


@pytest.mark.parametrize("spec", ["nmf(rank=1, iters=5)", "nmf(rank=8, iters=5, update=hals)"])
def test_nmf_layer_fwd_bwd_budget_on_triton(spec):
    """(4096, 8, 512), T=5, forward + backward: <= 40 ops and <= 1 GB (X is 64 MiB)."""
    triton = count(nmf_layer_step(spec, backend="triton"))
    assert triton.ops <= 40, triton.top()
    assert triton.bytes <= 1e9, triton.bytes
    # the kernels run: one forward and one backward custom op
    assert sum(v for k, v in triton.by_op.items() if k.startswith("lowrank.")) == 2, triton.by_op
    # and the same step through the reference formulas is far above the budget (the counter sees it)
    reference = count(nmf_layer_step(spec, backend="reference"))
    assert reference.ops > 100 and reference.bytes > 5e9
