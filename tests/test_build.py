"""Registry and build API: did-you-mean, spec forms, overrides, keyword and type validation."""

from __future__ import annotations

import copy
from typing import Literal

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lowrank
from lowrank import Spec, SpecError, SpecKeywordError, build_conv, get_part, list_parts, register
from lowrank import registry as registry_module
from lowrank.build import KIND_CONTEXT, ConvSpec, LayerSpec, build, validate


@pytest.fixture
def scratch_registry(monkeypatch):
    """Register test parts in a copy of the registry, restored afterwards."""
    monkeypatch.setattr(registry_module, "_REGISTRY", copy.copy(registry_module._REGISTRY))
    monkeypatch.setattr(registry_module, "_ALIASES", copy.copy(registry_module._ALIASES))
    for kind in registry_module.KINDS:
        registry_module._REGISTRY[kind] = dict(registry_module._REGISTRY[kind])
        registry_module._ALIASES[kind] = dict(registry_module._ALIASES[kind])

    @register("block", "toy_block", aliases=("toy",))
    class ToyBlock(nn.Module):
        """A toy block for the build tests."""

        def __init__(
            self,
            channels: int,
            *,
            spatial_dims: int = 3,
            conv: ConvSpec = "dense",
            norm: LayerSpec = "instance",
            mode: Literal["add", "mul"] = "add",
            scale: float = 1.0,
            sizes: int | list[int] = 2,
            kernel: tuple[int, ...] = (3,),
        ):
            super().__init__()
            self.conv = build_conv(conv, channels, channels, 1, spatial_dims=spatial_dims)
            self.norm, self.mode, self.scale, self.sizes, self.kernel = norm, mode, scale, sizes, kernel

        def forward(self, x):
            return x + self.conv(x)

    return ToyBlock


def test_list_and_get(scratch_registry):
    assert "toy_block" in list_parts("block")
    assert list_parts("block", "toy*") == ["toy_block"]
    assert "block:toy_block" in list_parts()
    assert get_part("block", "toy") is scratch_registry
    assert list_parts("conv") == sorted(list_parts("conv"))


def test_unknown_part_did_you_mean():
    with pytest.raises(ValueError, match=r"did you mean 'dense'\?.*valid conv names: .*dense"):
        get_part("conv", "dens")
    with pytest.raises(ValueError, match="unknown kind 'blocks'; did you mean 'block'"):
        list_parts("blocks")


def test_duplicate_registration_raises(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        register("block", "toy_block")(type("Other", (nn.Module,), {}))
    with pytest.raises(ValueError, match="already registered"):
        register("block", "other", aliases=("toy",))(type("Other", (nn.Module,), {}))
    with pytest.raises(ValueError, match="must match"):
        register("block", "Bad-Name")(type("Other", (nn.Module,), {}))


def test_spec_forms_build_the_same(scratch_registry):
    forms = [
        "toy_block(mode=mul, scale=2)",
        Spec("toy_block", {"mode": "mul", "scale": 2}),
        ("toy_block", {"mode": "mul", "scale": 2}),
        ["toy_block", {"mode": "mul", "scale": 2}],
        {"name": "toy_block", "mode": "mul", "scale": 2},
    ]
    for form in forms:
        block = lowrank.build_block(form, 4, spatial_dims=2)
        assert (block.mode, block.scale, type(block.scale)) == ("mul", 2.0, float)
        rebuilt = lowrank.build_block(str(block.spec), 4, spatial_dims=2)
        assert (rebuilt.mode, rebuilt.scale) == ("mul", 2.0)
    # a class is called with the context; a module instance passes through
    assert isinstance(lowrank.build_block(scratch_registry, 4, spatial_dims=1), scratch_registry)
    module = nn.Identity()
    assert lowrank.build_block(module, 4) is module


def test_overrides_win_and_none_is_dropped(scratch_registry):
    block = lowrank.build_block("toy_block(mode=mul, scale=2)", 4, scale=3, mode=None)
    assert (block.mode, block.scale) == ("mul", 3.0)


def test_unknown_keyword_names_accepted_and_closest(scratch_registry):
    with pytest.raises(SpecKeywordError) as info:
        lowrank.build_block("toy_block(scal=2)", 4)
    message = str(info.value)
    assert "did you mean 'scale'?" in message and "accepted: conv, norm, mode, scale" in message
    assert message.splitlines()[-1] == "  " + " " * len("toy_block(") + "^"
    assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError, match="scal"):
        lowrank.build_block("toy_block", 4, scal=2)


