"""The Hamburger hams ``vq``, ``cd``, ``ham_nmf`` and the ``seeded``/``random_train`` inits.

References are written here from the paper's algorithms (Alg. 1–3), independently of the
library's loop; ``torch.linalg.solve`` is the ridge reference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank import build_solver
from lowrank.solvers.hamburger import SeededInit
from lowrank.spec import SpecError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread (2 threads on a loaded 2-core machine thrash in OpenMP)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


HAMS = ["vq", "cd", "ham_nmf"]


def _x(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=dtype)


def _d0(m: int, r: int, dtype=torch.float64) -> torch.Tensor:
    return SeededInit()(torch.zeros(m, 1, dtype=dtype), r)


# ------------------------------------------------------------------ paper references (Alg. 1-3)
def _assign(x, d, t):
    return torch.softmax(F.normalize(x, dim=-2).mT @ F.normalize(d, dim=-2) / t, dim=-1)


def _ref_vq(x, d, t, iters, free):
    """Alg. 1 then C from the final D; the first ``free`` steps without gradient."""
    for k in range(iters):
        with torch.set_grad_enabled(k >= free and torch.is_grad_enabled()):
            c = _assign(x, d, t)
            d = x @ c / c.sum(-2, keepdim=True)
        if k < free:
            d = d.detach()
    return d @ _assign(x, d, t).mT


def _ref_cd(x, d, t, beta, iters, free):
    """Alg. 3: spherical soft k-means, then ridge coefficients."""
    for k in range(iters):
        with torch.set_grad_enabled(k >= free and torch.is_grad_enabled()):
            c = _assign(x, d, t)
            d = F.normalize(x @ c, dim=-2)
        if k < free:
            d = d.detach()
    eye = torch.eye(d.shape[-1], dtype=d.dtype)
    v = torch.linalg.solve(d.mT @ d + beta * eye, d.mT @ x).mT
    return d @ v.mT


def _ref_ham_nmf(x, d, t, iters, free, eps=1e-12):
    """Alg. 2 with C0 = softmax(cos(D0, X)/T) and the reference's final C update."""

    def mu_c(c, d):
        return c * (x.mT @ d) / (c @ (d.mT @ d) + eps)

    def mu_d(d, c):
        return d * (x @ c) / (d @ (c.mT @ c) + eps)

    with torch.set_grad_enabled(free == 0 and torch.is_grad_enabled()):
        c = mu_c(_assign(x, d, t), d)
    for k in range(iters):
        if k == free and free > 0:
            c, d = c.detach(), d.detach()
        with torch.set_grad_enabled(k >= free and torch.is_grad_enabled()):
            d = mu_d(d, c)
            c = mu_c(c, d)
    return d @ c.mT


REFS = {
    "vq": lambda x, d, iters, free: _ref_vq(x, d, 0.5, iters, free),
    "cd": lambda x, d, iters, free: _ref_cd(x, d, 0.5, 0.1, iters, free),
    "ham_nmf": lambda x, d, iters, free: _ref_ham_nmf(x, d, 0.5, iters, free),
}
SPECS = {
    "vq": "vq(rank=3, temperature=0.5, iters={iters}, grad_steps={gs}, init=seeded)",
    "cd": "cd(rank=3, temperature=0.5, beta=0.1, iters={iters}, grad_steps={gs}, init=seeded)",
    "ham_nmf": "ham_nmf(rank=3, temperature=0.5, iters={iters}, grad_steps={gs}, init=seeded)",
}


