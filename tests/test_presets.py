"""Presets (lowrank.preset): a part = a registered base part + default overrides.

A preset builds exactly its base with the overrides merged under the user's keywords, keeps the
base's validation (carets, "did you mean", nested specs) with its own name in the messages, and
is shown with its base and effective defaults by ``lowrank list`` / ``lowrank show`` and the docs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lowrank import SpecError, SpecKeywordError, build_block, build_net
from lowrank.nets import ConvUNet, LowRankResUNet, ResUNet, SwinFactorizer
from lowrank.preset import effective_defaults, preset_spec, register_preset
from lowrank.registry import _ALIASES, _REGISTRY, get_part_info, register

#: (preset spec, the same net written as its base's spec)
EQUIVALENT = [
    (
        "lowrank_resunet(channels=[4, 8])",
        "resunet(channels=[4, 8], conv=cp_conv(rank=0.5), first_level_conv=dense)",
    ),
    (
        "lowrank_resunet(channels=[4, 8], conv=tt_conv(rank=0.5))",
        "resunet(channels=[4, 8], conv=tt_conv(rank=0.5), first_level_conv=dense)",
    ),
    (
        "resunet(channels=[4, 8])",
        "conv_unet(channels=[4, 8], block=residual, stem=false, down=maxpool, up_kernel=3, norm=instance)",
    ),
    ("pre_unet(channels=[4, 8])", "conv_unet(channels=[4, 8], block=preact_residual)"),
    ("unet(channels=[4, 8], norm=batch)", "conv_unet(channels=[4, 8], norm=batch)"),
    (
        "local_factorizer(channels=[8, 16], head_dim=4, patch=4, pos_embed_size=8)",
        "factorizer_net(channels=[8, 16], head_dim=4, patch=4, pos_embed_size=8, matricize=local)",
    ),
    (
        "global_factorizer(channels=[8, 16], head_dim=4, pos_embed_size=8)",
        "factorizer_net(channels=[8, 16], head_dim=4, pos_embed_size=8, matricize=global)",
    ),
]


@pytest.mark.parametrize(("preset", "base"), EQUIVALENT)
def test_preset_builds_its_base_with_the_overrides(preset, base):
    torch.manual_seed(0)
    a = build_net(preset, 2, 3, spatial_dims=2).eval()
    torch.manual_seed(0)
    b = build_net(base, 2, 3, spatial_dims=2).eval()
    assert isinstance(a, type(b))  # the preset class subclasses its base
    assert str(a.spec) == preset  # the recorded spec names the preset, as written
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(1, 2, 16, 16)
    torch.testing.assert_close(a(x), b(x))
    rebuilt = build_net(str(a.spec), 2, 3, spatial_dims=2)  # a checkpoint's spec rebuilds it
    assert type(rebuilt) is type(a)


def test_user_keywords_win_over_preset_defaults_and_python_construction():
    net = LowRankResUNet(1, 2, channels=[4, 8], conv="dense", spatial_dims=2)
    assert not any("CP" in type(m).__name__ for m in net.modules())
    assert str(net.spec) == "lowrank_resunet(channels=[4, 8], conv=dense)"
    low = LowRankResUNet(1, 2, channels=[4, 8], spatial_dims=2)
    assert any("CP" in type(m).__name__ for m in low.modules())
    assert isinstance(low, ResUNet) and isinstance(low, ConvUNet)
    with pytest.raises(TypeError, match="sets block itself"):
        ResUNet(1, 2, block="double_conv")


def test_registry_entries_and_effective_defaults():
    info = get_part_info("net", "lowrank_res_unet")  # aliases resolve
    assert (info.name, info.base) == ("lowrank_resunet", "resunet")
    assert str(preset_spec(info)) == "resunet(conv=cp_conv(rank=0.5), first_level_conv=dense)"
    defaults = effective_defaults(info.obj, "net")
    assert str(defaults["conv"]) == "cp_conv(rank=0.5)" and defaults["channels"] == (60, 120, 240, 480, 960)
    assert "in_channels" not in defaults and "block" not in effective_defaults(ResUNet, "net")
    assert get_part_info("net", "swin_factorizer").fixed == {"matricize": "swin"}
    assert get_part_info("net", "resunet").base is None or get_part_info("net", "resunet").base == "conv_unet"
    assert get_part_info("net", "ham_segnet").base is None


def _caret(err: SpecError) -> str:
    """The part of the spec text from the caret on."""
    return err.text[err.column :]


#: (mistake on a preset, the same mistake on its base, error type, words the message must hold)
MISTAKES = [
    (
        "lowrank_resunet(chanels=[4, 8])",
        "resunet(chanels=[4, 8])",
        SpecKeywordError,
        ["did you mean 'channels'"],
    ),
    (
        "lowrank_resunet(conv=cp_conv(rnak=0.5))",
        "resunet(conv=cp_conv(rnak=0.5))",
        SpecKeywordError,
        ["cp_conv()", "'rank'"],
    ),
    ("lowrank_resunet(conv=cp_convv)", "resunet(conv=cp_convv)", SpecError, ["unknown conv", "'cp_conv'"]),
    ("lowrank_resunet(norm=batchh)", "resunet(norm=batchh)", SpecError, ["did you mean 'batch'"]),
    ("lowrank_resunet(dropout=1.5)", "resunet(dropout=1.5)", SpecError, ["must be >= 0 and < 1"]),
    ("lowrank_resunet(deep_supervision=0)", "resunet(deep_supervision=0)", SpecError, [">= 1"]),
    ("lowrank_resunet(channels=4)", "resunet(channels=4)", SpecError, ["expects"]),
    (
        "swin_factorizer(head_dmi=4)",
        "factorizer_net(head_dmi=4)",
        SpecKeywordError,
        ["did you mean 'head_dim'"],
    ),
    (
        "swin_factorizer(channels=[8, 16], head_dim=3, pos_embed_size=8)",
        "factorizer_net(channels=[8, 16], head_dim=3, pos_embed_size=8)",
        SpecError,
        ["head_dim", "divid"],
    ),
    ("swin_factorizer(update=hal)", "factorizer_net(update=hal)", SpecError, []),
    (
        "swin_factorizer(block=factorizer(mixer=nmf(rnak=1)))",
        "factorizer_net(block=factorizer(mixer=nmf(rnak=1)))",
        SpecKeywordError,
        ["nmf()", "'rank'"],
    ),
    (
        "unet(conv=dense, first_level_conv=cp_conv(rank=-1))",
        "conv_unet(conv=dense, first_level_conv=cp_conv(rank=-1))",
        SpecError,
        ["rank"],
    ),
]


@pytest.mark.parametrize(("preset", "base", "error", "words"), MISTAKES)
def test_preset_errors_are_the_base_errors_under_the_preset_name(preset, base, error, words):
    with pytest.raises(error) as on_preset:
        build_net(preset, 4, 4, spatial_dims=2)
    with pytest.raises(error) as on_base:
        build_net(base, 4, 4, spatial_dims=2)
    p, b = on_preset.value, on_base.value
    assert type(p) is type(b)
    assert p.text == preset and _caret(p) == _caret(b)  # the caret under the same keyword/value
    preset_name, base_name = preset.split("(")[0], base.split("(")[0]
    # the same message (a preset's accepted keywords are its base's less the fixed ones)
    same = p.message.replace(preset_name, base_name).split(" accepted:")[0]
    assert same == b.message.split(" accepted:")[0]
    for word in words:
        assert word in p.message


@pytest.mark.parametrize(
    ("spec", "key", "base"),
    [
        ("unet(block=residual)", "block", "conv_unet"),
        ("resunet(down=conv)", "down", "conv_unet"),
        ("global_factorizer(patch=4)", "patch", "factorizer_net"),
        ("local_factorizer(cyclic=false)", "cyclic", "factorizer_net"),
        ("swin_factorizer(matricize=local)", "matricize", "factorizer_net"),
    ],
)
def test_fixed_keywords_are_rejected_with_where_to_set_them(spec, key, base):
    with pytest.raises(SpecKeywordError) as info:
        build_net(spec, 1, 2)
    err = info.value
    assert f"has no keyword {key!r}" in err.message and f"set it in {base}(...)" in err.message
    assert _caret(err).startswith(key)


def test_factorizer_net_rejects_window_keywords_its_matricizer_does_not_take():
    with pytest.raises(SpecError, match="patch does not apply to the global matricizer") as info:
        build_net("factorizer_net(matricize=global, patch=4)", 1, 2)
    assert _caret(info.value).startswith("patch")


@pytest.fixture
def probe_preset():
    """A block preset registered for the test, removed afterwards."""

    @register("block", "preset_probe_base", test_spec="preset_probe_base")
    class ProbeBase(nn.Module):
        """Probe block: scales its input.

        Args:
            channels: the channels (context).
            scale: the factor.
            act: a MONAI activation.
        """

        def __init__(self, channels: int, *, scale: float = 1.0, act: str = "relu"):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return x * self.scale

    @register_preset("preset_probe", defaults={"scale": 3.0}, aliases=("preset_probe_alias",))
    class Probe(ProbeBase):
        """Probe preset: triples its input."""

    yield Probe
    for name in ("preset_probe_base", "preset_probe"):
        del _REGISTRY["block"][name]
    del _ALIASES["block"]["preset_probe_alias"]


def test_a_user_preset_in_one_decorator(probe_preset):
    block = build_block("preset_probe_alias", 4)
    assert type(block) is probe_preset and block.scale == 3.0 and str(block.spec) == "preset_probe"
    assert build_block("preset_probe(scale=2)", 4).scale == 2.0
    assert get_part_info("block", "preset_probe").test_spec == "preset_probe"
    doc = probe_preset.__doc__
    assert doc.startswith("Probe preset") and "(``preset_probe_base``) with ``scale=3.0``." in doc
    assert "scale: the factor." in doc  # the base's Args
    with pytest.raises(SpecError) as info:
        build_block("preset_probe(scale=true)", 4)
    assert "preset_probe(scale=...) expects a number" in info.value.message


def test_register_preset_refuses_malformed_presets(probe_preset):
    base = probe_preset.__mro__[1]
    with pytest.raises(ValueError, match="has no keyword 'scal'"):
        register_preset("bad_probe", defaults={"scal": 2.0})(type("Bad", (base,), {}))
    with pytest.raises(ValueError, match="given by the caller"):
        register_preset("bad_probe", defaults={"channels": 2})(type("Bad", (base,), {}))
    with pytest.raises(ValueError, match="both in defaults and fixed"):
        register_preset("bad_probe", defaults={"scale": 2.0}, fixed={"scale": 2.0})(type("Bad", (base,), {}))
    with pytest.raises(TypeError, match="must not define __init__"):
        register_preset("bad_probe")(type("Bad", (base,), {"__init__": lambda self: None}))
    with pytest.raises(TypeError, match="exactly one registered part"):
        register_preset("bad_probe")(type("Bad", (nn.Module,), {}))
    with pytest.raises(ValueError, match="already registered"):
        register_preset("preset_probe")(type("Bad", (base,), {}))
    assert "bad_probe" not in _REGISTRY["block"]


def _lowrank(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lowrank")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


def test_cli_list_and_show_print_the_preset_and_its_defaults():
    listed = _lowrank("list", "net")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("lowrank_resunet "))
    assert lines[at + 1].strip() == "= resunet(conv=cp_conv(rank=0.5), first_level_conv=dense)"
    shown = _lowrank("show", "lowrank_resunet(channels=[4, 8])", "--size", "8", "8", "8")
    assert shown.returncode == 0, shown.stderr
    preset = "preset:     lowrank_resunet = resunet(conv=cp_conv(rank=0.5), first_level_conv=dense)"
    assert preset in shown.stdout
    defaults = next(line for line in shown.stdout.splitlines() if line.startswith("defaults:"))
    assert "conv=cp_conv(rank=0.5)" in defaults and "first_level_conv=dense" in defaults
    bad = _lowrank("show", "lowrank_resunet(chanels=[4, 8])")
    assert bad.returncode == 2 and "did you mean 'channels'" in bad.stderr and "^" in bad.stderr


def test_docs_reference_page_shows_the_base_and_effective_defaults():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "_ext"))
    from lowrank_docs.reference import render_kind_page

    page = render_kind_page("net")
    section = page.split(".. _net-lowrank_resunet:")[1].split(".. autoclass::")[0]
    assert "A preset of :ref:`resunet <net-resunet>`" in section
    assert "``resunet(conv=cp_conv(rank=0.5), first_level_conv=dense)``" in section
    assert "``cp_conv(rank=0.5)``" in section  # the effective default in the keyword table
    unet = page.split(".. _net-unet:")[1].split(".. autoclass::")[0]
    assert "``block``" not in unet  # fixed: not a keyword


def test_paper_specs_unchanged():
    """The class names and signatures users import stay (``SwinFactorizer`` is the registry's)."""
    assert SwinFactorizer is get_part_info("net", "swin_factorizer").obj
    net = build_net("swin_factorizer(deep_supervision=3)", 4, 3)
    assert sum(p.numel() for p in net.parameters()) == 5_856_233


# ------------------------------------------- solvers: shared keywords follow to the base class
SOLVERS = ["nmf", "ham_nmf", "semi_nmf", "weak_nmf", "vq", "cd"]
SHARED = ["rank", "iters", "eval_iters", "init", "grad_steps", "eps", "fp32", "return_factors"]


@pytest.mark.parametrize("name", SOLVERS)
def test_solvers_take_the_shared_keywords_in_their_signature(name):
    import inspect

    from lowrank.validate import signature_of

    signature, hints = signature_of(get_part_info("solver", name).obj)
    params = signature.parameters
    assert all(k in params and k in hints for k in SHARED), name
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values())  # validated, not open-ended
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for k, p in params.items() if k != "self")


