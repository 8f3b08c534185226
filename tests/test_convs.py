"""Low-rank convolutions (CP, Tucker, tensor-train) against dense references."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest
import tensorly as tl
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lowrank
from lowrank.convs.cp import CPConv
from lowrank.convs.tt import TTConv
from lowrank.convs.tucker import TuckerConv

CLASSES = [CPConv, TuckerConv, TTConv]
IMPLS = ["factorized", "reconstructed"]
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
NN_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def reference(module, x):
    """F.convNd with the module's reconstructed kernel: the independent reference."""
    return CONV[module.spatial_dims](
        x, module.weight, module.bias, module.stride, module.padding, module.dilation, module.groups
    )


@st.composite
def conv_configs(draw):
    n = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(n))
    if draw(st.booleans()):
        stride, padding = (1,) * n, "same"
    else:
        stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
        padding = tuple(draw(st.integers(0, 2)) for _ in range(n))
    size = tuple(draw(st.integers(5, 8)) for _ in range(n))
    rank = groups * draw(st.integers(1, 3))
    bias = draw(st.booleans())
    return dict(
        in_channels=cin,
        out_channels=cout,
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias,
        spatial_dims=n,
        rank=rank,
    ), size


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=conv_configs(), seed=st.integers(0, 2**16))
def test_equals_dense_conv_with_reconstructed_kernel(cls, config, seed):
    kwargs, size = config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, kwargs["in_channels"], *size, generator=gen)
    for impl in IMPLS:
        module = cls(**kwargs, implementation=impl)
        with torch.no_grad():
            expected = reference(module, x)
            out = module(x)
        assert out.shape == expected.shape
        scale = expected.abs().max().clamp_min(1e-6)
        assert ((out - expected).abs().max() / scale) < 1e-5, impl


