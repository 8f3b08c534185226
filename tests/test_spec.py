"""The spec grammar: round trip, value forms, error messages with carets, fuzzing."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank import Spec, SpecError, parse_spec
from lowrank.spec import format_value

names = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True).filter(
    lambda s: s not in ("true", "false", "none")
)
scalars = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.booleans(),
    st.none(),
    st.text(alphabet=string.printable, max_size=12),
)


def _values(children):
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.builds(Spec, names, st.dictionaries(names, children, max_size=4)),
    )


values = st.recursive(scalars, _values, max_leaves=12)
specs = st.builds(Spec, names, st.dictionaries(names, values, max_size=5))


@given(specs)
@settings(max_examples=300)
def test_round_trip(spec):
    text = str(spec)
    parsed = parse_spec(text)
    assert parsed == spec
    assert str(parsed) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nmf", Spec("nmf")),
        ("nmf()", Spec("nmf")),
        ("nmf(rank=1,)", Spec("nmf", {"rank": 1})),
        ("a(eps=1e-6)", Spec("a", {"eps": 1e-6})),
        ("a(shift=-2)", Spec("a", {"shift": -2})),
        ("a(x=+3.5, y=.5, z=2., w=1E3)", Spec("a", {"x": 3.5, "y": 0.5, "z": 2.0, "w": 1000.0})),
        ("a(b=true, c=false, d=none)", Spec("a", {"b": True, "c": False, "d": None})),
        ("a(s='x', t=\"y z\")", Spec("a", {"s": "x", "t": "y z"})),
        ("a(k=(3, 3, 1), one=(3,), e=())", Spec("a", {"k": (3, 3, 1), "one": (3,), "e": ()})),
        ("a(l=[1, [2, 3], b(c=1)])", Spec("a", {"l": [1, [2, 3], Spec("b", {"c": 1})]})),
        ("  a ( b = c ( d = 1 ) )  ", Spec("a", {"b": Spec("c", {"d": 1})})),
    ],
)
def test_value_forms(text, expected):
    parsed = parse_spec(text)
    assert parsed == expected
    assert type(parsed.kwargs.get("rank", 0)) is int


def test_number_overflow_is_an_error():
    with pytest.raises(SpecError, match="out of the floating-point range"):
        parse_spec("a(x=1e999)")


def test_int_and_float_are_kept_apart():
    spec = parse_spec("a(i=1, f=1.0, e=1e0)")
    assert type(spec.kwargs["i"]) is int
    assert type(spec.kwargs["f"]) is float and type(spec.kwargs["e"]) is float
    assert str(spec) == "a(i=1, f=1.0, e=1.0)"


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("nmf(rank=1", 10, "expected ',' or ')'"),
        ("nmf(rank=1))", 11, "unbalanced"),
        ("nmf(1)", 4, "positional arguments are not accepted"),
        ("nmf(rank=1, 5)", 12, "positional"),
        ("nmf(rank=1, rank=2)", 12, "duplicate keyword 'rank'"),
        ("nmf(rank=1.2.3)", 9, "bad number '1.2.3'"),
        ("nmf(eps=1e)", 8, "bad number '1e'"),
        ("nmf(rank=-)", 9, "bad number"),
        ("NMF", 0, "did you mean 'nmf'"),
        ("nmf(Rank=1)", 4, "did you mean 'rank'"),
        ("nmf(rank=)", 9, "expected a value"),
        ("nmf(rank=1 iters=2)", 11, "expected ',' or ')'"),
        ("nmf(s='abc)", 6, "unterminated string"),
        ("nmf(k=(3))", 6, "trailing comma"),
        ("nmf(k=[1, 2)", 11, "expected ',' or ']'"),
        ("", 0, "empty spec"),
        ("nmf(a=true(x=1))", 6, "value keyword"),
        ("true", 0, "value keyword"),
        ("nmf(s='a\\qb')", 8, "bad escape"),
    ],
)
def test_errors_point_at_the_problem(text, column, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    err = info.value
    assert fragment in str(err)
    assert err.column == column
    lines = str(err).splitlines()
    assert lines[-2] == "  " + text
    assert lines[-1] == "  " + " " * column + "^"


def test_spec_rejects_bad_names_and_unformattable_values():
    with pytest.raises(SpecError):
        Spec("Bad")
    with pytest.raises(SpecError):
        Spec("ok", {"Bad": 1})
    with pytest.raises(ValueError, match="finite"):
        format_value(float("nan"))
    with pytest.raises(ValueError, match="cannot write"):
        format_value(object())


def test_replace_merges_and_drops_none():
    spec = parse_spec("nmf(rank=1, iters=5)")
    assert spec.replace(rank=2, iters=None) == Spec("nmf", {"rank": 2, "iters": 5})


def test_non_string_is_rejected():
    with pytest.raises(SpecError, match="must be a string"):
        parse_spec(3)  # type: ignore[arg-type]


# ---------------------------------------------------------------- fuzzing
_GRAMMAR_CHARS = "abcxyz_019()[],=.+-eE '\"\\ \t"


def _mutations(text: str):
    """Near-miss variants of a valid spec: drop, duplicate, swap or insert one character."""
    return st.one_of(
        st.integers(0, max(len(text) - 1, 0)).map(lambda i: text[:i] + text[i + 1 :]),
        st.integers(0, max(len(text) - 1, 0)).map(lambda i: text[: i + 1] + text[i:]),
        st.tuples(st.integers(0, len(text)), st.sampled_from(_GRAMMAR_CHARS)).map(
            lambda p: text[: p[0]] + p[1] + text[p[0] :]
        ),
        st.tuples(st.integers(0, max(len(text) - 2, 0))).map(
            lambda p: text[: p[0]] + text[p[0] + 1 : p[0] + 2] + text[p[0] : p[0] + 1] + text[p[0] + 2 :]
        ),
    )


_VALID = [
    "factorizer(mixer=nmf(rank=1, update=hals, iters=5), matricize=swin(patch=8, head_dim=8), mlp_ratio=2)",
    "hamburger(ham=nmf(rank=64, iters=6, eval_iters=7, grad_steps=1), dim=512, heads=1)",
    "hamburger(ham=cd(rank=64, temperature=0.01, beta=0.1, init=online(momentum=0.9)))",
    "swin_factorizer(channels=[32, 64, 128, 256, 512], deep_supervision=3)",
    "lowrank_resunet(conv=cp_conv(rank=0.5), channels=[30, 60, 120, 240])",
    "a(eps=1e-6, shift=-2, k=(3, 3, 1), one=(3,), s='x\\'y', t=\"q\", b=true, n=none)",
]
fuzz_inputs = st.one_of(
    st.text(alphabet=string.printable, max_size=40),
    st.text(alphabet=_GRAMMAR_CHARS, max_size=40),
    st.sampled_from(_VALID).flatmap(_mutations),
    st.sampled_from(_VALID).flatmap(_mutations).flatmap(_mutations),
)


def _check_only_spec_error(text: str) -> None:
    try:
        spec = parse_spec(text)
    except SpecError as err:
        lines = str(err).splitlines()
        assert lines[-1].strip() == "^", str(err)
        assert lines[-1].index("^") == 2 + err.column
    else:
        assert parse_spec(str(spec)) == spec


@given(fuzz_inputs)
@settings(max_examples=10_000)
def test_fuzz_only_spec_errors(text):
    _check_only_spec_error(text)
