"""Reliability at build time: every bad spec gets a SpecError with a caret under the problem.

A table of hand-written mistakes (nested parts, numeric ranges, nesting depth, constructor
checks) and a fuzzer of nested specs with extreme numbers, checked against the real registry:
the only acceptable outcomes are a built part or lowrank's own :class:`SpecError` whose caret
points into the text, never a foreign exception.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowrank import SpecError, build_block, build_net, build_solver, parse_spec
from lowrank.build import build
from lowrank.solvers._numerics import hash_uniform, resolve_rank
from lowrank.spec import MAX_DEPTH, Spec


def _build(kind: str, text: str):
    with torch.device("meta"):  # nothing is allocated: a huge size costs nothing
        if kind == "solver":
            return build_solver(text)
        if kind == "block":
            return build_block(text, 16)
        return build_net(text, 1, 2)


# (kind, spec, message fragment, the text the caret must point at)
BAD_SPECS = [
    ("solver", "nmf(update=hals(foo=1))", "hals() has no keyword 'foo'", "foo=1"),
    ("solver", "nmf(update=hals(eps=1))", "hals() takes no arguments", "eps=1"),
    ("solver", "nmf(update=mu(foo=1))", "mu() has no keyword 'foo'", "foo=1"),
    ("solver", "nmf(update=hals(iter=1))", "has no keyword 'iter'", "iter=1"),
    ("solver", "nmf(rank=0)", "rank must be > 0", "0)"),
    ("solver", "vq(rank=0)", "rank must be >= 1", "0)"),
    ("solver", "nmf(rank=-0.5)", "rank must be > 0", "-0.5"),
    ("solver", "nmf(eps=0)", "eps must be > 0", "0)"),
    ("solver", "nmf(eps=-1e-3)", "eps must be > 0", "-1e-3"),
    ("solver", "nmf(iters=0)", "iters must be >= 1", "0)"),
    ("solver", "nmf(init=uniform(seed=100000000000000000000))", "seed must be", "100000"),
    ("solver", "nmf(init=online(momentum=2))", "momentum must be", "2))"),
    ("solver", "vq(temperature=1e-45)", "temperature must be >= 1e-06", "1e-45"),
    ("solver", "cd(temperature=1e-45)", "temperature must be >= 1e-06", "1e-45"),
    ("solver", "ham_nmf(temperature=1e-45)", "temperature must be >= 1e-06", "1e-45"),
    ("solver", "cd(beta=0)", "beta must be > 0", "0)"),
    ("block", "factorizer(norm=layer(eps=-1))", "eps must be > 0", "-1))"),
    ("block", "factorizer(norm=layer(epsilon=1e-5))", "did you mean 'eps'", "epsilon"),
    ("block", "double_conv(norm=group(num_groups=0))", "num_groups must be >= 1", "0))"),
    ("block", "double_conv(norm=group(group_size=0))", "group_size must be >= 1", "0))"),
    ("block", "double_conv(kernel_size=0)", "kernel_size must be >= 1", "0)"),
    ("block", "double_conv(kernel_size=[3, 0, 3])", "kernel_size must be >= 1", "[3, 0, 3]"),
    ("block", "factorizer(dropout=1.5)", "dropout must be", "1.5"),
    ("block", "factorizer(matricize=swin(patch=0))", "patch must be >= 1", "0))"),
    ("block", "factorizer(matricize=swin(head_dim=5))", "head_dim=5", "head_dim=5"),
    ("block", "factorizer(mixer=nmf(update=hals(foo=1)))", "hals() has no keyword", "foo=1"),
    ("net", "swin_factorizer(pos_embed_size=0)", "pos_embed_size must be >= 1", "0)"),
    ("net", "swin_factorizer(channels=[8, 0])", "channels must be >= 1", "[8, 0]"),
]


@pytest.mark.parametrize(("kind", "text", "fragment", "at"), BAD_SPECS, ids=[c[1] for c in BAD_SPECS])
def test_bad_spec_is_a_spec_error_with_a_caret(kind, text, fragment, at):
    with pytest.raises(SpecError) as info:
        _build(kind, text)
    err = info.value
    assert fragment in err.message, err.message
    assert err.text == text
    assert text.index(at) == err.column, str(err)
    assert str(err).splitlines()[-1] == "  " + " " * err.column + "^"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 5000])
def test_deep_nesting_is_a_spec_error(depth):
    for text in (
        "nmf(init=" * depth + "uniform" + ")" * depth,
        "nmf(rank=" + "[" * depth + "]" * depth + ")",
    ):
        with pytest.raises(SpecError, match="nests deeper than"):
            parse_spec(text)
    spec = Spec("uniform")
    for _ in range(depth):  # built in Python, not parsed
        spec = Spec("nmf", {"init": spec})
    with pytest.raises(SpecError, match="nests deeper than"):
        build_solver(spec)


def test_reasonable_nesting_still_parses():
    text = "nmf(rank=" + "[" * (MAX_DEPTH - 2) + "1" + "]" * (MAX_DEPTH - 2) + ")"
    assert parse_spec(text).name == "nmf"


def test_float_rank_is_capped_at_the_full_rank():
    assert resolve_rank(1e-6, 8, 64) == 8
    assert resolve_rank(1e-300, 8, 64) == 8  # was an OverflowError
    assert resolve_rank(2.0, 8, 64) == 3  # unchanged where below the cap
    layer = build_solver("nmf(rank=1e-6, iters=3)")
    x = torch.rand(2, 8, 64)
    out = layer(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_int_rank_larger_than_the_matrix_is_refused_with_the_fix():
    layer = build_solver("nmf(rank=1000000000)")
    with pytest.raises(ValueError, match=r"rank=1000000000 is larger than the \(8 × 64\).*rank <= 8"):
        layer(torch.rand(2, 8, 64))


def test_any_int64_seed_draws_and_keeps_the_old_values():
    reference = hash_uniform((3, 4), seed=7)
    assert torch.equal(hash_uniform((3, 4), seed=7 + 2**40 * 0), reference)
    for seed in (2**63 - 1, -(2**63), 10**20):  # 10**20 was an OverflowError
        assert torch.isfinite(hash_uniform((3, 4), seed=seed)).all()
    layer = build_solver(f"nmf(rank=2, init=uniform(seed={2**63 - 1}))")
    assert torch.isfinite(layer(torch.rand(1, 4, 6))).all()


def test_constructor_errors_carry_the_spec_and_caret():
    text = "factorizer(mixer=nmf(rank=1), matricize=global(head_dim=3))"
    with pytest.raises(SpecError) as info:
        build_block(text, 16)
    assert "not divisible by head_dim=3" in info.value.message
    assert info.value.text == text and info.value.column == text.index("head_dim=3")


def test_layer_kwargs_that_exist_still_build():
    block = build_block("factorizer(norm=layer(eps=1e-6), act=leakyrelu(negative_slope=0.2))", 16)
    assert block(torch.randn(1, 16, 4, 4, 4)).shape == (1, 16, 4, 4, 4)
    build_block("double_conv(norm=group(num_groups=4, eps=1e-3), act=prelu(num_parameters=1))", 16)


# -------------------------------------------------------------------- fuzzing nested specs
_EXTREMES = [0, -1, 1, 2, 3, 0.5, -0.5, 1e-300, 1e-45, 1e300, 10**20, -(10**20), 2**63, True, None]
_KEYS = [
    "rank",
    "iters",
    "eps",
    "seed",
    "temperature",
    "momentum",
    "beta",
    "eta",
    "lam",
    "dim",
    "patch",
    "head_dim",
    "heads",
    "kernel_size",
    "num_groups",
    "group_size",
    "dropout",
    "mlp_ratio",
    "foo",
]


def _inner():
    init = st.builds(
        lambda name, kw: Spec(name, kw),
        st.sampled_from(["uniform", "online", "random", "seeded", "learned", "svd"]),
        st.dictionaries(
            st.sampled_from(["seed", "momentum", "dim", "foo", "rank"]),
            st.sampled_from(_EXTREMES),
            max_size=2,
        ),
    )
    update = st.builds(
        lambda name, kw: Spec(name, kw),
        st.sampled_from(["mu", "hals"]),
        st.dictionaries(st.sampled_from(["eps", "foo"]), st.sampled_from(_EXTREMES), max_size=1),
    )
    return init, update


def _solver():
    init, update = _inner()
    values = st.one_of(st.sampled_from(_EXTREMES))
    return st.builds(
        lambda name, kw, i, u: Spec(
            name,
            {
                **kw,
                **({"init": i} if i else {}),
                **({"update": u} if u and name in ("nmf", "ham_nmf") else {}),
            },
        ),
        st.sampled_from(["nmf", "ham_nmf", "vq", "cd", "semi_nmf", "weak_nmf"]),
        st.dictionaries(st.sampled_from(_KEYS), values, max_size=3),
        st.one_of(st.none(), init),
        st.one_of(st.none(), update),
    )


def _block():
    norms = st.builds(
        lambda name, kw: Spec(name, kw),
        st.sampled_from(["layer", "group", "instance", "batch"]),
        st.dictionaries(
            st.sampled_from(["eps", "num_groups", "group_size", "momentum", "affine", "foo"]),
            st.sampled_from(_EXTREMES),
            max_size=2,
        ),
    )
    matricize = st.builds(
        lambda name, kw: Spec(name, kw),
        st.sampled_from(["swin", "local", "global"]),
        st.dictionaries(
            st.sampled_from(["patch", "head_dim", "heads", "foo"]), st.sampled_from(_EXTREMES), max_size=2
        ),
    )
    return st.builds(
        lambda mixer, m, n, kw: Spec("factorizer", {"mixer": mixer, "matricize": m, "norm": n, **kw}),
        _solver(),
        matricize,
        norms,
        st.dictionaries(
            st.sampled_from(["mlp_ratio", "dropout", "inner_ratio"]), st.sampled_from(_EXTREMES), max_size=1
        ),
    )


@given(st.one_of(_solver().map(lambda s: ("solver", s)), _block().map(lambda s: ("block", s))))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_nested_specs_build_or_raise_spec_errors(case):
    """Nested specs with extreme numbers: a built part, or a SpecError with a caret; nothing else."""
    kind, spec = case
    text = str(spec)
    try:
        with torch.device("meta"):
            build(kind, text, **({"channels": 16, "spatial_dims": 3} if kind == "block" else {}))
    except SpecError as err:
        assert err.text == text, str(err)
        assert str(err).splitlines()[-1].strip() == "^"


# -------------------------------------------------------------- fuzzing the declared ranges
def _ranged_parameters() -> list[tuple[str, str, str, object]]:
    """(kind, part, parameter, Range) for every registered part parameter that has a range."""
    from lowrank import list_parts
    from lowrank.hints import _declares_range, range_of
    from lowrank.registry import get_part_info
    from lowrank.validate import signature_of as _signature

    out = []
    for entry in list_parts():
        kind, name = entry.split(":")
        if kind in ("conv", "update"):
            continue
        signature, hints = _signature(get_part_info(kind, name).obj)
        for key, param in signature.parameters.items():
            hint = hints.get(key, param.annotation)
            bounds = range_of(key, hint)
            if bounds is not None and not _declares_range(hint):
                out.append((kind, name, key, bounds))
    return out


_RANGED = _ranged_parameters()


@given(
    case=st.sampled_from(_RANGED),
    number=st.one_of(
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([0, -1, 1e-300, 1e-7, 1e300, 2**63, -(2**63) - 1]),
    ),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_numbers_outside_a_parameter_range_are_refused(case, number):
    """A number outside the parameter's range is a SpecError naming it, never a built part."""
    kind, name, key, bounds = case
    text = f"{name}({key}={number!r})"
    context = {
        "solver": {},
        "init": None,
        "matricize": {"channels": 16, "spatial_dims": 3},
        "block": {"channels": 16, "spatial_dims": 3},
        "net": {"in_channels": 1, "out_channels": 2, "spatial_dims": 3},
    }[kind]
    if context is None:  # an init: inside a solver
        kind, text, context = "solver", f"nmf(init={text})", {}
    try:
        with torch.device("meta"):
            build(kind, text, **context)
    except SpecError as err:
        assert err.text == text
        if not bounds.contains(number):
            assert f"{key} must be" in err.message or "expects" in err.message, err.message
        return
    except TypeError:  # the number's type does not fit (an int parameter given a float)
        return
    assert bounds.contains(number), f"{text} was built although {key} must be {bounds.describe()}"


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: build_block("factorizer", 0), "channels must be an int >= 1, got 0"),
        (lambda: build_block("factorizer", 16.5), "channels must be an int >= 1, got 16.5"),
        (lambda: build_block("factorizer", True), "channels must be an int >= 1, got True"),
        (lambda: build_block("factorizer", 16, spatial_dims=4), "spatial_dims must be 1, 2 or 3, got 4"),
        (lambda: build_net("unet", 1, 0), "out_channels must be an int >= 1, got 0"),
    ],
)
def test_caller_arguments_are_checked(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call()
