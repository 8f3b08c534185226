"""The U-Net skeleton and the named nets: any size, deep supervision, options, controls."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lowrank import build_net
from lowrank.controls import (
    component_maps,
    factorization_layers,
    iters_override,
    mixer_blocks,
    set_iters,
    skip_mixers,
    stage_names,
)
from lowrank.nets.skeleton import PositionEmbedding, UNetSkeleton

_FACT = "(channels=[8, 16, 32], head_dim=4, patch=4, iters=2, pos_embed_size=16)"
TINY = {
    "swin_factorizer": "swin_factorizer" + _FACT,
    "local_factorizer": "local_factorizer" + _FACT,
    "global_factorizer": "global_factorizer(channels=[8, 16, 32], head_dim=4, iters=2, pos_embed_size=16)",
    "unet": "unet(channels=[8, 16, 32])",
    "resunet": "resunet(channels=[8, 16, 32])",
    "pre_unet": "pre_unet(channels=[8, 16, 32])",
}
SIZES = {1: (37,), 2: (13, 22), 3: (9, 7, 11)}


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("name", list(TINY))
def test_named_nets_any_size(name, dims):
    torch.manual_seed(0)
    net = build_net(TINY[name], 2, 3, spatial_dims=dims)
    x = torch.randn(2, 2, *SIZES[dims])
    net.train()
    out = net(x)
    outs = out if isinstance(out, list) else [out]
    ds = net.deep_supervision
    assert len(outs) == (ds if ds > 1 else 1)
    for level, o in enumerate(outs):  # native resolutions, highest first
        assert o.shape == (2, 3, *[math.ceil(s / 2**level) for s in SIZES[dims]])
    sum(o.square().mean() for o in outs).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    net.eval()
    with torch.no_grad():
        y = net(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, *SIZES[dims]) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["swin_factorizer", "resunet"])
def test_padding_is_exactly_zero_padding_then_crop(name):
    """net(x) == net(x zero-padded to the total stride)[..., :S]: padding never leaks elsewhere."""
    net = build_net(TINY[name], 1, 2, spatial_dims=2).eval()
    x = torch.randn(1, 1, 13, 10)
    padded = F.pad(x, (0, 2, 0, 3))  # to 16 x 12, a multiple of the total stride 4
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(padded)[..., :13, :10])


def test_deep_supervision_clamped_and_validated():
    net = build_net("unet(channels=[4, 8])", 1, 2, spatial_dims=1)
    assert net.deep_supervision == 1
    with pytest.raises(ValueError, match="deep_supervision"):
        build_net("unet_skeleton(channels=[4, 8, 16], deep_supervision=3)", 1, 2)


def test_skeleton_options():
    net = build_net(
        'unet_skeleton(channels=[4, 8, 16], block=residual, down="maxpool", up_kernel=3, '
        "strides=[(2, 1), 2], depth=[1, 2, 1, 2, 1], stem=false, deep_supervision=2)",
        3,
        2,
        spatial_dims=2,
    )
    assert net.total_stride == (4, 2)
    assert isinstance(net.downs[0], nn.MaxPool2d) and net.ups[0].kernel_size == (3, 3)
    assert [len(s.blocks) for s in net.stages] == [1, 2, 1, 2, 1]
    assert net.stem is None and net.stages[0].blocks[0].conv1.conv.in_channels == 3
    out = net.train()(torch.randn(1, 3, 10, 7))
    assert [o.shape for o in out] == [(1, 2, 10, 7), (1, 2, 5, 7)]


def test_adapters_for_shape_preserving_blocks_only():
    fact = build_net(TINY["swin_factorizer"], 1, 1)
    conv = build_net(TINY["unet"], 1, 1)
    decoder = range(3, 5)
    for i in decoder:
        assert fact.stages[i].adapter is not None and fact.stages[i].adapter.bias is None
        assert conv.stages[i].adapter is None
    assert fact.stages[3].adapter.weight.shape == (16, 32)


def test_stage_blocks_and_errors():
    net = build_net(
        "unet_skeleton(channels=[4, 8], stage_blocks=[double_conv, identity, residual])", 1, 1, spatial_dims=1
    )
    kinds = [type(s.blocks[0]).__name__ for s in net.stages]
    assert kinds == ["DoubleConv", "Identity", "Residual"]
    with pytest.raises(ValueError, match="stage_blocks needs 3"):
        build_net("unet_skeleton(channels=[4, 8], stage_blocks=[identity])", 1, 1)
    with pytest.raises(ValueError, match="strides needs 2"):
        build_net("unet_skeleton(channels=[4, 8, 16], strides=[2])", 1, 1)
    with pytest.raises(ValueError, match="depth"):
        build_net("unet_skeleton(channels=[4, 8], depth=0)", 1, 1)
    with pytest.raises(ValueError, match="head_dim"):
        build_net("swin_factorizer(channels=[12, 24])", 1, 1)
    with pytest.raises(ValueError, match="either block"):
        build_net("swin_factorizer(block=identity, head_dim=4)", 1, 1)
    with pytest.raises(ValueError, match="spatial axes"):
        build_net(TINY["unet"], 1, 1)(torch.randn(1, 1, 8, 8))


def test_full_block_spec_is_used():
    net = build_net(
        "swin_factorizer(channels=[8, 16], block=factorizer(mixer=nmf(rank=2, iters=1), "
        "matricize=local(patch=2, head_dim=2), mlp_ratio=1.0), pos_embed_size=none)",
        1,
        1,
        spatial_dims=2,
    )
    block = net.stages[0].blocks[0]
    assert block.mixer.iters == 1 and block.matricize.head_dim == 2
    assert block.mlp.fc1.out_channels == 8
    assert net(torch.randn(1, 1, 6, 6)).shape == (1, 1, 6, 6)


def test_position_embedding():
    net = build_net(TINY["swin_factorizer"], 1, 1, spatial_dims=2)
    assert net.pos_embed.pos.shape == (1, 32, 4, 4)  # 16 / total stride 4
    assert 0 < net.pos_embed.pos.std() < 0.05  # initialized small
    pe = PositionEmbedding(3, (4, 4))
    x = torch.zeros(1, 3, 4, 4)
    torch.testing.assert_close(pe(x), pe.pos)
    big = pe(torch.zeros(1, 3, 8, 6))
    expected = F.interpolate(pe.pos, size=(8, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(big, expected)
    assert build_net(TINY["unet"], 1, 1).pos_embed is None


def test_first_level_conv_only_at_level_zero():
    calls = []

    class Recording(nn.Module):
        def __init__(
            self, in_channels, out_channels, kernel_size=3, *, padding=0, stride=1, spatial_dims=3, bias=True
        ):
            super().__init__()
            calls.append(in_channels)
            self.conv = nn.Conv3d(
                in_channels, out_channels, kernel_size, padding=padding, stride=stride, bias=bias
            )

        def forward(self, x):
            return self.conv(x)

    net = build_net("resunet(channels=[4, 8, 16])", 2, 2, first_level_conv=Recording)
    assert sorted(calls) == sorted([2, 4, 8, 4])  # level-0 encoder (2→4, 4→4), decoder (8→4, 4→4)
    assert type(net.stages[1].blocks[0].conv1).__name__ == "DenseConv"
    calls.clear()
    build_net("resunet(channels=[4, 8, 16])", 2, 2, conv=Recording, first_level_conv="dense")
    assert len(calls) == 6  # levels 1, 2 and decoder level 1: two 3x3x3 convs each


def test_state_dict_round_trip_and_deepcopy():
    a = build_net(TINY["swin_factorizer"], 1, 2, spatial_dims=2).eval()
    b = build_net(TINY["swin_factorizer"], 1, 2, spatial_dims=2).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
        torch.testing.assert_close(copy.deepcopy(a)(x), a(x))
    assert str(a.spec) == TINY["swin_factorizer"]
    assert isinstance(a, UNetSkeleton)


# ----------------------------------------------------------------------------- controls


def _fact_net():
    torch.manual_seed(0)
    return build_net(TINY["swin_factorizer"], 1, 2, spatial_dims=2).eval()


def test_set_iters_changes_output_and_restores():
    net = _fact_net()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        base = net(x)
        previous = set_iters(net, 1)
        assert len(previous) == 5 and all(v == (2, 2) for v in previous.values())
        assert all(layer.eval_iters == 1 and layer.iters == 2 for layer in factorization_layers(net).values())
        fewer = net(x)
        set_iters(net, 2)
        torch.testing.assert_close(net(x), base)
        with iters_override(net, 6):
            more = net(x)
        torch.testing.assert_close(net(x), base)
    assert torch.isfinite(fewer).all() and torch.isfinite(more).all()
    assert not torch.allclose(fewer, base) and not torch.allclose(more, base)
    set_iters(net, 3, which="train")
    assert all(layer.iters == 3 and layer.eval_iters == 2 for layer in factorization_layers(net).values())
    with pytest.raises(ValueError, match="iters"):
        set_iters(net, 0)
    with pytest.raises(ValueError, match="no factorization layers"):
        set_iters(build_net(TINY["unet"], 1, 1), 2)


def test_skip_mixers_changes_output_and_restores():
    net = _fact_net()
    x = torch.randn(1, 1, 16, 16)
    assert stage_names(net) == ["encoder0", "encoder1", "bottleneck", "decoder1", "decoder0"]
    with torch.no_grad():
        base = net(x)
        assert skip_mixers(net, ["decoder0", 3]) == ["stages.3.blocks.0", "stages.4.blocks.0"]
        skipped = net(x)
        assert skip_mixers(net, [-1]) == ["stages.4.blocks.0"]
        skip_mixers(net, [])
        torch.testing.assert_close(net(x), base)
    assert torch.isfinite(skipped).all() and not torch.allclose(skipped, base)
    assert len(mixer_blocks(net)) == 5
    with pytest.raises(ValueError, match="unknown stage"):
        skip_mixers(net, ["middle"])
    with pytest.raises(ValueError, match="out of range"):
        skip_mixers(net, [5])
    with pytest.raises(ValueError, match="no block with a mixer"):
        skip_mixers(build_net(TINY["unet"], 1, 1), [0])


def test_skipping_a_mixer_equals_removing_its_branch():
    net = _fact_net()
    block = net.stages[2].blocks[0]
    x = torch.randn(1, 32, 4, 4)
    skip_mixers(net, ["bottleneck"])
    with torch.no_grad():
        torch.testing.assert_close(block(x), x + block.mlp(block.norm2(x)))


def test_component_maps_through_hooks():
    net = _fact_net()
    x = torch.randn(2, 1, 16, 12)
    with torch.no_grad():
        before = net(x)
    maps = component_maps(net, x, blocks=["stages.0.blocks.0", "stages.4.blocks.0"])
    assert set(maps) == {"stages.0.blocks.0", "stages.4.blocks.0"}
    for m in maps.values():
        assert m.shape == (2, 2, 16, 12)  # 8 channels / head_dim 4 = 2 heads, rank 1
        assert torch.isfinite(m).all() and (m >= 0).all() and m.abs().sum() > 0
    all_maps = component_maps(net, x)
    assert len(all_maps) == 5 and all_maps["stages.2.blocks.0"].shape == (2, 8, 4, 3)
    # hooks removed, factors not kept, outputs unchanged
    assert all(not m._forward_hooks for m in net.modules())
    assert all(layer.store_factors is False for layer in factorization_layers(net).values())
    with torch.no_grad():
        torch.testing.assert_close(net(x), before)
    skip_mixers(net, [0])
    assert "stages.0.blocks.0" not in component_maps(net, x)
    with pytest.raises(ValueError, match="no factorizer block"):
        component_maps(net, x, blocks=["stages.9"])


# ----------------------------------------------------------------------------- any size (property)


@settings(max_examples=10)
@given(
    dims=st.integers(1, 3),
    size=st.lists(st.integers(1, 13), min_size=3, max_size=3),
    strides=st.lists(st.sampled_from([1, 2, 3]), min_size=2, max_size=2),
    down=st.sampled_from(["conv", "maxpool"]),
    up_kernel=st.sampled_from([None, 3]),
)
def test_skeleton_any_size_property(dims, size, strides, down, up_kernel):
    up = "none" if up_kernel is None else up_kernel
    net = build_net(
        f'unet_skeleton(channels=[2, 4, 4], block=residual(norm=batch), strides={strides}, down="{down}", '
        f"up_kernel={up}, deep_supervision=2)",
        1,
        2,
        spatial_dims=dims,
    ).train()
    x = torch.randn(2, 1, *size[:dims])
    main, aux = net(x)
    assert main.shape == (2, 2, *size[:dims])
    assert aux.shape == (2, 2, *[math.ceil(s / strides[0]) for s in size[:dims]])


@pytest.mark.parametrize("dims,size", [(2, (45, 37)), (3, (19, 13, 22))])
def test_training_default_small_config(dims, size):
    """The training helper's default: small widths, any size, 2-D and 3-D."""
    spec = "swin_factorizer(channels=[16, 32, 64], pos_embed_size=32, deep_supervision=2)"
    net = build_net(spec, 1, 4, spatial_dims=dims)
    x = torch.randn(1, 1, *size)
    out = net.train()(x)
    assert [o.shape for o in out] == [(1, 4, *size), (1, 4, *[math.ceil(s / 2) for s in size])]
    with torch.no_grad():
        assert net.eval()(x).shape == (1, 4, *size)


@pytest.mark.parametrize("name", ["swin_factorizer", "resunet"])
def test_bf16_autocast_forward_backward_finite(name):
    net = build_net(TINY[name], 1, 2, spatial_dims=2).train()
    x = torch.randn(1, 1, 14, 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    outs = out if isinstance(out, list) else [out]
    sum(o.float().square().mean() for o in outs).backward()
    assert all(torch.isfinite(o).all() for o in outs)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