def test_a_solver_keeps_its_own_defaults_of_shared_keywords():
    from lowrank import build_solver

    ham = build_solver("ham_nmf")
    assert (ham.iters, ham.grad_steps, type(ham.init).__name__) == (6, 1, "RandomTrainInit")
    assert (build_solver("nmf").iters, build_solver("nmf").grad_steps) == (5, None)
    cd = build_solver("cd(eval_iters=7, fp32=false)")
    assert (cd.iters, cd.eval_iters, cd.fp32, cd.grad_steps) == (6, 7, False, 1)
    assert str(cd.spec) == "cd(eval_iters=7, fp32=false)"


@pytest.mark.parametrize(
    ("spec", "error", "words", "at"),
    [
        (
            "ham_nmf(iter=3)",
            SpecKeywordError,
            ["ham_nmf() has no keyword 'iter'", "did you mean 'iters'"],
            "iter=",
        ),
        ("cd(eps=-1.0)", SpecError, ["cd(eps=...)", "> 0"], "-1.0"),
        ("semi_nmf(fp32=3)", SpecError, ["semi_nmf(fp32=...) expects true or false"], "3"),
        ("weak_nmf(init=onlin)", SpecError, ["unknown init 'onlin'", "did you mean 'online'"], "onlin"),
        ("vq(return_factor=true)", SpecKeywordError, ["did you mean 'return_factors'"], "return_factor="),
        ("nmf(grad_steps=0)", SpecError, ["grad_steps must be >= 1"], "0"),
    ],
)
def test_shared_keywords_are_validated_with_carets(spec, error, words, at):
    from lowrank import build_solver

    with pytest.raises(error) as info:
        build_solver(spec)
    for word in words:
        assert word in info.value.message
    assert _caret(info.value).startswith(at)


def test_docs_describe_the_shared_keywords_of_every_solver():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "_ext"))
    from lowrank_docs.reference import _part_descriptions

    for name in SOLVERS:
        descriptions = _part_descriptions(get_part_info("solver", name).obj)
        assert all(descriptions.get(k) for k in SHARED), name
    assert (
        "Hamburger's one-step gradient"
        in _part_descriptions(get_part_info("solver", "ham_nmf").obj)["grad_steps"]
    )
