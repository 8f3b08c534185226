"""Factorization layers against independent references: SVD, monotonicity, scikit-learn, autograd."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank import SpecError, build_solver, list_parts
from lowrank.solvers.base import resolve_rank


def _data(*shape, seed=0, dtype=torch.float64, signed=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype)
    return x if signed else x.relu()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_parts_registered():
    assert {"nmf", "semi_nmf", "weak_nmf"} <= set(list_parts("solver"))
    assert {"uniform", "random", "online", "learned", "svd", "nndsvd"} <= set(list_parts("init"))
    assert {"mu", "hals"} <= set(list_parts("update"))


@pytest.mark.parametrize("spec", ["nmf(rank=1, fast=false)", "nmf(rank=1)", "nmf(rank=1, update=hals)"])
def test_rank1_is_leading_singular_pair(spec):
    x = _data(4, 7, 30) + 0.1  # positive: the leading singular vectors are positive (Perron)
    layer = build_solver(spec, iters=200).eval()
    u, s, vh = torch.linalg.svd(x)
    best = s[:, :1, None] * u[..., :1] @ vh[:, :1]
    torch.testing.assert_close(layer(x), best, rtol=1e-8, atol=1e-8)


def test_rank1_factors_are_singular_vectors():
    x = _data(3, 6, 20) + 0.1
    layer = build_solver("nmf(rank=1, iters=300, return_factors=true)").eval()
    _, (uf, vf) = layer(x)
    u, _, vh = torch.linalg.svd(x)
    cos_u = (uf[..., 0] * u[..., 0]).sum(-1).abs() / uf[..., 0].norm(dim=-1)
    cos_v = (vf[..., 0] * vh[:, 0]).sum(-1).abs() / vf[..., 0].norm(dim=-1)
    torch.testing.assert_close(cos_u, torch.ones(3, dtype=x.dtype))
    torch.testing.assert_close(cos_v, torch.ones(3, dtype=x.dtype))


def _objective(layer, x, iters):
    layer.eval_iters = iters
    return torch.linalg.matrix_norm(x - layer(x)).square()


@settings(max_examples=10)
@given(
    m=st.integers(2, 9),
    n=st.integers(2, 12),
    r=st.integers(1, 6),
    update=st.sampled_from(["mu", "hals"]),
    seed=st.integers(0, 2**16),
)
def test_objective_non_increasing(m, n, r, update, seed):
    x = _data(2, m, n, seed=seed)
    r = min(r, max(m, n))  # a larger int rank is refused (factors larger than X)
    layer = build_solver(f"nmf(rank={r}, update={update}, fast=false)").eval()
    objectives = torch.stack([_objective(layer, x, t) for t in range(1, 9)])
    slack = 1e-10 * objectives[0] + 1e-12
    assert bool((objectives[1:] <= objectives[:-1] + slack).all()), objectives


@pytest.mark.parametrize("family", ["semi_nmf", "semi_nmf(u_update=ls)", "weak_nmf(eta=0, lam=0)"])
def test_objective_non_increasing_other_families(family):
    x = _data(3, 6, 15, seed=1, signed=family == "semi_nmf")
    layer = build_solver(family, rank=3).eval()
    objectives = torch.stack([_objective(layer, x, t) for t in range(1, 12)])
    assert bool((objectives[1:] <= objectives[:-1] * (1 + 1e-10) + 1e-12).all()), objectives


def test_hals_matches_sklearn_cd():
    sklearn = pytest.importorskip("sklearn.decomposition")
    from sklearn.datasets import load_digits

    data = torch.from_numpy(load_digits().data[:300].T.copy())  # (64 pixels, 300 images) >= 0
    rank = 10
    reference = sklearn.NMF(rank, solver="cd", init="nndsvda", max_iter=400, tol=1e-6, random_state=0)
    w = reference.fit_transform(data.numpy())
    ref_err = _rel(torch.from_numpy(w @ reference.components_), data)
    layer = build_solver(f"nmf(rank={rank}, update=hals, init=nndsvd, iters=150)").eval()
    ours = _rel(layer(data), data)
    assert ours <= 1.01 * ref_err, (ours, ref_err)


# ------------------------------------------------------------------ rank-1 fast path vs the loop
@pytest.mark.parametrize("grad_steps", [None, 1, 2, 4])
@pytest.mark.parametrize("shape", [(3, 6, 20), (2, 1, 5), (2, 4, 4)])
def test_rank1_fast_path_equals_autograd_loop(grad_steps, shape):
    # positive data: at an all-zero row MU's autograd derivative is 0 (a dead entry) while the
    # power iteration's is the limit of finite differences; away from it they agree
    x = (_data(*shape, seed=3) + 0.01).requires_grad_()
    weight = _data(*shape, seed=4, signed=True)
    mask = torch.ones(shape[0], shape[2], dtype=torch.bool)
    mask[0, -2:] = False
    outs = []
    for fast in (True, False):
        layer = build_solver("nmf", rank=1, iters=4, grad_steps=grad_steps, fast=fast)
        y = layer(x, mask)
        (g,) = torch.autograd.grad((y * weight).sum(), x)
        outs.append((y, g))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-8, atol=1e-10)


def test_rank1_fast_path_learned_init_gradient():
    x = _data(2, 5, 12, seed=5)
    grads = []
    for fast in (True, False):
        layer = build_solver("nmf(rank=1, iters=3, init=learned(dim=5))", fast=fast).double()
        layer(x).pow(2).sum().backward()
        grads.append(layer.init.weight.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


# ---------------------------------------------------------------------------- gradient modes
LAYERS = [
    "nmf(rank=1)",
    "nmf(rank=2, update=mu)",
    "nmf(rank=3, update=hals)",
    "semi_nmf(rank=2)",
    "semi_nmf(rank=2, u_update=ls)",
    "weak_nmf(rank=2)",
]


def _truncated_reference(layer, x0, k):
    """The function a ``grad_steps=k`` layer differentiates at ``x0``, from the public hooks."""
    iters, eps = layer.iters, torch.finfo(x0.dtype).eps
    rank = layer.resolve_rank(*x0.shape[-2:])
    with torch.no_grad():
        s0 = x0.abs().amax((-2, -1), keepdim=True)
        xn0 = x0 / s0
        state = layer.initial_state(xn0, layer.initial_u(xn0, rank), None, eps)
        for _ in range(iters - k):
            state = layer.step(xn0, state, None, eps)

    def f(x):
        # homogeneous families treat s as a constant: freeze it at x0
        s = s0 if layer.homogeneous else x.abs().amax((-2, -1), keepdim=True)
        st_ = state
        for _ in range(k):
            st_ = layer.step(x / s, st_, None, eps)
        return layer.reconstruct(st_) * s

    return f


@pytest.mark.parametrize("spec", LAYERS)
@pytest.mark.parametrize("grad_steps", [None, 1, 2])
def test_gradcheck_every_layer_and_mode(spec, grad_steps):
    signed = spec.startswith("semi")
    x = _data(2, 4, 7, seed=7, signed=signed).requires_grad_()
    if not signed:
        x = (x.detach() + 0.05).requires_grad_()
    layer = build_solver(spec, iters=3, grad_steps=grad_steps)
    if grad_steps is None:
        assert torch.autograd.gradcheck(layer, (x,), fast_mode=True)
        return
    reference = _truncated_reference(layer, x.detach(), grad_steps)
    assert torch.autograd.gradcheck(reference, (x,), fast_mode=True)
    weight = _data(2, 4, 7, seed=8, signed=True)
    (g_layer,) = torch.autograd.grad((layer(x) * weight).sum(), x)
    (g_ref,) = torch.autograd.grad((reference(x) * weight).sum(), x)
    torch.testing.assert_close(g_layer, g_ref)


def test_one_step_gradient_differs_from_full_and_is_cheaper_graph():
    x = _data(2, 6, 30, seed=9).requires_grad_()
    full = build_solver("nmf(rank=3, iters=6)")(x).sum()
    one = build_solver("nmf(rank=3, iters=6, grad_steps=1)")(x).sum()
    torch.testing.assert_close(full, one)  # same forward
    g_full, g_one = (torch.autograd.grad(y, x)[0] for y in (full, one))
    assert not torch.allclose(g_full, g_one)


def test_eval_iters_is_used_in_eval():
    x = _data(2, 5, 9, seed=10)
    layer = build_solver("nmf(rank=2, iters=5, eval_iters=2)")
    short = build_solver("nmf(rank=2, iters=2)")
    assert not torch.allclose(layer(x), short(x))
    torch.testing.assert_close(layer.eval()(x), short(x))


# -------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize(
    "spec",
    ["nmf(rank=1)", "nmf(rank=2, update=hals)", "nmf(rank=2, init=nndsvd)", "semi_nmf(rank=2)", "weak_nmf"],
)
def test_masked_columns_do_not_change_the_valid_part(spec):
    x = _data(2, 5, 12, seed=11, signed=spec.startswith("semi"))
    garbage = x.clone()
    garbage[0, :, 8:] = 1e3
    garbage[1, :, 10:] = 7.0
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 8:] = False
    mask[1, 10:] = False
    layer = build_solver(spec)
    out = layer(garbage, mask)
    torch.testing.assert_close(out[0, :, :8], layer(x[0:1, :, :8])[0])
    torch.testing.assert_close(out[1, :, :10], layer(x[1:2, :, :10])[0])
    assert out[0, :, 8:].abs().max() == 0


def test_bad_mask_is_rejected():
    with pytest.raises(ValueError, match="mask"):
        build_solver("nmf")(torch.rand(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))


# -------------------------------------------------------------------------------------- inits
def test_uniform_init_is_a_fixed_buffer_in_state_dict():
    x = _data(2, 5, 9, dtype=torch.float32)
    a, b = build_solver("nmf(rank=2, init=uniform)"), build_solver("nmf(rank=2, init=uniform)")
    torch.testing.assert_close(a(x), b(x))
    assert a.state_dict()["init.weight"].shape == (5, 2)
    c = build_solver("nmf(rank=2, init=uniform(seed=3))")
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(c(x), a(x))
    assert not torch.allclose(build_solver("nmf(rank=2, init=uniform(seed=3))")(x), a(x))
    with pytest.raises(ValueError, match="M=6"):
        a(_data(2, 6, 9, dtype=torch.float32))


def test_random_init_never_touches_global_rng():
    x = _data(2, 5, 9, dtype=torch.float32)
    layer = build_solver("nmf(rank=2, init=random)")
    state = torch.get_rng_state()
    first, second = layer(x), layer(x)
    assert torch.equal(state, torch.get_rng_state())
    assert not torch.allclose(first, second)
    torch.testing.assert_close(build_solver("nmf(rank=2, init=random)")(x), first)


def test_online_init_updates_only_in_training_and_loads():
    x = _data(4, 5, 9, dtype=torch.float32)
    layer = build_solver("nmf(rank=2, init=online(momentum=0.5))")
    layer.eval()(x)
    before = layer.init.weight.clone()
    layer.eval()(x)
    assert torch.equal(before, layer.init.weight)
    layer.train()(x)
    assert not torch.equal(before, layer.init.weight)
    torch.testing.assert_close(layer.init.weight.norm(dim=0), torch.ones(2))
    fresh = build_solver("nmf(rank=2, init=online(momentum=0.5))")
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh.eval()(x), layer.eval()(x))
    copy.deepcopy(fresh)


def test_learned_init_receives_gradient_and_checks_grad_steps():
    layer = build_solver("nmf(rank=2, iters=3, init=learned(dim=5))")
    assert [n for n, _ in layer.named_parameters()] == ["init.weight"]
    layer(_data(2, 5, 9, dtype=torch.float32)).square().sum().backward()
    assert layer.init.weight.grad is not None and layer.init.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="grad_steps"):
        build_solver("nmf(rank=2, iters=3, grad_steps=1, init=learned)")


@pytest.mark.parametrize("init", ["svd", "nndsvd"])
def test_svd_inits_are_batched(init):
    x = _data(2, 3, 6, 10, seed=12)
    layer = build_solver(f"nmf(rank=3, init={init}, iters=1)")
    u0 = layer.init(x, 3)
    assert u0.shape == (2, 3, 6, 3)
    single = layer.init(x[1, 2], 3)
    torch.testing.assert_close(u0[1, 2], single)
    if init == "nndsvd":
        assert bool((u0 >= 0).all())
    u, s, _ = torch.linalg.svd(x[1, 2])
    if init == "svd":
        torch.testing.assert_close(u0[1, 2, :, 0].abs(), (u[:, 0] * s[0].sqrt()).abs())
    # rank above min(M, N) is padded
    assert layer.init(x[..., :2], 4).shape == (2, 3, 6, 4)


# ----------------------------------------------------------------------- options and errors
def test_float_rank_is_a_compression_ratio():
    assert resolve_rank(2.0, 8, 24) == 3
    layer = build_solver("nmf(rank=2.0, return_factors=true)")
    _, (u, v) = layer(_data(2, 8, 24))
    assert u.shape == (2, 8, 3) and v.shape == (2, 24, 3)


def test_store_and_return_factors():
    x = _data(2, 5, 9).requires_grad_()
    layer = build_solver("nmf(rank=2)")
    layer.store_factors = True
    out = layer(x)
    u, v = layer.factors
    assert u.shape == (2, 5, 2) and v.shape == (2, 9, 2) and not u.requires_grad
    torch.testing.assert_close(u @ v.mT, out.detach())
    out2, (u2, v2) = build_solver("nmf(rank=2, return_factors=true)")(x)
    assert u2.requires_grad and v2.requires_grad
    torch.testing.assert_close(out2, out)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nmf(rank=0)", "rank"),
        ("nmf(iters=0)", "iters"),
        ("nmf(grad_steps=0)", "grad_steps"),
        ("nmf(eps=-1.0)", "eps"),
        ("weak_nmf(eta=2.0)", "eta"),
        ("nmf(init=online(momentum=1.0))", "momentum"),
    ],
)
def test_bad_arguments_raise_at_build(spec, match):
    with pytest.raises(ValueError, match=match):
        build_solver(spec)


def test_unknown_update_suggests():
    with pytest.raises(SpecError, match="hals"):
        build_solver("nmf(update=hal)")


def test_input_checks():
    with pytest.raises(ValueError, match="matrices"):
        build_solver("nmf")(torch.rand(5))
    with pytest.raises(TypeError, match="floating"):
        build_solver("nmf")(torch.ones(2, 3, 4, dtype=torch.int64))


def test_leading_batch_dims_and_dtype_roundtrip():
    x = _data(2, 3, 5, 9, dtype=torch.float32)
    for spec in ("nmf(rank=1)", "nmf(rank=2, update=hals)", "semi_nmf(rank=2)"):
        y = build_solver(spec)(x)
        assert y.shape == x.shape and y.dtype == x.dtype
    y = build_solver("nmf(rank=2)")(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