@pytest.mark.parametrize("name", HAMS)
@pytest.mark.parametrize("grad_steps", [1, None])
def test_matches_paper_algorithm_and_gradient_mode(name, grad_steps):
    """Output and input gradient equal the paper's algorithm, with autograd through the last step
    only (one-step) or through everything (None)."""
    iters = 4
    spec = SPECS[name].format(iters=iters, gs="none" if grad_steps is None else grad_steps)
    layer = build_solver(spec).double()
    x = _x(2, 7, 11) - (0.0 if name == "ham_nmf" else 0.5)  # signed data for the clusterings
    x.requires_grad_(True)
    w = _x(2, 7, 11, seed=1)
    out = layer(x)
    (g,) = torch.autograd.grad((out * w).sum(), x)
    xr = x.detach().clone().requires_grad_(True)
    free = 0 if grad_steps is None else iters - grad_steps
    ref = REFS[name](xr, _d0(7, 3), iters, free)
    (gr,) = torch.autograd.grad((ref * w).sum(), xr)
    torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(g, gr, rtol=1e-6, atol=1e-8)
    if grad_steps == 1:  # the one-step gradient is not the full one (the test can fail)
        full = REFS[name](xr, _d0(7, 3), iters, 0)
        (gf,) = torch.autograd.grad((full * w).sum(), xr)
        assert not torch.allclose(g, gf, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", HAMS)
def test_gradcheck_float64(name):
    layer = build_solver(SPECS[name].format(iters=2, gs="none")).double()
    x = (_x(2, 3, 5) + (0.1 if name == "ham_nmf" else -0.5)).requires_grad_(True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-5)


def test_vq_rows_sum_to_one_and_hard_limit():
    x = _x(3, 6, 40)
    vq = build_solver("vq(rank=4, temperature=0.3, iters=3, return_factors=true, init=seeded)").double()
    _, (d, v) = vq(x)
    torch.testing.assert_close(v.sum(-1), torch.ones(3, 40, dtype=torch.float64))
    assert (v > 0).all() and (v < 1).all()
    # T -> 0: one-hot assignment to the most cosine-similar centroid, and (converged) each
    # centroid is the mean of its cluster: a k-means fixed point.
    hard = build_solver("vq(rank=4, temperature=1e-5, iters=30, return_factors=true, init=seeded)").double()
    out, (d, v) = hard(x)
    best = (F.normalize(x, dim=-2).mT @ F.normalize(d, dim=-2)).argmax(-1)
    torch.testing.assert_close(v, F.one_hot(best, 4).double(), atol=1e-12, rtol=0)
    torch.testing.assert_close(out, torch.gather(d, -1, best.unsqueeze(-2).expand(-1, 6, -1)))
    for b in range(3):
        for r in best[b].unique():
            torch.testing.assert_close(d[b, :, r], x[b][:, best[b] == r].mean(-1))


def test_cd_assignments_rows_sum_to_one_and_ridge_matches_solve():
    x = _x(2, 8, 30) - 0.3
    cd = build_solver("cd(rank=5, temperature=0.2, beta=0.05, iters=3, init=seeded)").double()
    v = cd.assign(x, _d0(8, 5).expand(2, -1, -1), None, 1e-12)
    torch.testing.assert_close(v.sum(-1), torch.ones(2, 30, dtype=torch.float64))
    cd.return_factors = True
    out, (d, c) = cd(x)
    torch.testing.assert_close(d.norm(dim=-2), torch.ones(2, 5, dtype=torch.float64))
    gram = d.mT @ d + 0.05 * torch.eye(5, dtype=torch.float64)
    ref = torch.linalg.solve(gram, d.mT @ x).mT
    torch.testing.assert_close(c, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out, d @ ref.mT, rtol=1e-9, atol=1e-12)
    hard = cd.assign(x, d, None, 1e-12)
    cd.temperature = 1e-6
    torch.testing.assert_close(
        cd.assign(x, d, None, 1e-12), F.one_hot(hard.argmax(-1), 5).double(), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("name", HAMS)
def test_eval_is_deterministic_training_is_augmented(name):
    layer = build_solver(f"{name}(rank=4, iters=3)")  # default init: random_train
    x = _x(2, 8, 20, dtype=torch.float32)
    layer.train()
    assert not torch.equal(layer(x), layer(x)), "training draws a new init per call"
    layer.eval()
    first = layer(x)
    assert torch.equal(first, layer(x))
    layer.train()
    layer(x)
    layer.eval()
    assert torch.equal(first, layer(x)), "training calls do not change the eval init"


@pytest.mark.parametrize("name", HAMS)
def test_online_init_moves_in_training_frozen_in_eval_and_loads(name):
    spec = f"{name}(rank=3, iters=2, init=online(momentum=0.5))"
    layer = build_solver(spec)
    x = _x(2, 6, 25, dtype=torch.float32)
    layer.eval()
    out0 = layer(x)
    table0 = layer.init.weight.clone()
    assert torch.equal(layer(x), out0) and torch.equal(layer.init.weight, table0)
    layer.train()
    layer(x)
    assert not torch.allclose(layer.init.weight, table0), "the EMA moves in training"
    layer.eval()
    moved = layer.init.weight.clone()
    out1 = layer(x)
    assert torch.equal(layer.init.weight, moved) and not torch.allclose(out1, out0)
    fresh = build_solver(spec).eval()
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh(x), out1)


@pytest.mark.parametrize("name", HAMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fill", [0.0, 1e-30, 1e15])
def test_finite_under_autocast_and_extreme_inputs(name, dtype, fill):
    layer = build_solver(f"{name}(rank=4, iters=3, grad_steps=none)")
    x = torch.full((2, 8, 12), fill)
    x[:, :, ::3] *= 0.5
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        out = layer(x)
    out.float().square().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    if fill == 0.0:
        assert (out == 0).all()


@pytest.mark.parametrize("name", HAMS)
def test_mask_gives_the_factorization_of_the_valid_columns(name):
    layer = build_solver(f"{name}(rank=3, iters=3, init=seeded)").double()
    x = _x(2, 6, 15)
    mask = torch.ones(2, 15, dtype=torch.bool)
    mask[:, 10:] = False
    out = layer(torch.cat([x[..., :10], 5 * x[..., 10:]], -1), mask)
    torch.testing.assert_close(out[..., :10], layer(x[..., :10]))
    assert (out[..., 10:] == 0).all()


def test_no_cuda_needed(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("CUDA used")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.Tensor, "cuda", no_cuda)
    for name in HAMS:
        for init in ("random_train", "online(momentum=0.9)", "seeded", "random"):
            layer = build_solver(f"{name}(rank=2, iters=2, init={init})")
            x = torch.rand(2, 4, 9, requires_grad=True)
            layer(x).sum().backward()
            layer.eval()(x)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("vq(temperature=0)", "temperature must be >= 1e-06"),
        ("cd(beta=0)", "beta must be > 0"),
        ("cd(temperature=-1)", "temperature must be >= 1e-06"),
        ("ham_nmf(temperature=0)", "temperature must be >= 1e-06"),
    ],
)
def test_bad_arguments_fail_at_build_time(spec, message):
    with pytest.raises(ValueError, match=message):
        build_solver(spec)