GRAD_CONFIGS = [
    dict(spatial_dims=1, kernel_size=3, stride=2, padding=1, dilation=2, groups=1),
    dict(spatial_dims=2, kernel_size=(3, 2), stride=(2, 1), padding="same", dilation=(1, 2), groups=1)
    | {"stride": 1},
    dict(spatial_dims=3, kernel_size=(3, 1, 2), stride=(1, 2, 1), padding=(1, 0, 1), dilation=1, groups=2),
]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("config", GRAD_CONFIGS, ids=["1d", "2d_same", "3d_groups"])
def test_gradcheck(cls, impl, config):
    module = cls(4, 2, rank=2, implementation=impl, **config).double()
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]
    size = (5, 4, 3)[: config["spatial_dims"]]
    x = torch.randn(1, 4, *size, dtype=torch.float64, requires_grad=True)

    def fn(x, *params):
        return torch.func.functional_call(module, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_auto_picks_by_cost_and_matches(cls):
    module = cls(16, 16, 3, padding=1, rank=2, implementation="auto")
    big, tiny = (24, 24, 24), (2, 2, 2)
    assert module.factorized_cost(big) < module.reconstructed_cost(big)
    assert module.choose(big) == "factorized"
    wide = cls(16, 16, 3, padding=1, rank=64, implementation="auto")
    assert wide.reconstructed_cost(big) < wide.factorized_cost(big)
    assert wide.choose(big) == "reconstructed"
    assert wide._choices == {big: "reconstructed"}  # decided once per input size
    assert module.choose(tiny) in IMPLS
    x = torch.randn(1, 16, 6, 6, 6)
    with torch.no_grad():
        expected = reference(module, x)
        assert torch.allclose(module(x), expected, rtol=1e-4, atol=1e-5)


def full_rank(cls, conv):
    g = conv.groups
    co, ci, *k = conv.weight.shape
    co //= g
    n = len(k)
    if cls is CPConv:
        dims = [co, ci, *k]
        return g * math.prod(dims) // max(dims)
    if cls is TuckerConv:
        return (g * co, g * ci)
    bonds = [min(math.prod([ci, *k[: j - 1]]), math.prod([*k[j - 1 :], co])) for j in range(1, n + 2)]
    return [g * b for b in bonds]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_from_conv_full_rank_reproduces(cls, n):
    torch.manual_seed(n)
    stride = (2, 1, 3)[:n]
    dilation = (1, 2, 1)[:n]
    conv = NN_CONV[n](4, 6, 3, stride=stride, padding=1, dilation=dilation, groups=2).double()
    module = cls.from_conv(conv, full_rank(cls, conv))
    assert module.stride == stride and module.dilation == dilation and module.groups == 2
    assert module.padding == (1,) * n and module.weight.dtype == torch.float64
    x = torch.randn(2, 4, *([9] * n), dtype=torch.float64)
    expected = conv(x)
    for impl in IMPLS:
        module.implementation = impl
        assert torch.allclose(module(x), expected, atol=1e-9), impl
    dense = module.to_dense()
    assert type(dense) is type(conv)
    assert dense.stride == conv.stride and dense.dilation == conv.dilation and dense.groups == 2
    assert torch.allclose(dense(x), expected, atol=1e-9)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_to_dense_round_trip(cls):
    module = cls(6, 4, (3, 1), stride=(1, 2), padding=(1, 0), spatial_dims=2, rank=2)
    dense = module.to_dense()
    x = torch.randn(2, 6, 7, 8)
    with torch.no_grad():
        assert torch.allclose(dense(x), module(x), atol=1e-5)
    again = cls.from_conv(lowrank.build_conv("dense", 6, 4, (3, 1), spatial_dims=2, stride=(1, 2)), 2)
    assert again.stride == (1, 2) and again.padding == (0, 0)


def test_from_conv_recovers_low_rank_kernel():
    """A kernel that is exactly CP rank 2 is recovered by the ALS path (rank below the trivial bound)."""
    gen = torch.Generator().manual_seed(0)
    factors = [torch.randn(d, 2, generator=gen, dtype=torch.float64) for d in (8, 6, 3, 3)]
    kernel = torch.einsum("or,ir,ar,br->oiab", *factors)
    conv = nn.Conv2d(6, 8, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(kernel)
    module = CPConv.from_conv(conv, 2)
    assert torch.allclose(module.weight, kernel, atol=1e-6)
    tucker = TuckerConv.from_conv(conv, (2, 2))
    assert torch.allclose(tucker.weight, kernel, atol=1e-8)


def test_from_conv_keeps_tensorly_backend():
    conv = nn.Conv2d(4, 4, 3)
    before = tl.get_backend()
    with tl.backend_context("pytorch"):
        for cls in CLASSES:
            cls.from_conv(conv, 2 if cls is not TuckerConv else (2, 2))
            assert tl.get_backend() == "pytorch"
    assert tl.get_backend() == before
    for cls in CLASSES:
        cls.from_conv(conv, 2)
        assert tl.get_backend() == before


def test_import_keeps_tensorly_backend():
    code = (
        "import tensorly as tl; tl.set_backend('pytorch'); import lowrank; lowrank.list_parts('conv');"
        "import torch; from lowrank.convs.cp import CPConv;"
        "CPConv.from_conv(torch.nn.Conv2d(3, 3, 3), 2);"
        "assert tl.get_backend() == 'pytorch', tl.get_backend()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "shape",
    [(8, 8, 3, 3, 1), (64, 32, 3, 3, 0.5), (16, 16, 5, 2, 1), (12, 6, 3, 1, 2), (3, 5, 3, 3, 1)],
    ids=str,
)
def test_init_std_matches_default_conv(cls, shape):
    cout, cin, k, n, rank = shape
    groups = 2 if rank == 2 else 1
    module = cls(cin, cout, k, spatial_dims=n, groups=groups, rank=rank)
    dense = NN_CONV[n](cin, cout, k, groups=groups)
    target = 1.0 / math.sqrt(3 * (cin // groups) * k**n)
    assert module.weight.std().item() == pytest.approx(target, rel=0.1)
    assert dense.weight.std().item() == pytest.approx(target, rel=0.25)  # the reference itself
    bound = 1.0 / math.sqrt((cin // groups) * k**n)
    assert module.bias.abs().max() <= bound
    assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_meta_device_construction(cls):
    with torch.device("meta"):
        module = cls(32, 32, 3, rank=0.5)
    assert all(p.is_meta for p in module.parameters())
    assert module(torch.empty(1, 32, 6, 6, 6, device="meta")).shape == (1, 32, 4, 4, 4)


def test_rank_forms():
    cp = CPConv(60, 60, rank=0.5)
    assert cp.ranks == (30,)
    assert CPConv(45, 8, rank=0.5).ranks == (23,)  # 22.5 rounds half up
    assert CPConv(8, 8, rank=7).ranks == (7,)
    dense = 8 * 8 * 27
    same = CPConv(8, 8, rank="same")
    count = sum(p.numel() for p in (same.out_factor, same.in_factor, *same.spatial_factors))
    assert count <= dense < count + (8 + 8 + 9)  # the largest rank within the budget
    quarter = TTConv(16, 16, rank="25%")
    count = sum(p.numel() for p in quarter.parameters()) - 16
    assert (
        count
        <= 0.25 * 16 * 16 * 27
        < sum(p.numel() for p in TTConv(16, 16, rank=quarter.ranks[0] + 1).parameters())
    )
    assert TuckerConv(8, 16, rank=0.5).ranks == (8, 4)
    assert TuckerConv(8, 16, rank=4).ranks == (4, 4)
    full = TuckerConv(8, 16, 3, rank=(4, 2, 2, 1, 3), spatial_dims=3)
    assert [tuple(f.shape) for f in full.spatial_factors] == [(1, 3, 2), (1, 3, 1), (1, 3, 3)]
    assert TTConv(8, 8, spatial_dims=2, rank=(2, 3, 4)).ranks == (2, 3, 4)
    assert CPConv(8, 8, groups=4, rank=0.5).ranks == (4,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(rank="half"), "'same'.*percentage"),
        (dict(rank=3, groups=2), "multiple of groups"),
        (dict(rank=(2, 2)), "single rank"),
        (dict(rank=True), "rank must be"),
        (dict(rank=-0.5), "positive finite"),
        (dict(in_channels=3, groups=2), "divisible by groups"),
        (dict(padding="same", stride=2), "stride 1"),
        (dict(kernel_size=(3, 3)), "kernel_size must be an int or a sequence of 3"),
        (dict(implementation="fast"), "implementation must be"),
        (dict(spatial_dims=4), "spatial_dims"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    args = dict(in_channels=4, out_channels=4, rank=2) | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        CPConv(**args)


def test_bad_tucker_and_tt_ranks():
    with pytest.raises(ValueError, match="needs 4 ints"):
        TTConv(4, 4, rank=(2, 2))
    with pytest.raises(ValueError, match="must not exceed kernel_size"):
        TuckerConv(4, 4, rank=(2, 2, 4, 1, 1))
    with pytest.raises(ValueError, match=r"expects \(B, 4"):
        CPConv(4, 4, rank=2)(torch.randn(1, 3, 5, 5, 5))
    with pytest.raises(TypeError, match=r"nn\.Conv1d/2d/3d"):
        CPConv.from_conv(nn.ConvTranspose2d(2, 2, 3), 2)
    with pytest.raises(ValueError, match="padding_mode"):
        CPConv.from_conv(nn.Conv2d(2, 2, 3, padding_mode="reflect"), 2)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("impl", IMPLS)
def test_finite_on_extreme_inputs_and_autocast(cls, impl):
    module = cls(8, 8, 3, padding=1, rank=0.5, implementation=impl)
    for value in (0.0, 1e-30, 1e4):
        x = torch.full((1, 8, 5, 5, 5), value, requires_grad=True)
        out = module(x)
        out.square().mean().backward()
        assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in module.parameters())
        module.zero_grad()
    x = torch.randn(1, 8, 5, 5, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all() and torch.isfinite(x.grad).all()
    with torch.no_grad():
        assert torch.allclose(out.float(), module(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", ["cp_conv", "tucker_conv", "tt_conv"])
def test_build_from_spec_and_state(name):
    module = lowrank.build_conv(
        f"{name}(rank=0.5, implementation='factorized')", 8, 16, 3, stride=2, padding=1
    )
    assert str(module.spec) == f"{name}(rank=0.5, implementation=factorized)"
    assert module.stride == (2, 2, 2) and module.out_channels == 16
    assert name in repr(module)
    clone = copy.deepcopy(module)
    fresh = lowrank.build_conv(f"{name}(rank=0.5)", 8, 16, 3, stride=2, padding=1)
    fresh.load_state_dict(module.state_dict())
    x = torch.randn(1, 8, 7, 7, 7)
    with torch.no_grad():
        assert torch.allclose(fresh(x), module(x), atol=1e-5)
        assert torch.allclose(clone(x), module(x), atol=1e-6)


def test_parameter_reduction_factor():
    """Thesis ch. 8 at C = 128, alpha = 0.5: ~25x fewer multiply-adds and ~30x fewer weights."""
    module = CPConv(128, 128, 3, padding=1, rank=0.5)
    weights = sum(p.numel() for p in module.parameters()) - 128
    assert weights == 64 * (128 + 128 + 9)
    assert module.dense_parameters / weights == pytest.approx(26.1, abs=0.1)
    size = (32, 32, 32)
    macs, _ = module._factorized_cost(size)
    assert math.prod(size) * module.dense_parameters / macs > 24


def test_exact_cp_is_exact():
    from lowrank.convs._tensorly import exact_cp

    tensor = np.random.default_rng(0).standard_normal((3, 2, 4))
    factors = exact_cp(tensor, 7)
    assert np.allclose(np.einsum("ar,br,cr->abc", *factors), tensor)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_depthwise_axis_conv_matches_conv_forward_and_backward(n):
    """The custom backward of the per-axis depthwise conv equals autograd through F.convNd."""
    from lowrank.convs._ops import depthwise_axis_conv

    gen = torch.Generator().manual_seed(n)
    for axis in range(n):
        for stride, padding, dilation, k in [
            (1, 1, 1, 3),
            (2, 1, 1, 3),
            (3, 3, 2, 2),
            (1, 0, 2, 3),
            (2, 0, 1, 1),
        ]:
            z = torch.randn(2, 3, *(7, 6, 5)[:n], dtype=torch.float64, generator=gen, requires_grad=True)
            w = torch.randn(3, k, dtype=torch.float64, generator=gen, requires_grad=True)
            shape = [3, 1] + [1] * n
            shape[2 + axis] = k
            per_axis = [[1] * n, [0] * n, [1] * n]
            for values, value in zip(per_axis, (stride, padding, dilation)):
                values[axis] = value
            expected = CONV[n](z, w.reshape(shape), None, *per_axis, 3)
            out = depthwise_axis_conv(z, w, axis, stride, padding, dilation)
            grad = torch.randn(expected.shape, dtype=torch.float64, generator=gen)
            want = torch.autograd.grad(expected, (z, w), grad)
            got = torch.autograd.grad(out, (z, w), grad)
            assert torch.allclose(out, expected, atol=1e-12)
            assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(got, want))
    z = torch.randn(1, 2, *(5, 4, 3)[:n], dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda z, w: depthwise_axis_conv(z, w, n - 1, 2, 1, 1), (z, w))


def test_projections_gradcheck():
    from lowrank.convs._ops import project_in, project_out

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    u = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    z = torch.randn(2, 5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.allclose(project_in(x, u), torch.einsum("bcn,cr->bnr", x, u))
    assert torch.allclose(project_out(z, u, b), torch.einsum("cr,bnr->bcn", u, z) + b[:, None])
    assert torch.autograd.gradgradcheck(project_in, (x, u))
    assert torch.autograd.gradgradcheck(project_out, (z, u, b))
    assert torch.autograd.gradcheck(project_out, (z, u, None))


@pytest.mark.slow
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_torch_compile_fullgraph(cls):
    """The factorized path (custom autograd ops included) compiles without graph breaks."""
    module = cls(8, 8, 3, padding=1, rank=4, implementation="factorized")
    compiled = torch.compile(module, fullgraph=True)
    x = torch.randn(2, 8, 6, 6, 6, requires_grad=True)
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, module(x), atol=1e-5)
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 3, "stride": 2, "padding": 1, "bias": False},
        {"kernel_size": [3, 1, 3], "dilation": 2, "padding": [2, 0, 2]},
    ],
)
def test_dense_conv3d_small_input_runs_onednn_and_matches_the_native_conv(kwargs):
    """1×4×12³ is under PyTorch's oneDNN size heuristic: DenseConv calls oneDNN itself (the
    native slow_conv3d is 2.6× slower on a net's stem); values and gradients are the conv's."""
    torch.manual_seed(0)
    kwargs = dict(kwargs)
    layer = lowrank.build_conv("dense", 4, 6, kwargs.pop("kernel_size"), spatial_dims=3, **kwargs)
    x = torch.randn(1, 4, 12, 12, 12, requires_grad=True)
    with torch.profiler.profile() as prof:
        y = layer(x)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::mkldnn_convolution" in ops and "aten::slow_conv3d_forward" not in ops
    conv = layer.conv
    ref = F.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    g = torch.randn_like(ref)
    params = [x, conv.weight] + ([conv.bias] if conv.bias is not None else [])
    got, want = torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # float64, a batch of 2 or autocast take the module's own path
    with torch.profiler.profile() as prof:
        layer(x.detach()[:, :, :8].repeat(2, 1, 1, 1, 1))
    assert "aten::mkldnn_convolution" in {e.key for e in prof.key_averages()}  # PyTorch's own choice
    layer64 = copy.deepcopy(layer).double()
    torch.testing.assert_close(layer64(x.double()).float(), ref, rtol=1e-4, atol=1e-5)