def test_values_are_checked_against_type_hints(scratch_registry):
    cases = {
        "toy_block(mode=sub)": "expects one of 'add', 'mul'",
        "toy_block(scale=fast)": "expects a number",
        "toy_block(sizes=[1, 2.5])": "expects int | list",
        "toy_block(conv=cp(rank=2))": "unknown conv 'cp'",
        "toy_block(conv=dense(strid=2))": "no keyword 'strid'; did you mean 'stride'",
        "toy_block(kernel=3)": "expects tuple",
        "toy_block(norm=instnce)": "did you mean 'instance'",
        "toy_block(norm=grop(num_groups=2))": "did you mean 'group'",
    }
    for text, fragment in cases.items():
        with pytest.raises(SpecError, match=fragment):
            lowrank.build_block(text, 4)


def test_nested_names_resolve_by_parameter_kind(scratch_registry):
    block = lowrank.build_block(
        "toy_block(conv=dense(bias=false), norm=group(num_groups=2), kernel=[3, 1])", 4
    )
    assert block.conv.conv.bias is None
    assert block.norm == ("group", {"num_groups": 2})  # MONAI (name, kwargs) form
    assert block.kernel == (3, 1)
    assert lowrank.build_block("toy_block(norm=batch)", 4).norm == "batch"


def test_context_conflict_and_recorded_spec(scratch_registry):
    with pytest.raises(SpecError, match="contradicts channels=4"):
        lowrank.build_block("toy_block(channels=8)", 4)
    block = lowrank.build_block("toy_block(channels=4, scale=2)", 4)
    assert "channels" not in block.spec.kwargs  # context is left out of the spec
    assert "spec=toy_block(scale=2)" in repr(block)
    assert "spec=dense(bias=false)" in repr(lowrank.build_block("toy_block(conv=dense(bias=false))", 4))


def test_validate_returns_coerced_spec(scratch_registry):
    checked = validate("block", lowrank.parse_spec("toy_block(scale=1, sizes=[1, 2])"))
    assert checked.kwargs == {"scale": 1.0, "sizes": [1, 2]}


def test_build_conv_matches_torch_conv():
    conv = build_conv("dense", 3, 5, 3, spatial_dims=2, stride=2, padding=1)
    reference = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    reference.load_state_dict(conv.conv.state_dict())
    x = torch.randn(2, 3, 9, 7)
    torch.testing.assert_close(conv(x), reference(x))
    assert "stride" in KIND_CONTEXT["conv"] and "stride" not in conv.spec.kwargs


def test_bad_spec_forms():
    with pytest.raises(SpecError, match="needs a 'name'"):
        build("conv", {"rank": 2})
    with pytest.raises(SpecError, match=r"\(name, \{kwargs\}\)"):
        build("conv", (1, 2))
    with pytest.raises(SpecError, match="cannot read a spec"):
        build("conv", 3.5)


_REAL_SPECS = {
    "block": "factorizer(mixer=nmf(rank=1, update=hals, iters=5), matricize=swin(patch=8, head_dim=8))",
    "net": "swin_factorizer(channels=[32, 64, 128, 256, 512], head_dim=8, patch=8, mlp_ratio=2)",
    "conv": "dense(stride=2, padding=1, bias=false)",
}


def _near_misses(text: str):
    alphabet = "abcdefghijklmnopqrstuvwxyz_0123456789()[],=.-' "
    return st.one_of(
        st.integers(0, len(text) - 1).map(lambda i: text[:i] + text[i + 1 :]),
        st.tuples(st.integers(0, len(text)), st.sampled_from(alphabet)).map(
            lambda p: text[: p[0]] + p[1] + text[p[0] :]
        ),
        st.tuples(st.integers(0, len(text) - 1), st.sampled_from(alphabet)).map(
            lambda p: text[: p[0]] + p[1] + text[p[0] + 1 :]
        ),
    )


@given(
    st.sampled_from(sorted(_REAL_SPECS.items())).flatmap(
        lambda kv: st.tuples(st.just(kv[0]), _near_misses(kv[1]))
    )
)
@settings(max_examples=1000)
def test_fuzz_validation_raises_only_spec_errors(case):
    """Near misses of real specs, checked against the real registry: SpecError or valid."""
    kind, text = case
    try:
        validate(kind, lowrank.parse_spec(text))
    except SpecError as err:
        assert str(err).splitlines()[-1].strip() == "^"
