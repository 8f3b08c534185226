"""The nets in the MONAI / PyTorch ecosystem: sliding windows, deep-supervision loss, compile, bundles."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import sliding_window_inference
from monai.losses import DeepSupervisionLoss, DiceCELoss

from lowrank import build_net, get_part, list_parts

MICRO = {  # two levels, 1-D: the cheapest configuration of each net (for compile tracing)
    "swin_factorizer": "swin_factorizer(channels=[4, 8], head_dim=4, patch=4, iters=2, pos_embed_size=8)",
    "local_factorizer": "local_factorizer(channels=[4, 8], head_dim=4, patch=4, iters=2, pos_embed_size=8)",
    "global_factorizer": "global_factorizer(channels=[4, 8], head_dim=4, iters=2, pos_embed_size=8)",
    "unet": "unet(channels=[4, 8])",
    "resunet": "resunet(channels=[4, 8])",
    "pre_unet": "pre_unet(channels=[4, 8])",
}
SMALL_3D = {  # three levels, 3-D, deep supervision
    "swin_factorizer": "swin_factorizer(channels=[8, 16, 32], head_dim=4, patch=4, iters=2, "
    "pos_embed_size=16, deep_supervision=2)",
    "unet": "unet(channels=[4, 8, 16], deep_supervision=2)",
}


@pytest.mark.parametrize("name", list(SMALL_3D))
def test_sliding_window_inference_odd_size(name):
    torch.manual_seed(0)
    net = build_net(SMALL_3D[name], 1, 3).eval()
    x = torch.randn(1, 1, 21, 18, 19)  # larger than the 16³ window, not divisible by 16
    with torch.no_grad():
        out = sliding_window_inference(x, roi_size=(16, 16, 16), sw_batch_size=2, predictor=net, overlap=0.5)
        window = net(x[:, :, :16, :16, :16])
    assert out.shape == (1, 3, 21, 18, 19) and torch.isfinite(out).all()
    # the corner voxel is covered by the first window only (no blending there)
    torch.testing.assert_close(out[..., 0, 0, 0], window[..., 0, 0, 0])


@pytest.mark.parametrize("name", list(SMALL_3D))
def test_deep_supervision_loss(name):
    torch.manual_seed(0)
    net = build_net(SMALL_3D[name], 1, 3).train()
    x = torch.randn(2, 1, 12, 10, 9)
    y = torch.randint(0, 3, (2, 1, 12, 10, 9)).float()  # MONAI labels are float (interpolated)
    outputs = net(x)
    assert isinstance(outputs, list) and len(outputs) == 2
    loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), weights=[1.0, 0.5])
    loss = loss_fn(outputs, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    single = DiceCELoss(to_onehot_y=True, softmax=True)(net.eval()(x), y)  # eval: one tensor
    assert torch.isfinite(single)


@pytest.mark.parametrize("name", list(MICRO))
def test_bundle_target_builds_each_net(name):
    config = {
        "net": {
            "_target_": "lowrank.build_net",
            "spec": MICRO[name],
            "in_channels": 2,
            "out_channels": 3,
            "spatial_dims": 1,
        }
    }
    parser = ConfigParser(config)
    net = parser.get_parsed_content("net")
    assert isinstance(net, get_part("net", name))
    assert net.eval()(torch.randn(1, 2, 13)).shape == (1, 3, 13)
    # the same net from a bare name (the paper's defaults), without a forward: just the type
    assert parser.get_parsed_content("net").spec.name == name


def _graph_breaks(net, x) -> int:
    import torch._dynamo

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(net)(x)
    return explanation.graph_break_count


@pytest.mark.parametrize("name", ["swin_factorizer", "unet", "resunet", "pre_unet"])
def test_compile_no_graph_breaks_micro(name):
    net = build_net(MICRO[name], 1, 2, spatial_dims=1).train()
    assert _graph_breaks(net, torch.randn(1, 1, 11)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MICRO))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_compile_no_graph_breaks_3d(name, mode):
    spec = MICRO[name].replace("channels=[4, 8]", "channels=[8, 16, 32]")
    net = build_net(spec, 1, 2).train(mode == "train")
    assert _graph_breaks(net, torch.randn(1, 1, 9, 8, 7)) == 0


@pytest.mark.slow
def test_compiled_fullgraph_matches_eager():
    net = build_net(SMALL_3D["swin_factorizer"], 1, 2).eval()
    x = torch.randn(1, 1, 12, 12, 12)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x), rtol=1e-4, atol=1e-5)


#: every registered net at its defaults but small, three levels (so deep supervision could apply)
_F3 = "channels=[8, 16, 32], head_dim=4, iters=2, pos_embed_size=none"
DEFAULTS_3_LEVELS = {
    "swin_factorizer": f"swin_factorizer({_F3}, patch=4)",
    "local_factorizer": f"local_factorizer({_F3}, patch=4)",
    "global_factorizer": f"global_factorizer({_F3})",
    "factorizer_net": f"factorizer_net({_F3}, matricize=local, patch=4)",
    "conv_unet": "conv_unet(channels=[4, 8, 16], block=residual, down=maxpool, up_kernel=3)",
    "unet": "unet(channels=[4, 8, 16])",
    "resunet": "resunet(channels=[4, 8, 16])",
    "pre_unet": "pre_unet(channels=[4, 8, 16])",
    "lowrank_resunet": "lowrank_resunet(channels=[4, 8, 16])",
    "unet_skeleton": "unet_skeleton(channels=[4, 8, 16])",
    "ham_segnet": "ham_segnet(channels=[4, 8, 8], ham_channels=8, head_channels=8, norm=batch, "
    "hamburger=hamburger(ham=ham_nmf(rank=2, iters=2), version=v1, out_act=relu))",
}


def test_every_net_has_a_default_output_check():
    assert set(DEFAULTS_3_LEVELS) == set(list_parts("net"))


@pytest.mark.parametrize("name", sorted(DEFAULTS_3_LEVELS))
def test_plain_dice_ce_on_the_default_training_output(name):
    """One rule: deep supervision off by default, one tensor out in training (MONAI's nets')."""
    torch.manual_seed(0)
    net = build_net(DEFAULTS_3_LEVELS[name], 1, 3).train()
    x = torch.randn(2, 1, 16, 16, 16)
    y = torch.randint(0, 3, (2, 1, 16, 16, 16)).float()
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 16, 16, 16)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)(out, y)
    loss.backward()
    assert torch.isfinite(loss)
