"""Launch and traffic budgets on the ``triton`` backend (issue 17 §3), counted on the meta device by
``bench/count_ops.py``'s dispatch-mode counter (views and allocations are not kernels; traffic is
the distinct elements each op can touch): the NMF layer, and the BraTS Swin Factorizer's training
step and eval forward at 1×4×128³ in steady state (after a warm-up step), under ``triton`` and
under ``auto`` as CUDA chooses it; and the counter itself on computations whose counts are known."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from count_ops import count, net_step, nmf_layer_step

import lowrank

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


def test_counter_counts_the_elements_a_kernel_can_touch():
    """Expanded (stride-0) dims count once, an overlapping ``as_strided`` view its span, a gather's
    source what it gathers, an indexed write what its index addresses."""
    src = torch.empty(2, 1, 8, 1000, device="meta")
    index = torch.zeros(1, 3, 1, 10, dtype=torch.int64, device="meta").expand(2, -1, 8, -1)
    out = torch.empty(2, 3, 8, 10, device="meta")
    c = count(lambda: torch.gather(src.expand(-1, 3, -1, -1), 3, index, out=out))
    # source: the 480 gathered floats (not 2·3·8·1000); index: 3·10 distinct int64; out: 480 floats
    assert c.ops == 1 and c.bytes == 480 * 4 + 30 * 8 + 480 * 4
    x = torch.empty(4, 5, device="meta")
    c = count(lambda: x.expand(7, 4, 5) + 1)  # reads the 20 floats of x, writes 140
    assert c.bytes == (20 + 140) * 4
    flat = torch.empty(100, device="meta")
    c = count(lambda: flat.as_strided((3, 4, 20), (30, 10, 1)).sum())  # rows overlap: span 3·30 = 90
    assert c.bytes == (min(3 * 4 * 20, 1 + 2 * 30 + 3 * 10 + 19) + 1) * 4
    dest = torch.empty(1000, 6, device="meta")
    rows = torch.zeros(10, dtype=torch.int64, device="meta")
    c = count(lambda: dest.index_put_((rows,), torch.empty(10, 6, device="meta")))
    # dest written at 10 rows of 6 (counted as read and written: in place), the index, the values
    assert c.bytes == 2 * 60 * 4 + 10 * 8 + 60 * 4


@pytest.fixture(scope="module")
def factorizer():
    return lowrank.build_net("swin_factorizer", 4, 3)


@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_swin_factorizer_train_step_budget(factorizer, backend):
    """BraTS Swin Factorizer (5.86M) fwd + DiceCE + bwd at 1×4×128³: <= 1,266 ops (SwinUNETR's
    count in issue 17) and <= 60 GB; ``auto`` counts meta tensors as CUDA (so it picks triton)."""
    c = count(net_step(factorizer, backend=backend))
    assert c.ops <= 1266, c.top(20)
    assert c.bytes <= 60e9, c.bytes
    kernels = {k for k in c.by_op if k.startswith("lowrank.")}
    assert {
        "lowrank.fused_mlp_backward",
        "lowrank.norm_project_backward",
        "lowrank.nmf_rank1_backward",
    } <= kernels


def test_swin_factorizer_eval_forward_budget(factorizer):
    """Its no-grad eval forward at 1×4×128³: <= 1,000 ops (no CPU-sized chunk loop on CUDA)."""
    for backend in ("triton", "auto"):
        c = count(net_step(factorizer, backend=backend, train=False))
        assert c.ops <= 1000, (backend, c.top(20))


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
