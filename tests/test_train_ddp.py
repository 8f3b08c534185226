"""DistributedDataParallel on CPU (gloo, 2 processes) equals one process on the same total batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from lowrank import build_net
from lowrank.data import PatchSampler, load_template, split_slab
from lowrank.train.loop import forward_backward, make_loss

SPEC = "unet(channels=[4, 8], deep_supervision=1)"
WORKER = textwrap.dedent(
    """
    import sys, torch
    from torch.nn.parallel import DistributedDataParallel
    from lowrank import build_net
    from lowrank.data import PatchSampler, load_template, split_slab
    from lowrank.train import distributed as D
    from lowrank.train.loop import forward_backward, make_loss

    info, device = D.setup("cpu")
    assert info.world_size == 2 and torch.distributed.get_backend() == "gloo"
    torch.manual_seed(1 + info.rank)  # different init per rank: DDP must broadcast rank 0's weights
    net = build_net(sys.argv[1], 1, 4)
    ddp = DistributedDataParallel(net)
    sampler = PatchSampler(split_slab(load_template())[0], (16, 16, 16), seed=5)
    x, y = sampler.batch(3, 2, rank=info.rank, world_size=info.world_size)
    loss = forward_backward(ddp, make_loss(), x, y)
    torch.save({"loss": loss, "grads": {n: p.grad for n, p in net.named_parameters()}}, sys.argv[2])
    D.teardown()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_equal_one_process_on_the_total_batch(tmp_path):
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, SPEC, str(tmp_path / f"r{rank}.pt")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out
    r0, r1 = (torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in range(2))

    torch.manual_seed(1)  # rank 0's initialization
    net = build_net(SPEC, 1, 4)
    sampler = PatchSampler(split_slab(load_template())[0], (16, 16, 16), seed=5)
    x, y = sampler.batch(3, 4)
    loss = forward_backward(net, make_loss(), x, y)
    assert (r0["loss"] + r1["loss"]) / 2 == pytest.approx(loss, rel=1e-5)
    assert r0["loss"] != pytest.approx(r1["loss"], rel=1e-3)  # the ranks saw different patches
    for name, p in net.named_parameters():
        torch.testing.assert_close(r0["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(r1["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_cli_end_to_end(tmp_path):
    """``torchrun --nproc_per_node 2 -m lowrank.train train`` runs and records 2 processes."""
    out = tmp_path / "ddp"
    cmd = [
        "torchrun",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "lowrank.train",
        "train",
        "--spec",
        SPEC,
        "--steps",
        "3",
        "--patch",
        "16",
        "16",
        "16",
        "--holdout",
        "0.5",
        "0.56",
        "--device",
        "cpu",
        "--no-report",
        "--quiet",
        "--out",
        str(out),
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["batch"] == 4
