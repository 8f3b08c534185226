"""The Factorizer's fused fast paths against unfused functional references.

Covers the chunked MLP kernel (``lowrank.blocks._fused_mlp``), the LayerNorm folded into the
projections, ``pointwise`` with a residual / in-place ReLU, the LayerNorm's hand-written
backward (with and without affine, chunked statistics), the 1×1 heads of the skeleton, and the
FLOP count of the in-place accumulation.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank import build_block, build_net
from lowrank.blocks._layers import ChannelLayerNorm, channel_standardize, pointwise
from lowrank.flops import count_flops
from lowrank.kernels.cpu import norm as cpu_norm
from lowrank.kernels.cpu.mlp import fused_mlp


def _ln(x, weight=None, bias=None, eps=1e-5):
    return F.layer_norm(x.movedim(1, -1), (x.shape[1],), weight, bias, eps).movedim(-1, 1)


def _conv1x1(x, weight, bias=None):
    out = torch.einsum("oc,bc...->bo...", weight, x)
    return out if bias is None else out + bias.view(1, -1, *([1] * (x.ndim - 2)))


def _mlp_reference(x, gamma, beta, w1, b1, w2, b2, eps, approximate="none"):
    h = F.gelu(_conv1x1(_ln(x, gamma, beta, eps), w1, b1), approximate=approximate)
    return x + _conv1x1(h, w2, b2)


def _params(c, hidden, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(c,), (c,), (hidden, c), (hidden,), (c, hidden), (c,)]
    return [(torch.randn(s, generator=gen, dtype=dtype) * 0.5).requires_grad_() for s in shapes]


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 2),
    spatial=st.lists(st.integers(1, 7), min_size=1, max_size=3),
    chunk=st.integers(1, 64),
    approximate=st.sampled_from(["none", "tanh"]),
)
def test_fused_mlp_matches_reference_values_and_grads(batch, spatial, chunk, approximate):
    """Any size and any chunking (uneven last chunk): same output and gradients as op by op."""
    c, hidden = 3, 5
    gamma, beta, w1, b1, w2, b2 = params = _params(c, hidden, torch.float64)
    x = (torch.randn(batch, c, *spatial, dtype=torch.float64) * 3 + 1).requires_grad_()
    ref = _mlp_reference(x, *params, 1e-5, approximate)
    fw1, fb1 = w1 * gamma, (w1 * beta).sum(1) + b1
    out = fused_mlp(x, fw1, fb1, w2, b2, 1e-5, approximate, chunk_elements=chunk * hidden * batch)
    torch.testing.assert_close(out, ref)
    probe = torch.randn_like(ref)
    inputs = [x, *params]
    g_ref = torch.autograd.grad((ref * probe).sum(), inputs)
    g_out = torch.autograd.grad((out * probe).sum(), inputs)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b)


def test_fused_mlp_gradcheck_over_several_chunks():
    c, hidden = 2, 3
    _, _, w1, b1, w2, b2 = _params(c, hidden, torch.float64)
    x = torch.randn(2, c, 3, 5, dtype=torch.float64, requires_grad=True)

    def f(x, w1, b1, w2, b2):
        return fused_mlp(x, w1, b1, w2, b2, 1e-5, chunk_elements=4 * hidden * 2)  # 4 voxels per chunk

    assert torch.autograd.gradcheck(f, (x, w1, b1, w2, b2))


def _unfused(block):
    block._fusable = lambda x: False
    return block


@pytest.mark.parametrize("dims", [2, 3])
def test_block_fast_paths_match_the_unfused_block(dims):
    """The fused block (folded LayerNorms, in-place ReLU, fused residuals, chunked MLP) equals
    the op-by-op block, forward and backward, with chunks that do not divide the size."""
    spec = "factorizer(mixer=nmf(rank=1, iters=3), matricize=swin(patch=4, head_dim=4))"
    fast = build_block(spec, 8, spatial_dims=dims)
    slow = _unfused(build_block(spec, 8, spatial_dims=dims))
    slow.load_state_dict(fast.state_dict())
    with torch.no_grad():  # non-trivial affine parts, so that a wrong fold would show
        for a, b in zip(fast.parameters(), slow.parameters()):
            a.add_(torch.randn_like(a) * 0.2)
            b.copy_(a)
    x = torch.randn(2, 8, *([9] * dims), requires_grad=True)
    import lowrank.kernels.cpu.mlp as fm

    old = fm.CHUNK_ELEMENTS
    fm.CHUNK_ELEMENTS = 7 * 16 * 2  # 7 voxels per chunk
    try:
        y_fast = fast(x)
    finally:
        fm.CHUNK_ELEMENTS = old
    y_slow = slow(x)
    torch.testing.assert_close(y_fast, y_slow, rtol=1e-5, atol=1e-5)
    probe = torch.randn_like(y_slow)
    g_fast = torch.autograd.grad((y_fast * probe).sum(), [x, *fast.parameters()], allow_unused=True)
    g_slow = torch.autograd.grad((y_slow * probe).sum(), [x, *slow.parameters()], allow_unused=True)
    for a, b in zip(g_fast, g_slow):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_block_uses_the_op_by_op_path_when_the_kernel_does_not_apply():
    block = build_block("factorizer(matricize=swin(patch=4, head_dim=4), dropout=0.1)", 8, spatial_dims=2)
    x = torch.randn(1, 8, 6, 6)
    assert not block.train()._fusable(x)  # active dropout
    assert block.eval()._fusable(x)
    assert not block._fusable(x.to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not block._fusable(x)
    gelu_free = build_block("factorizer(matricize=swin(patch=4, head_dim=4), act=relu)", 8, spatial_dims=2)
    assert not gelu_free._fusable(x)


@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_residual_and_relu(bias):
    w = torch.randn(4, 6, requires_grad=True)
    b = torch.randn(4, requires_grad=True) if bias else None
    x = torch.randn(2, 6, 3, 5, requires_grad=True)
    r = torch.randn(2, 4, 3, 5, requires_grad=True)
    for residual in (None, r):
        for relu in (False, True):
            out = pointwise(w, b, x, residual=residual, relu=relu)
            ref = _conv1x1(x, w, b)
            ref = ref if residual is None else ref + residual
            ref = ref.relu() if relu else ref
            torch.testing.assert_close(out, ref)
            leaves = [t for t in (w, b, x, r) if t is not None]
            g = torch.autograd.grad(out.square().sum(), leaves, allow_unused=True)
            g_ref = torch.autograd.grad(ref.square().sum(), leaves, allow_unused=True)
            for a, c in zip(g, g_ref):
                if c is None:
                    assert a is None or not a.any()
                else:
                    torch.testing.assert_close(a, c)
    # the in-place ReLU works on the product's own buffer, not on a view of it (no CopySlices)
    out = pointwise(w, b, x, relu=True)
    assert "CopySlices" not in type(out.grad_fn).__name__


def test_pointwise_residual_flops_are_counted():
    w, x, r = torch.randn(4, 6), torch.randn(2, 6, 10), torch.randn(2, 4, 10)
    with count_flops() as counter:
        pointwise(w, torch.randn(4), x, residual=r)
    assert counter.get_total_flops() == 2 * 2 * 4 * 6 * 10


@pytest.mark.parametrize("affine", [True, False])
def test_channel_layer_norm_backward_and_chunked_statistics(affine):
    """gradcheck of the hand-written backward; a map above the chunk size against F.layer_norm."""
    norm = ChannelLayerNorm(3, affine=affine).double()
    if affine:
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))
    big = torch.randn(1, 3, cpu_norm.CHUNK_ELEMENTS // 2 + 3, dtype=torch.float64) * 5 + 100  # uneven chunks
    ref = _ln(big, norm.weight if affine else None, norm.bias if affine else None)
    torch.testing.assert_close(norm(big), ref)
    torch.testing.assert_close(channel_standardize(big, 1e-5), _ln(big))


def test_heads_are_1x1_convs_computed_as_products():
    net = build_net("unet_skeleton(channels=[4, 8], block=double_conv, deep_supervision=1)", 2, 3).eval()
    head = net.heads[0]
    assert isinstance(head, torch.nn.Conv3d) and head.weight.shape == (3, 4, 1, 1, 1)
    x = torch.randn(2, 4, 3, 5, 6)
    torch.testing.assert_close(head(x), F.conv3d(x, head.weight, head.bias))
    assert set(net.state_dict()) >= {"heads.0.weight", "heads.0.bias"}
