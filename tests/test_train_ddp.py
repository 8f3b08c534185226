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
    loss = float(forward_backward(ddp, make_loss(), x, y))
    torch.save(
        {"loss": loss, "grads": {n: p.grad for n, p in net.named_parameters()}},
        sys.argv[2].format(rank=info.rank),
    )
    D.teardown()
    """
)

VALIDATOR = textwrap.dedent(
    """
    import sys, torch
    from lowrank import build_net
    from lowrank.data import load_template, split_slab
    from lowrank.train import TrainConfig, distributed as D
    from lowrank.train import steps

    info, device = D.setup("cpu")
    torch.manual_seed(0)
    net = build_net(sys.argv[1], 1, 4).eval()
    template = load_template()
    volumes = [split_slab(template, (a, a + 0.06))[1] for a in (0.3, 0.5, 0.7)]
    seen = []
    predict = steps.sliding_window_predict

    def counted(model, image, *args, **kwargs):
        seen.append(tuple(image.shape))
        return predict(model, image, *args, **kwargs)

    steps.sliding_window_predict = counted
    cfg = TrainConfig(spec=sys.argv[1], patch=(16, 16, 16), overlap=0.0, sw_batch=8)
    metrics = steps.validate(net, volumes, cfg, template.classes, device, info)
    torch.save({"metrics": metrics, "seen": len(seen)}, sys.argv[2].format(rank=info.rank))
    D.teardown()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(worker: str, *args: str) -> None:
    """Run ``worker`` as ranks 0 and 1 of a gloo process group (``sys.argv[1:]`` = args)."""
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
                [sys.executable, "-c", worker, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out


def test_ddp_gradients_equal_one_process_on_the_total_batch(tmp_path):
    _run_two_ranks(WORKER, SPEC, str(tmp_path / "r{rank}.pt"))
    r0, r1 = (torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in range(2))

    torch.manual_seed(1)  # rank 0's initialization
    net = build_net(SPEC, 1, 4)
    sampler = PatchSampler(split_slab(load_template())[0], (16, 16, 16), seed=5)
    x, y = sampler.batch(3, 4)
    loss = float(forward_backward(net, make_loss(), x, y))
    assert (r0["loss"] + r1["loss"]) / 2 == pytest.approx(loss, rel=1e-5)
    assert r0["loss"] != pytest.approx(r1["loss"], rel=1e-3)  # the ranks saw different patches
    for name, p in net.named_parameters():
        torch.testing.assert_close(r0["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(r1["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_validation_is_sharded_and_all_reduced(tmp_path):
    """Every rank validates its share of the volumes (none waits in a collective while another
    validates alone, which could outlast the NCCL timeout) and gets the one-process means."""
    from lowrank.train import TrainConfig
    from lowrank.train.loop import validate

    _run_two_ranks(VALIDATOR, SPEC, str(tmp_path / "v{rank}.pt"))
    r0, r1 = (torch.load(tmp_path / f"v{r}.pt", weights_only=True) for r in range(2))
    assert (r0["seen"], r1["seen"]) == (2, 1)  # volumes 0, 2 on rank 0; volume 1 on rank 1
    torch.manual_seed(0)
    net = build_net(SPEC, 1, 4).eval()
    template = load_template()
    volumes = [split_slab(template, (a, a + 0.06))[1] for a in (0.3, 0.5, 0.7)]
    cfg = TrainConfig(spec=SPEC, patch=(16, 16, 16), overlap=0.0, sw_batch=8)
    expected = validate(net, volumes, cfg, template.classes, torch.device("cpu"))
    assert r0["metrics"] == r1["metrics"]
    assert r0["metrics"].keys() == expected.keys() == set(template.classes[1:])
    for name, values in expected.items():
        for key in ("dice", "hd95"):
            assert r0["metrics"][name][key] == pytest.approx(values[key], rel=1e-9), (name, key)


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
