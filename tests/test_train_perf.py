"""Training speed knobs: fused AdamW, ``--threads``, the default recipe, the profile script."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank import build_net, parse_spec
from lowrank.train import DEFAULT_SPEC, TrainConfig, train
from lowrank.train.cli import add_commands
from lowrank.train.config import default_lr
from lowrank.train.loop import make_optimizer

TINY = "unet(channels=[4, 8], deep_supervision=1)"
FAST = {"patch": (16, 16, 16), "batch": 1, "quiet": True, "overlap": 0.0, "sw_batch": 8, "report": False}
BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_compare.py"


@settings(max_examples=10, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3), min_size=1, max_size=4),
    lr=st.floats(1e-4, 3e-2),
    wd=st.sampled_from([0.0, 1e-2]),
)
def test_fused_adamw_matches_the_reference_loop(shapes, lr, wd):
    gen = torch.Generator().manual_seed(len(shapes))
    a = [torch.nn.Parameter(torch.randn(*s, generator=gen, dtype=torch.float64)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fused = make_optimizer(a, lr, wd, torch.device("cpu"))
    reference = torch.optim.AdamW(b, lr=lr, weight_decay=wd, foreach=False)
    assert fused.defaults["fused"] is True
    for _ in range(4):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in a]
        for p, q, g in zip(a, b, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        fused.step(), reference.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
        assert not torch.equal(p, torch.zeros_like(p))


def test_meta_device_optimizer_is_not_fused():
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    assert not make_optimizer([p], 1e-3, 0.0, torch.device("meta")).defaults["fused"]


def test_threads_apply_to_the_run_only(tmp_path):
    before = torch.get_num_threads()
    metrics = train(TrainConfig(spec=TINY, steps=2, threads=1, out=str(tmp_path), **FAST))
    assert metrics["threads"] == 1
    assert torch.get_num_threads() == before
    assert metrics["lr"] == 2e-2  # a small net without --lr
    explicit = train(TrainConfig(spec=TINY, steps=1, lr=5e-3, out=str(tmp_path / "lr"), **FAST))
    assert explicit["lr"] == 5e-3


def test_default_lr_by_parameter_count():
    assert default_lr(88_304) == default_lr(999_999) == 2e-2
    assert default_lr(1_000_000) == default_lr(1_660_516) == 3e-3
    with pytest.raises(ValueError, match="--lr must be > 0"):
        TrainConfig(lr=0.0)
    assert TrainConfig().lr is None


def test_threads_option_is_validated_and_parsed():
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        TrainConfig(threads=-1)
    assert TrainConfig(threads=0).threads is None and TrainConfig().threads == 1
    parser = argparse.ArgumentParser(prog="lowrank")
    add_commands(parser.add_subparsers(dest="command", required=True))
    assert parser.parse_args(["train", "--threads", "1"]).threads == 1
    assert not hasattr(parser.parse_args(["train"]), "threads")  # not given: TrainConfig's default


def test_default_is_a_genuine_swin_factorizer():
    spec = parse_spec(DEFAULT_SPEC)
    assert spec.name == "swin_factorizer"
    net = build_net(DEFAULT_SPEC, 1, 4)
    blocks = [m for m in net.modules() if type(m).__name__ == "Factorizer"]
    assert len(blocks) == 2 * len(spec.kwargs["channels"]) - 1
    for block in blocks:
        assert type(block.matricize).__name__ == "SwinMatricize"
        assert block.mixer.spec.name == "nmf" and block.mixer.spec.kwargs["rank"] == 1


def _bench():
    spec = importlib.util.spec_from_file_location("train_compare", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_script_breaks_a_factorizer_step_down():
    bench = _bench()
    spec = "swin_factorizer(channels=[4, 8], head_dim=4, patch=4, iters=2, deep_supervision=1)"
    full, times = bench.component_times(spec, [8, 8, 8], 1)
    for stage in (0, 1, 2):
        assert times[f"  nmf solver {stage}"] > 0 and times[f"factorizer mixer branch {stage}"] > 0
        assert times[f"  window copies {stage}"] > 0 and f"  norm + projections {stage}" in times
        assert times[f"factorizer mlp branch {stage}"] > 0
    assert {"stem conv", "down conv 0", "up conv 0", "head 0", "adapter 2"} <= set(times)
    assert full > 0
    text = bench.profile_net(TINY, [8, 8, 8], 1, rows=3)
    n_ops = int(text.split(": ")[1].split(" ")[0])
    assert n_ops > 50 and "Self CPU" in text
    bigger = "unet(channels=[8, 16, 32], deep_supervision=1)"
    times = bench.probe_step_time([TINY, bigger], [8, 8, 8], 1, 3, threads=(1, 0))
    assert len(times) == 2 and all(len(t) == 2 and min(t) > 0 for t in times)
