"""The low-rank Res-U-Net of thesis ch. 8, and ``conv=`` turning conv-based nets low-rank."""

from __future__ import annotations

import pytest
import torch

import lowrank
from lowrank.convs.cp import CPConv
from lowrank.convs.dense import DenseConv
from lowrank.convs.tucker import TuckerConv


def count(spec: str) -> int:
    with torch.device("meta"):
        net = lowrank.build_net(spec, 4, 4)
    return sum(p.numel() for p in net.parameters())


def test_thesis_parameter_counts():
    """Thesis ch. 8, F = 60: dense Res-U-Net 92.2M; low-rank (alpha = 0.5, level 0 dense) 20.8M."""
    dense = count("resunet")
    assert dense == pytest.approx(92.2e6, rel=5e-4)
    low = count("lowrank_resunet")
    assert low == 21_069_034
    assert low == pytest.approx(20.8e6, rel=0.02)
    assert count("resunet(conv=cp_conv(rank=0.5), first_level_conv=dense)") == low
    assert count("lowrank_resunet(first_level_conv=none)") == pytest.approx(20.8e6, rel=0.02)


def block_convs(stage):
    """The 3x3x3 convs of a stage's residual blocks (shortcuts and adapters are 1x1)."""
    return [m for m in stage.modules() if isinstance(m, (CPConv, DenseConv)) and max(m_kernel(m)) == 3]


def m_kernel(module):
    return module.kernel_size if isinstance(module, CPConv) else module.conv.kernel_size


def test_level_zero_dense_others_cp_with_alpha_half():
    net = lowrank.build_net("lowrank_resunet(channels=[6, 12, 24])", 2, 3)
    levels = [0, 1, 2, 1, 0]  # encoder 0..2, decoder 1..0
    for stage, level in zip(net.stages, levels):
        convs = block_convs(stage)
        assert len(convs) == 2
        for conv in convs:
            if level == 0:
                assert isinstance(conv, DenseConv)
            else:
                assert isinstance(conv, CPConv)
                assert conv.ranks == (round(conv.in_channels * 0.5),)


def test_forward_backward_and_state():
    torch.manual_seed(0)
    net = lowrank.build_net("lowrank_resunet(channels=[4, 8, 16])", 2, 3)
    x = torch.randn(1, 2, 12, 12, 12)
    out = net(x)
    assert out.shape == (1, 3, 12, 12, 12)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    again = lowrank.build_net(str(net.spec), 2, 3)
    again.load_state_dict(net.state_dict())
    net.eval()
    again.eval()
    with torch.no_grad():
        assert torch.allclose(again(x), net(x), atol=1e-5)


@pytest.mark.parametrize("net_name", ["unet", "resunet", "pre_unet"])
def test_conv_spec_turns_nets_low_rank(net_name):
    spec = f"{net_name}(channels=[4, 8], deep_supervision=1, conv=tucker_conv(rank=0.5))"
    net = lowrank.build_net(spec, 2, 2)
    assert any(isinstance(m, TuckerConv) for m in net.modules())
    assert net(torch.randn(1, 2, 8, 8, 8)).shape == (1, 2, 8, 8, 8)