def test_typo_in_spec_is_a_spec_error():
    with pytest.raises(SpecError, match="did you mean 'temperature'"):
        build_solver("vq(temprature=0.1)")


@settings(max_examples=12)
@given(
    name=st.sampled_from(["vq", "cd"]),
    batch=st.integers(1, 3),
    m=st.integers(1, 9),
    n=st.integers(1, 20),
    rank=st.integers(1, 6),
)
def test_shapes_and_rows_property(name, batch, m, n, rank):
    rank = min(rank, max(m, n))  # a larger int rank is refused (factors larger than X)
    layer = build_solver(f"{name}(rank={rank}, iters=2, return_factors=true)")
    x = torch.randn(batch, m, n)
    out, (d, v) = layer(x)
    assert out.shape == x.shape and d.shape == (batch, m, rank) and v.shape == (batch, n, rank)
    assert torch.isfinite(out).all()
    if name == "vq":
        torch.testing.assert_close(v.sum(-1), torch.ones(batch, n))


def test_learned_init_receives_gradient_and_needs_full_backprop():
    with pytest.raises(ValueError, match="grad_steps=none"):
        build_solver("vq(rank=2, init=learned)")  # default one-step gradient: nothing reaches U0
    layer = build_solver("cd(rank=2, iters=2, grad_steps=none, init=learned(dim=5))")
    layer(_x(2, 5, 9, dtype=torch.float32) - 0.5).square().sum().backward()
    assert layer.init.weight.grad is not None and layer.init.weight.grad.abs().sum() > 0


def test_seeded_init_is_uniform_table_for_any_height():
    seeded = build_solver("vq(rank=3, init=seeded)").init
    uniform = build_solver("vq(rank=3, init=uniform)").init
    for m in (4, 9):
        x = torch.zeros(2, m, 5)
        torch.testing.assert_close(seeded(x, 3), seeded(x, 3))
        assert seeded(x, 3).shape == (2, m, 3)
    x = torch.zeros(2, 4, 5)
    torch.testing.assert_close(seeded(x, 3), uniform(x, 3))
