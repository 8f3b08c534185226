"""Inference and layout fast paths against the plain path they replace.

- rank-1 factors folded straight back to space (``Matricize.inverse_rank1``, ``NMF.rank1_factors``,
  used by the Factorizer block without gradient) == forming ``u wᵀ`` and calling ``inverse``;
- the U-Net's transposed convs fed channels-last on CPU == the contiguous path (values, grads).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lowrank.nets.skeleton as skeleton
from lowrank import build_block, build_matricize, build_net, build_solver

WINDOWED = [
    "swin(patch=4, heads=2, cyclic=true)",
    "swin(patch=3, head_dim=2)",
    "local(patch=[4, 2, 3], heads=2)",
    "swin(patch=4, shifts=[0, 1, 3], head_dim=2)",
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=st.sampled_from([*WINDOWED, "global(heads=2)", "channel(heads=2)"]),
    dims=st.integers(1, 3),
    sizes=st.lists(st.integers(1, 11), min_size=3, max_size=3),
    batch=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_inverse_rank1_equals_inverse_of_the_product(spec, dims, sizes, batch, seed):
    if "[4, 2, 3]" in spec and dims != 3:
        spec = "local(patch=3, heads=2)"
    m = build_matricize(spec, 4, spatial_dims=dims)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 4, *sizes[:dims], generator=g)
    matrices, ctx = m(x)
    u = torch.rand(matrices.shape[:2], generator=g)
    w = torch.rand(matrices.shape[0], matrices.shape[2], generator=g)
    with torch.no_grad():
        got = m.inverse_rank1(u, w, ctx)
        want = m.inverse(u.unsqueeze(-1) * w.unsqueeze(-2), ctx)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("spec", WINDOWED)
@pytest.mark.parametrize("max_elements", [1, 40, 1 << 20])
def test_lazy_windows_chunks_are_the_matrices(spec, max_elements):
    m = build_matricize(spec, 4, spatial_dims=3)
    x = torch.rand(2, 4, 7, 9, 6)
    matrices, ctx = m(x)
    lazy = m.lazy(x)
    assert lazy.shape == tuple(matrices.shape)
    assert (lazy.ctx.mask is None) == (ctx.mask is None)
    if ctx.mask is not None:
        assert torch.equal(lazy.ctx.mask, ctx.mask)
    got = torch.zeros_like(matrices)
    seen = 0
    for start, chunk in lazy.chunks(max_elements):
        assert start == seen  # in order, no gap
        got[start : start + chunk.shape[0]] = chunk
        seen += chunk.shape[0]
    assert seen == matrices.shape[0]
    assert torch.equal(got, matrices) and torch.equal(lazy.materialize(), matrices)


@pytest.mark.parametrize("init", ["uniform", "online", "random", "nndsvd"])
def test_nmf_rank1_factors_of_lazy_windows_equal_the_whole_batch(init):
    m = build_matricize("swin(patch=3, head_dim=2)", 4, spatial_dims=2)
    x = torch.rand(2, 4, 8, 7)
    matrices, ctx = m(x)
    a, b = (
        build_solver(f"nmf(rank=1, init={init})").train(),
        build_solver(f"nmf(rank=1, init={init})").train(),
    )
    with torch.no_grad():
        a(matrices[:1], ctx.mask[:1])  # size lazy tables
        b.load_state_dict(a.state_dict())
        want = a.rank1_factors(matrices, ctx.mask)
        lazy = m.lazy(x)
        lazy.chunks = lambda: type(lazy).chunks(lazy, 50)  # several chunks
        got = b.rank1_factors(lazy, ctx.mask)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)  # online: one observation of the whole batch


def test_inverse_rank1_with_autograd_is_the_differentiable_product():
    m = build_matricize("swin(patch=2, heads=2)", 4, spatial_dims=2)
    matrices, ctx = m(torch.rand(1, 4, 5, 6))
    u = torch.rand(matrices.shape[:2], dtype=torch.float64, requires_grad=True)
    w = torch.rand(matrices.shape[0], matrices.shape[2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, w: m.inverse_rank1(u, w, ctx), (u, w))


@pytest.mark.parametrize(
    "spec", ["nmf(rank=1, iters=4, eval_iters=2)", "nmf(rank=1, update=hals, init=nndsvd)"]
)
def test_nmf_rank1_factors_multiply_to_the_forward(spec):
    layer = build_solver(spec).eval()
    x = torch.rand(6, 5, 9)
    mask = torch.rand(6, 9) > 0.3
    for m in (None, mask):
        with torch.no_grad():
            u, w = layer.rank1_factors(x, m)
            out = layer(x, m)
        assert u.shape == (6, 5) and w.shape == (6, 9)
        torch.testing.assert_close(u.unsqueeze(-1) * w.unsqueeze(-2), out, rtol=1e-6, atol=1e-7)


def test_nmf_rank1_factors_only_where_the_fast_path_applies():
    x = torch.rand(3, 4, 6)
    with torch.no_grad():
        assert build_solver("nmf(rank=2)").rank1_factors(x) is None
        assert build_solver("nmf(rank=1, fast=false)").rank1_factors(x) is None
    assert build_solver("nmf(rank=1)").rank1_factors(x) is None  # autograd on: the usual path


def test_nmf_rank1_factors_update_the_online_init_like_forward():
    a, b = build_solver("nmf(rank=1, init=online)"), build_solver("nmf(rank=1, init=online)")
    b.load_state_dict(a.state_dict())
    x = torch.rand(8, 4, 7)
    with torch.no_grad():
        a(x)
        b.rank1_factors(x)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)


@pytest.mark.parametrize(
    "matricize", [*WINDOWED, "global(head_dim=4)", "channel(heads=2)"], ids=lambda s: s.split("(")[0]
)
def test_factorizer_block_inference_takes_the_fold_and_matches(matricize, monkeypatch):
    torch.manual_seed(0)
    block = build_block(f"factorizer(matricize={matricize})", 8).eval()
    x = torch.randn(2, 8, 7, 9, 6)
    calls = []
    inverse_rank1 = type(block.matricize).inverse_rank1

    def spy(self, u, w, ctx):
        calls.append(u.shape)
        return inverse_rank1(self, u, w, ctx)

    monkeypatch.setattr(type(block.matricize), "inverse_rank1", spy)
    with torch.no_grad():
        got = block(x)
    assert calls, "the no-grad rank-1 block should fold the factors"
    monkeypatch.setattr(type(block.mixer), "rank1_factors", lambda self, x, mask=None: None)
    with torch.no_grad():
        want = block(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got_grad = block(x)  # with autograd the usual path runs (and gives the same values)
    torch.testing.assert_close(got_grad, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "spec", ["swin_factorizer(channels=[8, 16], head_dim=4, patch=2)", "unet(channels=[4, 8, 8])"]
)
def test_channels_last_upsampling_matches_the_contiguous_path(spec, monkeypatch):
    torch.manual_seed(0)
    net = build_net(spec, 2, 3).train()
    x = torch.randn(1, 2, 12, 10, 8, requires_grad=True)
    seen = []
    hook = net.ups[0].register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last_3d))
    )

    def run():
        out = net(x)
        loss = sum((o.float() ** 2).mean() for o in (out if isinstance(out, list) else [out]))
        grads = torch.autograd.grad(loss, [x, *net.parameters()])
        return out if isinstance(out, list) else [out], grads

    out_a, grads_a = run()
    assert seen == [True]
    monkeypatch.setattr(skeleton, "_upsample", lambda conv, h: conv(h))
    out_b, grads_b = run()
    assert seen == [True, False]
    hook.remove()
    for a, b in zip(out_a, out_b):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
