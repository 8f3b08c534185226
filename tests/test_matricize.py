"""Matricizers: layouts against an independent index-arithmetic reference, exact round trips,
the non-wrapping border, padding with masks, gradients, component maps and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from einops import rearrange
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank import build_matricize, list_parts
from lowrank.matricize import _windows
from lowrank.matricize.base import MatricizeContext, MatricizeProtocol

PRIMES_AND_SMALL = [1, 2, 3, 4, 5, 7, 8, 11, 13]


# --------------------------------------------------------------------------------------------
# An independent reference: window membership by index arithmetic, one view at a time.
# --------------------------------------------------------------------------------------------
def reference_index(spatial, patch, shift, cyclic):
    """``(G, N)`` flat voxel index of each window column (-1 for padding), row-major grids."""
    lines = []
    for size, p, s in zip(spatial, patch, shift, strict=True):
        if cyclic:
            frame = math.ceil(size / p) * p
            src = (np.arange(frame) - s) % frame
            src[src >= size] = -1
        else:
            frame = math.ceil((size + s) / p) * p
            src = np.arange(frame) - s
            src[(src < 0) | (src >= size)] = -1
        lines.append(src.reshape(frame // p, p))
    d = len(spatial)
    grid = np.indices([line.shape[0] for line in lines]).reshape(d, -1).T  # (G, d)
    pos = np.indices([line.shape[1] for line in lines]).reshape(d, -1).T  # (N, d)
    coords = [lines[a][grid[:, a][:, None], pos[:, a][None, :]] for a in range(d)]
    valid = np.all([c >= 0 for c in coords], axis=0)
    flat = np.ravel_multi_index([np.where(valid, c, 0) for c in coords], spatial)
    return np.where(valid, flat, -1)


def reference_windows(x, heads, patch, shifts, cyclic):
    """Matrices and mask of ``swin``/``local`` computed from :func:`reference_index`."""
    b, c, *spatial = x.shape
    e = c // heads
    flat = x.reshape(b, heads, e, -1)
    mats, masks = [], []
    for shift in shifts:
        idx = torch.as_tensor(reference_index(spatial, patch, shift, cyclic))
        g, n = idx.shape
        gathered = flat[..., idx.clamp(min=0).reshape(-1)].reshape(b, heads, e, g, n)
        gathered = gathered * (idx >= 0)
        mats.append(gathered.permute(0, 1, 3, 2, 4).reshape(b * heads * g, e, n))
        masks.append((idx >= 0).expand(b * heads, g, n).reshape(-1, n))
    return torch.cat(mats), torch.cat(masks)


def _spec_list(value):
    return "[" + ", ".join(str(v) for v in value) + "]"


@st.composite
def window_cases(draw):
    d = draw(st.integers(1, 3))
    spatial = tuple(draw(st.sampled_from(PRIMES_AND_SMALL)) for _ in range(d))
    if d == 3:  # keep the 3-D cases small
        spatial = tuple(min(s, 7) for s in spatial)
    patch = tuple(draw(st.integers(1, 5)) for _ in range(d))
    shifts = draw(
        st.lists(st.tuples(*[st.integers(0, p - 1) for p in patch]), min_size=1, max_size=3, unique=True)
    )
    heads = draw(st.integers(1, 2))
    e = draw(st.integers(1, 3))
    batch = draw(st.integers(1, 2))
    cyclic = draw(st.booleans())
    return spatial, patch, shifts, heads, e, batch, cyclic


@settings(max_examples=60)
@given(window_cases(), st.integers(0, 2**31 - 1))
def test_swin_matches_reference_and_round_trips(case, seed):
    spatial, patch, shifts, heads, e, batch, cyclic = case
    spec = (
        f"swin(patch={_spec_list(patch)}, shifts=[{', '.join(_spec_list(s) for s in shifts)}], "
        f"heads={heads}, cyclic={'true' if cyclic else 'false'})"
    )
    m = build_matricize(spec, heads * e, spatial_dims=len(spatial))
    x = torch.randn(batch, heads * e, *spatial, generator=torch.Generator().manual_seed(seed))
    matrices, ctx = m(x)
    ref, ref_mask = reference_windows(x, heads, patch, shifts, cyclic)
    assert torch.equal(matrices, ref)
    if bool(ref_mask.all()):
        assert ctx.mask is None
    else:
        assert torch.equal(ctx.mask, ref_mask)
    # the functional form used under torch.compile gives the same matrices and inverse
    assert torch.equal(_windows._scatter_functional(x, ctx.layout, 1.0), matrices)
    y_functional = _windows._gather_functional(matrices, ctx.layout, 1.0 / len(shifts))
    torch.testing.assert_close(y_functional, x, rtol=2 * torch.finfo(torch.float32).eps, atol=0)
    y = m.inverse(matrices, ctx)
    # averaging identical copies: exact for 1, 2 (or 4) views, within 1 ulp for 3
    torch.testing.assert_close(y, x, rtol=2 * torch.finfo(torch.float32).eps, atol=0)
    if len(shifts) in (1, 2):
        assert torch.equal(y, x)


@settings(max_examples=30)
@given(window_cases(), st.integers(0, 2**31 - 1))
def test_local_global_channel_round_trip(case, seed):
    spatial, patch, _, heads, e, batch, _ = case
    x = torch.randn(batch, heads * e, *spatial, generator=torch.Generator().manual_seed(seed))
    for spec in (f"local(patch={_spec_list(patch)}, head_dim={e})", f"global(heads={heads})", "channel"):
        m = build_matricize(spec, heads * e)
        matrices, ctx = m(x)
        assert torch.equal(m.inverse(matrices, ctx), x), spec
    local, _ = build_matricize(f"local(patch={_spec_list(patch)}, heads={heads})")(x)
    assert torch.equal(local, reference_windows(x, heads, patch, [(0,) * len(patch)], False)[0])


# --------------------------------------------------------------------------------------------
# Hand-built layouts, element by element.
# --------------------------------------------------------------------------------------------
def test_local_layout_1d_by_hand():
    x = torch.arange(5.0).view(1, 1, 5)
    m = build_matricize("swin(patch=2, shifts=[0, 1])")
    mats, ctx = m(x)
    # view 0: [0 1] [2 3] [4 pad]; view 1 (shift 1, no wrap): [pad 0] [1 2] [3 4]
    expected = torch.tensor([[0, 1], [2, 3], [4, 0], [0, 0], [1, 2], [3, 4]], dtype=torch.float32)
    assert torch.equal(mats[:, 0, :], expected)
    valid = torch.tensor([[1, 1], [1, 1], [1, 0], [0, 1], [1, 1], [1, 1]], dtype=torch.bool)
    assert torch.equal(ctx.mask, valid)


def test_cyclic_layout_1d_by_hand():
    x = torch.arange(1.0, 7.0).view(1, 1, 6)  # voxels 1..6, padded to 8, rolled by 2
    mats, ctx = build_matricize("swin(patch=4, shifts=[0, 2], cyclic=true)")(x)
    expected = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0], [0, 0, 1, 2], [3, 4, 5, 6]], dtype=torch.float32)
    assert torch.equal(mats[:, 0, :], expected)
    assert torch.equal(ctx.mask, expected != 0)


def test_local_layout_2d_by_hand():
    # x[b, c, i, j] = 1000 b + 100 c + 10 i + j; heads of 2 channels; patch (2, 3)
    b, c, h, w = 2, 4, 4, 6
    x = torch.zeros(b, c, h, w)
    for bi in range(b):
        for ci in range(c):
            for i in range(h):
                for j in range(w):
                    x[bi, ci, i, j] = 1000 * bi + 100 * ci + 10 * i + j
    mats, ctx = build_matricize("local(patch=[2, 3], head_dim=2)", 4)(x)
    assert mats.shape == (b * 2 * 4, 2, 6) and ctx.mask is None
    for bi in range(b):
        for hd in range(2):
            for gi in range(2):
                for gj in range(2):
                    row = ((bi * 2 + hd) * 2 + gi) * 2 + gj
                    for e in range(2):
                        for pi in range(2):
                            for pj in range(3):
                                want = 1000 * bi + 100 * (2 * hd + e) + 10 * (2 * gi + pi) + 3 * gj + pj
                                assert mats[row, e, pi * 3 + pj] == want


def test_global_and_channel_layout_by_hand():
    x = torch.arange(2 * 4 * 3 * 2, dtype=torch.float32).view(2, 4, 3, 2)
    g, ctx = build_matricize("global(head_dim=2)", 4)(x)
    c, _ = build_matricize("channel(heads=2)", 4)(x)
    assert g.shape == (4, 2, 6) and c.shape == (4, 6, 2) and ctx.mask is None
    for bi in range(2):
        for hd in range(2):
            for e in range(2):
                for n in range(6):
                    want = x[bi, 2 * hd + e, n // 2, n % 2]
                    assert g[bi * 2 + hd, e, n] == want
                    assert c[bi * 2 + hd, n, e] == want


def test_cyclic_equals_roll_and_cat_reference():
    """``cyclic=true`` is the Factorizer reference (torch.roll + einops rearrange + cat)."""
    x = torch.randn(2, 4, 8, 12, 16)
    m = build_matricize("swin(patch=[4, 4, 8], head_dim=2, cyclic=true)", 4)
    mats, ctx = m(x)
    eq = "b (c1 c2) (h1 h2) (w1 w2) (d1 d2) -> (b c1 h1 w1 d1) c2 (h2 w2 d2)"

    def local(t):
        return rearrange(t, eq, c2=2, h2=4, w2=4, d2=8)

    ref = torch.cat([local(x), local(torch.roll(x, (2, 2, 4), (2, 3, 4)))])
    assert torch.equal(mats, ref) and ctx.mask is None


# --------------------------------------------------------------------------------------------
# Borders, padding, gradients.
# --------------------------------------------------------------------------------------------
def _window_mixer(mats):
    """A nonlinear map that mixes every column of a window with every other one (no saturation)."""
    return mats * mats.mean(-1, keepdim=True)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("cyclic", [False, True])
def test_no_wrap_by_default(dims, cyclic):
    """With the default, no output voxel depends on an input voxel at the opposite border."""
    size = {1: 16, 2: 8, 3: 8}[dims]
    m = build_matricize(f"swin(patch=4, cyclic={'true' if cyclic else 'false'})", 2)
    x = torch.rand(1, 2, *([size] * dims), dtype=torch.float64, requires_grad=True)
    mats, ctx = m(x)
    y = m.inverse(_window_mixer(mats), ctx)
    for axis in range(2, 2 + dims):
        (grad,) = torch.autograd.grad(y.narrow(axis, 0, 1).sum(), x, retain_graph=True)
        far = grad.narrow(axis, size - 1, 1)
        if cyclic:  # the reference wraps: the first face sees the last one
            assert far.abs().sum() > 0
        else:
            assert torch.equal(far, torch.zeros_like(far))
            # and dependencies stay within one patch-length window
            assert torch.equal(
                grad.narrow(axis, 4, size - 4), torch.zeros_like(grad.narrow(axis, 4, size - 4))
            )


def _centered_rank1(mats, mask, iters=5):
    """Stand-in solver that needs the mask: row means over the valid columns + rank-1 residual."""
    w = torch.ones_like(mats[..., :1, :]) if mask is None else mask[:, None, :].to(mats.dtype)
    mean = (mats * w).sum(-1, keepdim=True) / w.sum(-1, keepdim=True)
    x = (mats - mean) * w
    u = torch.ones_like(x[..., :, :1])
    for _ in range(iters):
        v = (x.transpose(-1, -2) @ u) / (u * u).sum(-2, keepdim=True)
        u = (x @ v) / (v * v).sum(-2, keepdim=True).clamp_min(1e-30)
    return (mean + u @ v.transpose(-1, -2)) * w


def _solvers():
    yield pytest.param(_centered_rank1, id="stand-in")
    try:
        from lowrank import build_solver

        nmf = build_solver("nmf(rank=1, iters=5)")
    except Exception:  # the solver family not available yet
        return
    yield pytest.param(lambda mats, mask: nmf(mats, mask=mask), id="nmf")


def _padded_and_exact(solver, x):
    """6x7 with patch 4: the padded windows, and windows of the exact sizes (no padding)."""
    m = build_matricize("local(patch=4, head_dim=2)", 4)
    mats, ctx = m(x)
    assert ctx.mask is not None and not bool(ctx.mask.all())
    assert torch.all(mats.transpose(1, 2)[~ctx.mask] == 0)  # padding columns are zero
    padded = m.inverse(solver(mats, ctx.mask), ctx)
    expected = torch.empty_like(x)
    for (i0, ih), (j0, jw) in [((0, 4), (0, 4)), ((0, 4), (4, 3)), ((4, 2), (0, 4)), ((4, 2), (4, 3))]:
        part = x[:, :, i0 : i0 + ih, j0 : j0 + jw]
        exact = build_matricize(f"local(patch=[{ih}, {jw}], head_dim=2)", 4)
        em, ectx = exact(part)
        assert ectx.mask is None
        expected[:, :, i0 : i0 + ih, j0 : j0 + jw] = exact.inverse(solver(em, None), ectx)
    return padded, expected


@pytest.mark.parametrize("solver", list(_solvers()))
def test_padding_does_not_change_the_valid_part(solver):
    x = torch.rand(2, 4, 6, 7, generator=torch.Generator().manual_seed(0))
    padded, expected = _padded_and_exact(solver, x)
    torch.testing.assert_close(padded, expected, rtol=1e-5, atol=1e-6)


def test_padding_test_detects_an_ignored_mask():
    x = torch.rand(2, 4, 6, 7, generator=torch.Generator().manual_seed(0))
    padded, expected = _padded_and_exact(lambda mats, mask: _centered_rank1(mats, None), x)
    assert not torch.allclose(padded, expected, rtol=1e-3, atol=1e-3)


GRAD_SPECS = [
    "global(head_dim=2)",
    "channel(heads=2)",
    "local(patch=[2, 3])",
    "swin(patch=[2, 3], heads=2)",
    "swin(patch=[2, 3], shifts=[[0, 0], [1, 1], [1, 2]], cyclic=true)",
]


@pytest.mark.parametrize("spec", GRAD_SPECS)
def test_gradcheck_forward_and_inverse(spec):
    """float64 gradcheck of forward and inverse (sizes 3x4 leave padded windows)."""
    m = build_matricize(spec, 2)
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    mats, ctx = m(x)

    def forward(t):
        return m(t)[0]

    def inverse(t):
        return m.inverse(t, ctx)

    assert torch.autograd.gradcheck(forward, (x,))
    assert torch.autograd.gradcheck(inverse, (mats.detach().clone().requires_grad_(),))


def test_gradgradcheck_windows():
    """The custom backward of the window maps is itself differentiable."""
    m = build_matricize("swin(patch=[2, 3])", 2)

    def both(t):
        out, c = m(t)
        return m.inverse(torch.sin(out), c)

    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(both, (x,), fast_mode=True)


# --------------------------------------------------------------------------------------------
# Component maps, dtypes, errors, registry.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec",
    ["global(head_dim=3)", "channel(head_dim=3)", "local(patch=4, head_dim=3)", "swin(patch=3, head_dim=3)"],
)
def test_component_map_puts_factors_back_in_space(spec):
    """With the factor taken as row/column ``e`` of each matrix, the map is channel ``e`` of each head."""
    m = build_matricize(spec, 6)
    x = torch.randn(2, 6, 5, 7)
    mats, ctx = m(x)
    if spec.startswith("channel"):
        factors = (mats[:, :, 1:2], torch.ones(mats.shape[0], 3, 1))  # U indexes the voxels
    else:
        factors = (torch.ones(mats.shape[0], 3, 1), mats[:, 1:2, :].transpose(1, 2))
    maps = m.component_map(factors, ctx)
    assert maps.shape == (2, 2, 5, 7)
    torch.testing.assert_close(maps, x[:, [1, 4]], rtol=2 * torch.finfo(torch.float32).eps, atol=0)
    assert torch.equal(m.component_map(factors[m.spatial_factor_index], ctx), maps)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("name", ["global", "local", "swin", "channel"])
def test_dtypes_round_trip_exactly(dtype, name):
    m = build_matricize(f"{name}(heads=2)" if name != "local" else "local(patch=3, heads=2)", 4)
    x = torch.randn(2, 4, 5, 6).to(dtype)
    mats, ctx = m(x)
    assert mats.dtype == dtype
    assert torch.equal(m.inverse(mats, ctx), x)


@pytest.mark.parametrize("name", ["global", "local", "swin", "channel"])
def test_strided_inputs(name):
    """channels_last and sliced inputs give the same matrices as their contiguous copies."""
    m = build_matricize(f"{name}(heads=2)" if name != "local" else "local(patch=3, heads=2)", 4)
    base = torch.randn(2, 4, 7, 6, 5)
    for x in (base.to(memory_format=torch.channels_last_3d), base[:, :, 1:, ::2]):
        mats, ctx = m(x)
        ref, _ = m(x.contiguous())
        assert torch.equal(mats, ref)
        assert torch.equal(m.inverse(mats, ctx), x)


def test_errors_are_clear():
    with pytest.raises(ValueError, match=r"channels=12 is not divisible by head_dim=8"):
        build_matricize("swin(patch=4, head_dim=8)", 12)
    with pytest.raises(ValueError, match=r"channels=10 is not divisible by heads=4"):
        build_matricize("global(heads=4)", 10)
    with pytest.raises(ValueError, match="not both"):
        build_matricize("local(heads=2, head_dim=2)")
    with pytest.raises(ValueError, match="smaller than the patch"):
        build_matricize("swin(patch=4, shifts=[0, 4])")
    with pytest.raises(ValueError, match="3 values but the input has 2"):
        build_matricize("local(patch=[4, 4, 2])", spatial_dims=2)
    with pytest.raises(ValueError, match="at least one shift"):
        build_matricize("swin(shifts=[])")
    m = build_matricize("swin(patch=4, head_dim=8)", spatial_dims=3)
    with pytest.raises(ValueError, match="5-D input"):
        m(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="channels=12 is not divisible by head_dim=8"):
        m(torch.randn(1, 12, 4, 4, 4))
    mats, ctx = m(torch.randn(1, 8, 4, 4, 4))
    with pytest.raises(ValueError, match="pass the ctx"):
        m.inverse(mats[:-1], ctx)


def test_protocol_registry_and_spec():
    assert {"global", "local", "swin", "channel"} <= set(list_parts("matricize"))
    for name in ("global", "local", "swin", "channel"):
        m = build_matricize(name, 8, spatial_dims=3)
        assert isinstance(m, MatricizeProtocol)
        assert str(m.spec) == name
    m = build_matricize("swin(patch=8, head_dim=8)", 32, spatial_dims=3)
    assert "swin(patch=8, head_dim=8)" in repr(m)
    # one module serves every size; the context carries the sizes
    for size in [(8, 8, 8), (5, 9, 17)]:
        x = torch.randn(1, 32, *size)
        mats, ctx = m(x)
        assert isinstance(ctx, MatricizeContext) and ctx.shape == tuple(x.shape)
        assert torch.equal(m.inverse(mats, ctx), x)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin(patch=4, head_dim=2)", "global(head_dim=2)", "channel(heads=2)"])
def test_compiles_without_graph_breaks(name):
    m = build_matricize(name, 4)

    def f(x):
        mats, ctx = m(x)
        return m.inverse(torch.relu(mats) * 2, ctx)

    x = torch.randn(2, 4, 6, 8, 5, requires_grad=True)
    y = torch.compile(f, fullgraph=True)(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    y2 = f(x)
    (g2,) = torch.autograd.grad(y2.sum(), x)
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(g, g2)


def test_window_index_is_cached_per_size_and_works_on_meta():
    """The gather indices depend on the spatial size only (not batch or channels), and the maps
    run on the meta device (FLOP counting) with the right shapes."""
    _windows.view_index.cache_clear()
    m = build_matricize("swin(patch=4, head_dim=2)", spatial_dims=3)
    for batch, channels in [(1, 2), (3, 4), (2, 8)]:
        x = torch.randn(batch, channels, 5, 6, 7)
        mats, ctx = m(x)
        assert torch.equal(m.inverse(mats, ctx), x)
    assert _windows.view_index.cache_info().currsize == 2  # one entry per view
    with torch.device("meta"):
        x = torch.empty(1, 4, 9, 8, 7)
        mats, ctx = m(x)
        back = m.inverse(mats, ctx)
    # views: 3·2·2 windows unshifted, 3·3·3 shifted by 2 (no wrap); 2 heads; 4³ columns
    assert mats.device.type == "meta" and mats.shape == (2 * (12 + 27), 2, 64)
    assert back.shape == x.shape
