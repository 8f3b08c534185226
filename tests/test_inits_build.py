"""Table inits (``uniform``, ``online``, ``learned``) are sized when the block is built (issue 19.1).

Each consequence of a table sized at the first forward, reproduced: an optimizer made before
the first forward, ``AveragedModel(use_buffers=True)``, DDP under ``torchrun`` (gloo),
``torch.compile`` tracing twice; and the state dict's shapes right after construction.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap

import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from lowrank import build_block, build_net, build_solver

INITS = ["uniform", "online(momentum=0.5)", "learned"]
LEARNED_BLOCK = "factorizer(mixer=nmf(rank=2, iters=2, init=learned), matricize=swin(patch=4, head_dim=4))"
NET = f"unet_skeleton(channels=[8, 16], block={LEARNED_BLOCK})"


def _block(init: str, matricize: str = "swin(patch=4, head_dim=4)") -> torch.nn.Module:
    return build_block(f"factorizer(mixer=nmf(rank=2, iters=2, init={init}), matricize={matricize})", 8)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize(("matricize", "rows"), [("swin(patch=4, head_dim=4)", 4), ("global(heads=2)", 4)])
def test_state_dict_shapes_right_after_construction(init, matricize, rows):
    block = _block(init, matricize)
    assert block.state_dict()["mixer.init.weight"].shape == (rows, 2)
    fresh = _block(init, matricize)
    fresh.load_state_dict(block.state_dict())  # strict, no forward needed on either side
    x = torch.randn(1, 8, 8, 8, 8)
    torch.testing.assert_close(fresh.eval()(x), block.eval()(x))
    assert block.state_dict()["mixer.init.weight"].shape == (rows, 2)  # the forward did not resize it


@pytest.mark.parametrize("init", INITS)
def test_hamburger_spatial_ham_is_sized_at_build(init):
    block = build_block(f"hamburger(ham=nmf(rank=3, iters=2, init={init}), dim=8, heads=2)", 6)
    assert block.state_dict()["hams.0.ham.init.weight"].shape == (4, 3)


def test_solver_alone_sized_by_dim_or_lazy_until_the_first_call():
    assert build_solver("nmf(rank=2, init=uniform(dim=5))").init.weight.shape == (5, 2)
    layer = build_solver("nmf(rank=2, init=uniform)")  # M unknown: PyTorch's lazy protocol
    assert layer.init.has_uninitialized_params()
    layer(torch.rand(3, 5, 7))
    assert layer.init.weight.shape == (5, 2)
    layer.set_rows(5)  # the same height: accepted
    with pytest.raises(ValueError, match="one matrix height"):
        layer.set_rows(6)


def test_optimizer_made_before_the_first_forward_trains_the_learned_init():
    torch.manual_seed(0)
    block = build_block(LEARNED_BLOCK, 8)
    optimizer = torch.optim.SGD(block.parameters(), lr=0.5)
    before = block.mixer.init.weight.detach().clone()
    block(torch.randn(2, 8, 8, 8, 8)).square().mean().backward()
    optimizer.step()
    after = block.mixer.init.weight
    assert after.shape == before.shape == (4, 2)
    assert any(after is p for p in optimizer.param_groups[0]["params"])
    assert not torch.allclose(after, before)


@pytest.mark.parametrize("init", INITS)
def test_averaged_model_with_buffers_before_the_first_forward(init):
    torch.manual_seed(0)
    block = _block(init)
    averaged = AveragedModel(block, use_buffers=True)
    block(torch.randn(2, 8, 8, 8, 8))
    averaged.update_parameters(block)
    averaged.update_parameters(block)
    torch.testing.assert_close(averaged.module.mixer.init.weight, block.mixer.init.weight)


def test_compile_traces_once():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    torch.manual_seed(0)
    block = build_block(LEARNED_BLOCK, 8)
    counter = CompileCounter()
    compiled = torch.compile(block, backend=counter)
    x = torch.randn(1, 8, 8, 8, 8)
    compiled(x).sum().backward()
    frames = counter.frame_count
    compiled(x).sum().backward()
    assert counter.frame_count == frames  # no recompilation on the second step
    torch._dynamo.reset()


WORKER = textwrap.dedent(
    """
    import sys, torch
    from torch.nn.parallel import DistributedDataParallel
    from lowrank import build_net
    from lowrank.train import distributed as D

    info, device = D.setup("cpu")
    assert info.world_size == 2 and torch.distributed.get_backend() == "gloo"
    torch.manual_seed(0)
    net = build_net(sys.argv[1], 1, 2)
    ddp = DistributedDataParallel(net)  # before any forward, the usual order
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.5)
    torch.manual_seed(1 + info.rank)
    for _ in range(3):
        optimizer.zero_grad()
        ddp(torch.randn(2, 1, 8, 8, 8)).square().mean().backward()
        optimizer.step()
    inits = {n: p.detach() for n, p in net.named_parameters() if "init" in n}
    torch.save(inits, sys.argv[2] + f".{info.rank}")
    D.teardown()
    """
)


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_ddp_learned_init_under_torchrun(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "inits.pt"
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", str(script), NET, str(out)]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r0, r1 = (torch.load(f"{out}.{r}", weights_only=True) for r in range(2))
    torch.manual_seed(0)
    start = {n: p.detach() for n, p in build_net(NET, 1, 2).named_parameters() if "init" in n}
    assert start and set(r0) == set(start)
    for name, value in start.items():
        torch.testing.assert_close(r0[name], r1[name], msg=name)  # synchronized gradients
        assert not torch.allclose(r0[name], value), name  # and trained
