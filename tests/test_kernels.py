"""The kernel layer and its switch: ``use_kernels`` / ``LOWRANK_KERNELS``, device rules, and the
``cpu`` backend against the ``reference`` oracle for every operation it implements."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowrank
from lowrank import build_block, build_solver, kernels
from lowrank.kernels import _switch, reference


def test_use_kernels_is_a_global_setter_and_a_context_manager():
    before = kernels.current()
    with lowrank.use_kernels("reference") as k:
        assert kernels.current() == "reference" and repr(k) == "use_kernels('reference')"
        with lowrank.use_kernels("cpu"):
            assert kernels.current() == "cpu"
        assert kernels.current() == "reference"
    assert kernels.current() == before
    lowrank.use_kernels("reference")
    try:
        assert kernels.current() == "reference"
    finally:
        lowrank.use_kernels(before)


def test_unknown_backend_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="one of 'auto', 'reference', 'cpu', 'triton'"):
        lowrank.use_kernels("cuda")
    monkeypatch.setenv("LOWRANK_KERNELS", "fast")
    monkeypatch.setattr(_switch, "_setting", [None])
    with pytest.raises(ValueError, match="LOWRANK_KERNELS"):
        kernels.current()


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setattr(_switch, "_setting", [None])
    monkeypatch.setenv("LOWRANK_KERNELS", "reference")
    assert kernels.current() == "reference"
    assert kernels.backend_for(torch.device("cpu")) == "reference"
    with lowrank.use_kernels("cpu"):  # an explicit call wins over the environment
        assert kernels.backend_for(torch.device("cpu")) == "cpu"
    monkeypatch.delenv("LOWRANK_KERNELS")
    assert kernels.current() == "auto"


def test_triton_without_triton_is_an_import_error(monkeypatch):
    monkeypatch.setattr(_switch, "triton_available", lambda: False)
    with pytest.raises(ImportError, match=r"lowrank\[triton\]"):
        lowrank.use_kernels("triton")


@pytest.mark.parametrize(
    ("setting", "device", "triton", "want"),
    [
        ("auto", "cpu", True, "cpu"),
        ("auto", "cuda", True, "triton"),
        ("auto", "cuda", False, "reference"),
        ("auto", "meta", True, "reference"),
        ("cpu", "cuda", True, "reference"),  # CPU-only machinery never runs on other devices
        ("cpu", "meta", True, "reference"),
        ("triton", "meta", True, "triton"),
        ("triton", "cuda", True, "triton"),
        ("reference", "cpu", True, "reference"),
    ],
)
def test_backend_for_devices(monkeypatch, setting, device, triton, want):
    monkeypatch.setattr(_switch, "triton_available", lambda: triton)
    monkeypatch.setattr(_switch, "_setting", [setting])
    assert kernels.backend_for(torch.device(device)) == want


def test_triton_on_cpu_tensors_only_under_the_interpreter(monkeypatch):
    monkeypatch.setattr(_switch, "triton_available", lambda: True)
    monkeypatch.setattr(_switch, "_setting", ["triton"])
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert kernels.backend_for(torch.device("cpu")) == "reference"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.backend_for(torch.device("cpu")) == "triton"
    assert kernels.backend_for(torch.device("cpu"), triton_ok=False) == "reference"


def _x(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=dtype)


def _assert_grads(fn_a, fn_b, inputs, rtol=1e-7):
    out_a, out_b = fn_a(*inputs), fn_b(*inputs)
    torch.testing.assert_close(out_a, out_b, rtol=rtol, atol=rtol * out_b.abs().max().item())
    probe = torch.randn_like(out_b)
    ga = torch.autograd.grad((out_a * probe).sum(), inputs, allow_unused=True)
    gb = torch.autograd.grad((out_b * probe).sum(), inputs, allow_unused=True)
    for a, b in zip(ga, gb):
        if b is None:
            assert a is None or not a.any()
            continue
        torch.testing.assert_close(a, b, rtol=rtol * 10, atol=rtol * 10 * b.abs().max().item())


@pytest.mark.parametrize("grad_steps", [None, 1, 2])
def test_cpu_rank1_equals_reference(grad_steps):
    x = _x((3, 5, 17)).requires_grad_()
    u0 = _x((3, 5), seed=1).requires_grad_()

    def run(backend):
        def f(x, u0):
            with lowrank.use_kernels(backend):
                return kernels.nmf_rank1(x, u0, 4, grad_steps, 1e-12)[0]

        return f

    _assert_grads(run("cpu"), run("reference"), (x, u0))


@pytest.mark.parametrize("grad_steps", [None, 2])
def test_cpu_hals_equals_reference(grad_steps):
    x = _x((4, 6, 11)).requires_grad_()
    u0 = _x((4, 6, 3), seed=1).requires_grad_()

    def run(backend):
        def f(x, u0):
            with lowrank.use_kernels(backend):
                # the cpu node itself differentiates every iteration (the layer recomputes a tail)
                return kernels.nmf_iterations(x, u0, 3, 1e-12, "hals")[0]

        return f

    _assert_grads(run("cpu"), run("reference"), (x, u0))


@pytest.mark.parametrize("update", ["mu", "hals"])
def test_reference_iterations_equal_the_general_loop(update):
    """The kernel layer's textbook NMF equals the layer's general loop (the ``update`` parts)."""
    x = _x((2, 3, 6, 9)).requires_grad_()
    layer = build_solver(f"nmf(rank=3, iters=4, update={update}, eps=1e-12)")
    u0 = layer.initial_u(x.detach(), 3)
    layer._fused_hals = False
    with torch.no_grad():
        want = layer(x)
    got = reference.nmf_iterations(x.reshape(-1, 6, 9), u0.reshape(-1, 6, 3), 4, 4, 1e-12, update)[0]
    torch.testing.assert_close(got.reshape(x.shape), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "spec",
    [
        "nmf(rank=1)",
        "nmf(rank=3, update=hals)",
        "nmf(rank=3, update=mu)",
        "ham_nmf(rank=3, update=hals, init=seeded)",
    ],
)
@pytest.mark.parametrize("grad_steps", ["none", "1"])
def test_layer_cpu_equals_layer_reference(spec, grad_steps):
    """The whole layer, with masks and a grad_steps tail, on the two CPU-runnable backends."""
    spec = spec[:-1] + f", iters=3, grad_steps={grad_steps})"
    layer = build_solver(spec).double()
    x = _x((3, 4, 10)).requires_grad_()
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 7:] = False

    def run(backend):
        def f(x):
            with lowrank.use_kernels(backend):
                return layer(x, mask=mask)

        return f

    _assert_grads(run("cpu"), run("reference"), (x,), rtol=1e-6)


def test_cpu_mlp_equals_reference_and_other_devices_take_the_reference():
    x = _x((2, 4, 3, 5)).requires_grad_()
    w1, b1, w2, b2 = (_x(s, seed=i).requires_grad_() for i, s in enumerate([(8, 4), (8,), (4, 8), (4,)]))

    def run(backend):
        def f(*args):
            with lowrank.use_kernels(backend):
                return kernels.fused_mlp(*args, 1e-5, "none", chunk_elements=16)

        return f

    _assert_grads(run("cpu"), run("reference"), (x, w1, b1, w2, b2))
    meta = kernels.fused_mlp(*(t.detach().to("meta") for t in (x, w1, b1, w2, b2)), 1e-5)
    assert meta.device.type == "meta" and meta.shape == x.shape


def test_convolution_uses_onednn_on_cpu_only():
    conv = nn.Conv3d(2, 3, 3, padding=1).double().float()
    x = torch.randn(1, 2, 6, 6, 6)
    with torch.profiler.profile() as prof:
        y = kernels.convolution(conv, x)
    assert "aten::mkldnn_convolution" in {e.key for e in prof.key_averages()}
    with lowrank.use_kernels("reference"), torch.profiler.profile() as prof:
        y_ref = kernels.convolution(conv, x)
    assert "aten::mkldnn_convolution" not in {e.key for e in prof.key_averages()}
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y, F.conv3d(x, conv.weight, conv.bias, padding=1), rtol=1e-4, atol=1e-5)


def test_inference_fold_chunks_only_on_the_cpu_backend():
    """``cpu``: cache-sized chunks; elsewhere one chunk (each chunk is kernel launches on a GPU)."""
    block = build_block("factorizer(mixer=nmf(rank=1, iters=2), matricize=swin(patch=4, head_dim=4))", 8)
    block.eval()
    x = torch.rand(1, 8, 64, 64, 16)
    assert kernels.chunk_elements(x.device) < 1 << 30
    with lowrank.use_kernels("reference"):
        assert kernels.chunk_elements(x.device) >= 1 << 62
    with torch.no_grad():
        y_cpu = block(x)
        with lowrank.use_kernels("reference"):
            y_ref = block(x)
    torch.testing.assert_close(y_cpu, y_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", ["nmf(rank=1)", "nmf(rank=4, update=hals)", "nmf(rank=4, update=mu)"])
def test_meta_device_runs_the_reference(spec):
    out = build_solver(spec)(torch.empty(2, 8, 64, device="meta"))
    assert out.shape == (2, 8, 64) and out.device.type == "meta"
