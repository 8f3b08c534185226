"""The ``hamburger`` block, the Ham decode head and the ``ham_segnet`` net.

The block is checked against a reference written here with ``torch.nn.functional`` convs and
``einops`` head splits, for each version; structure, gates, errors, determinism, autocast and
the online buffer through the block; the head and the net for shapes and training by name.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lowrank import build_block, build_net, parse_spec
from lowrank.blocks.ham_head import HamHead


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread (2 threads on a loaded 2-core machine thrash in OpenMP)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class _Rank2(nn.Module):
    """A deterministic stand-in ham: the best rank-2 approximation (truncated SVD)."""

    def forward(self, x, mask=None):
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        return (u[..., :2] * s[..., None, :2]) @ vh[..., :2, :]


def _conv(x, conv):
    return CONVS[x.dim() - 2](x, conv.weight, conv.bias)


def _bn_eval(x, bn):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(
        bn.running_var.view(shape) + bn.eps
    ) * bn.weight.view(shape) + bn.bias.view(shape)


def _ham_ref(z, heads, spatial):
    mats = rearrange(z, "b (h e) ... -> (b h) e (...)", h=heads)
    out = _Rank2()(mats if spatial else mats.mT)
    out = out if spatial else out.mT
    return out.reshape(z.shape)


def _randomize_bn(module):
    g = torch.Generator().manual_seed(3)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=m.running_mean.dtype))
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=m.running_var.dtype) + 0.5)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize(
    ("version", "spatial", "dual"), [("v1", True, False), ("v2", False, False), ("v2plus", True, True)]
)
def test_block_matches_functional_reference(dims, version, spatial, dual):
    block = build_block(
        "hamburger",
        6,
        spatial_dims=dims,
        ham=_Rank2,
        dim=8,
        heads=2,
        version=version,
        spatial=spatial,
        dual=dual,
    ).double()
    _randomize_bn(block)
    if version == "v2plus":
        with torch.no_grad():
            block.gate_ham.fill_(0.7)
            block.gate_skip.fill_(1.3)
    block.eval()
    x = torch.randn(2, 6, *([5] * dims), dtype=torch.float64)
    z = _conv(x, block.lower[0])  # no ReLU: the stand-in ham has no ``nonnegative`` flag
    if dual:
        a, b = z.chunk(2, dim=1)
        z = torch.cat([_ham_ref(a, 2, spatial), _ham_ref(b, 2, not spatial)], dim=1)
    else:
        z = _ham_ref(z, 2, spatial)
    if version != "v1":  # cheese: conv (no bias) + BN + ReLU
        z = torch.relu(_bn_eval(_conv(z, block.cheese[0]), block.cheese[1]))
    y = _conv(z, block.upper[0])
    if version == "v1":
        y = _bn_eval(y, block.upper[1])
    ref = 0.7 * y + 1.3 * x if version == "v2plus" else y + x
    torch.testing.assert_close(block(x), ref)


def test_structure_by_version_and_lower_act():
    v1 = build_block("hamburger(ham=ham_nmf(rank=2), dim=8, version=v1)", 4, spatial_dims=2)
    assert isinstance(v1.cheese, nn.Identity) and isinstance(v1.upper[1], nn.BatchNorm2d)
    assert isinstance(v1.lower[1], nn.ReLU), "NMF needs non-negative input: ReLU after the lower bread"
    v2 = build_block("hamburger(ham=vq(rank=2), dim=8, norm=instance, act=gelu)", 4, spatial_dims=3)
    assert isinstance(v2.lower[1], nn.Identity), "VQ takes signed input"
    assert isinstance(v2.cheese[1], nn.InstanceNorm3d) and isinstance(v2.cheese[2], nn.GELU)
    assert isinstance(v2.upper[1], nn.Identity) and v2.gate_ham is None
    grp = build_block(
        "hamburger(ham=cd(rank=2), dim=8, norm=group(num_groups=4), upper_norm=true)", 4, spatial_dims=1
    )
    assert isinstance(grp.upper[1], nn.GroupNorm) and grp.upper[1].num_groups == 4
    dual = build_block("hamburger(ham=cd(rank=2), dim=8, version=v2plus, dual=true)", 4, spatial_dims=2)
    assert dual.lower[0].out_channels == 16 and [h.spatial for h in dual.hams] == [True, False]


def test_v2plus_gate_starts_as_identity_and_learns():
    block = build_block("hamburger(ham=ham_nmf(rank=2, iters=2), dim=8, version=v2plus)", 4, spatial_dims=2)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    out = block(x)
    assert torch.equal(out, x)
    out.square().sum().backward()
    assert block.gate_ham.grad.abs().item() > 0
    assert torch.equal(x.grad, 2 * x.detach())


def test_spec_round_trip_rebuilds_the_same_block():
    spec = (
        "hamburger(ham=cd(rank=3, beta=0.05, iters=2), dim=8, heads=2, version=v2plus, dual=true, "
        "norm=instance)"
    )
    block = build_block(spec, 4, spatial_dims=2).eval()
    again = build_block(str(block.spec), 4, spatial_dims=2).eval()
    assert parse_spec(str(block.spec)) == block.spec
    again.load_state_dict(block.state_dict())
    x = torch.randn(1, 4, 5, 7)
    assert torch.equal(block(x), again(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 10, "heads": 3}, "dim=10 is not divisible by heads=3"),
        ({"version": "v1", "dual": True}, "dual=true needs the cheese"),
        ({"norm": "nosuchnorm"}, "nosuchnorm"),
        ({"dim": 0}, "dim must be >= 1"),
    ],
)
def test_bad_configuration_fails_at_build_time(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_block("hamburger(ham=vq(rank=2))", 4, spatial_dims=2, **kwargs)


def test_wrong_input_channels_is_a_clear_error():
    block = build_block("hamburger(ham=vq(rank=2), dim=8)", 4, spatial_dims=2)
    with pytest.raises(ValueError, match=r"expected input \(B, 4, \*spatial\)"):
        block(torch.randn(1, 5, 4, 4))


@pytest.mark.parametrize("ham", ["ham_nmf(rank=4, iters=3)", "vq(rank=4, iters=3)", "cd(rank=4, iters=3)"])
def test_block_eval_deterministic_train_random_and_any_size(ham):
    block = build_block(
        f"hamburger(ham={ham}, dim=16, heads=2, version=v2plus, dual=true)", 8, spatial_dims=2
    )
    with torch.no_grad():
        block.gate_ham.fill_(1.0)
    x = torch.randn(2, 8, 9, 7)
    block.train()
    assert not torch.equal(block(x), block(x)), "random init per call in training"
    block.eval()
    assert torch.equal(block(x), block(x))
    assert block(torch.randn(1, 8, 5, 6)).shape == (1, 8, 5, 6), "the channel view serves any size"


@pytest.mark.parametrize("ham", ["ham_nmf(rank=4, iters=3)", "vq(rank=4, iters=3)", "cd(rank=4, iters=3)"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_block_finite_under_autocast_on_zero_input(ham, dtype):
    block = build_block(f"hamburger(ham={ham}, dim=16, version=v2plus)", 8, spatial_dims=2)
    with torch.no_grad():
        block.gate_ham.fill_(1.0)
    x = torch.zeros(2, 8, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        out = block(x)
    out.float().square().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters() if p.grad is not None)


def test_online_buffer_through_the_block():
    spec = "hamburger(ham=cd(rank=3, iters=2, init=online(momentum=0.5)), dim=8, version=v2plus)"
    block = build_block(spec, 4, spatial_dims=2)
    with torch.no_grad():
        block.gate_ham.fill_(1.0)
    x = torch.randn(2, 4, 6, 6)
    block.eval()
    block(x)
    key = "hams.0.ham.init.weight"
    table = block.state_dict()[key].clone()
    block.train()
    block(x)
    assert not torch.allclose(block.state_dict()[key], table), "moves in training"
    block.eval()
    moved = block.state_dict()[key].clone()
    out = block(x)
    assert torch.equal(block.state_dict()[key], moved), "frozen in eval"
    fresh = build_block(spec, 4, spatial_dims=2).eval()
    fresh.load_state_dict(block.state_dict())
    assert torch.equal(fresh(x), out)


def test_head_decodes_multi_level_features():
    head = HamHead(
        [4, 8, 8],
        3,
        spatial_dims=2,
        ham_channels=16,
        channels=8,
        norm="batch",
        hamburger="hamburger(ham=ham_nmf(rank=2, iters=2), version=v1)",
    )
    assert head.hamburger.dim == 16, "a hamburger spec without dim gets dim=ham_channels"
    feats = [torch.randn(2, 4, 15, 13), torch.randn(2, 8, 8, 7), torch.randn(2, 8, 4, 4)]
    assert head(feats).shape == (2, 3, 15, 13)
    with pytest.raises(ValueError, match="expected 3 levels with channels"):
        head(feats[:2])
    head3 = HamHead([4, 4], 2, spatial_dims=3, ham_channels=8, channels=8, norm="batch", dropout=0.0)
    assert head3([torch.randn(1, 4, 6, 6, 6), torch.randn(1, 4, 3, 3, 3)]).shape == (1, 2, 6, 6, 6)


def test_net_any_size_by_name_and_eval_deterministic():
    net = build_net("ham_segnet", 1, 4, spatial_dims=2)  # defaults
    x = torch.randn(2, 1, 37, 29)
    assert net(x).shape == (2, 4, 37, 29)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    small = build_net(
        "ham_segnet(channels=[4, 8], ham_channels=8, head_channels=8, norm=batch)", 2, 3, spatial_dims=3
    )
    assert small(torch.randn(1, 2, 9, 8, 7)).shape == (1, 3, 9, 8, 7)
    with pytest.raises(ValueError, match="head_levels must index"):
        build_net("ham_segnet(channels=[4, 8], head_levels=[2])", 1, 2, spatial_dims=2)
    with pytest.raises(ValueError, match=r"num_groups=8\) needs channels divisible by 8"):
        build_net("ham_segnet(channels=[4, 8])", 1, 2, spatial_dims=2)


def _toy(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    centers = torch.randint(size // 3, 2 * size // 3, (n, 2), generator=g).float()
    radius2 = (size / 5) ** 2
    target = torch.stack([((yy - c[0]) ** 2 + (xx - c[1]) ** 2 < radius2).long() for c in centers])
    image = target.unsqueeze(1).float() + 0.3 * torch.randn(n, 1, size, size, generator=g)
    return image, target


def _fit(spec, image, target, steps, lr=1e-2):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_net(spec, 1, 2, spatial_dims=2)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(net(image), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_net_trains_by_name():
    image, target = _toy(2, 16)
    losses = _fit(
        "ham_segnet(channels=[4, 8], ham_channels=8, head_channels=8, norm=batch)", image, target, 8
    )
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.slow
def test_net_learns_a_toy_segmentation():
    """25 Adam steps fit a two-class toy problem (bright disc vs background)."""
    image, target = _toy(4, 24)
    losses = _fit("ham_segnet(channels=[8, 16, 16], ham_channels=16, head_channels=16)", image, target, 25)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
def test_compiles_without_graph_breaks():
    import torch._dynamo as dynamo

    specs = [
        "hamburger(ham=ham_nmf(rank=4, iters=3), dim=16, heads=2, version=v2plus, dual=true)",
        "hamburger(ham=vq(rank=4, iters=3), dim=16, version=v1)",
        "hamburger(ham=cd(rank=4, iters=3, init=online(momentum=0.9)), dim=16)",
    ]
    x = torch.rand(2, 8, 6, 6, requires_grad=True)
    for spec in specs:
        block = build_block(spec, 8, spatial_dims=2)
        block(x)
        for mode in (block.train, block.eval):
            mode()
            dynamo.reset()
            assert dynamo.explain(block)(x).graph_break_count == 0, spec
