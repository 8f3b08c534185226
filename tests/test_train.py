"""``lowrank train``: a short real training, its files, the loss, AMP, 2-D, the CLI, errors."""

from __future__ import annotations

import argparse
import itertools
import json
import math

import numpy as np
import pytest
import torch

from lowrank.train import CheckpointError, TrainConfig, load_checkpoint, save_checkpoint, train
from lowrank.train.cli import add_commands
from lowrank.train.loop import make_scheduler

TINY = "unet(channels=[4, 8, 16], deep_supervision=2)"
FAST = {"patch": (16, 16, 16), "batch": 2, "quiet": True, "overlap": 0.0, "sw_batch": 8}


def _cli(argv):
    parser = argparse.ArgumentParser(prog="lowrank")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    metrics = train(TrainConfig(spec=TINY, steps=16, val_every=8, out=str(out), lr=5e-3, **FAST))
    return out, metrics


def test_short_training_writes_the_run_folder(run):
    out, metrics = run
    for name in ("checkpoint.pt", "metrics.json", "config.json", "curves.png", "overlay.png"):
        assert (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["spec"] == TINY and on_disk["steps"] == 16 and on_disk["classes"] == ["csf", "gm", "wm"]
    for name in ("csf", "gm", "wm"):
        assert 0.0 <= on_disk["dice"][name] <= 1.0
    assert json.loads((out / "config.json").read_text())["steps"] == 16
    # PNGs are real images
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_short_training_learns(run):
    out, metrics = run
    state = load_checkpoint(out / "checkpoint.pt")
    history = json.loads(state["history"])
    loss = history["loss"]
    assert len(loss) == 16 and all(math.isfinite(v) for v in loss)
    assert np.mean(loss[-4:]) < 0.95 * np.mean(loss[:4])
    # validated at steps 8 and 16; WM is already found better than chance
    assert [v["step"] for v in history["val"]] == [8, 16]
    assert metrics["dice"]["wm"] > 0.3
    assert state["step"] == 16 and state["spec"] == TINY


def test_scheduler_warmup_then_cosine():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, steps=100, warmup=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs[:10], np.arange(1, 11) / 10)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5, abs=0.02)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:])) and lrs[-1] < 0.001


def _train_2d(tmp_path, report: bool):
    spec = "swin_factorizer(channels=[8, 16], head_dim=4, patch=4, deep_supervision=1, pos_embed_size=none)"
    argv = ["train", "--spec", spec, "--dims", "2", "--patch", "32", "32", "--steps", "2"]
    argv += ["--holdout", "0.5", "0.53", "--quiet", "--out", str(tmp_path)] + (
        [] if report else ["--no-report"]
    )
    assert _cli(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["dims"] == 2 and metrics["patch"] == [32, 32]
    assert all(0 <= d <= 1 for d in metrics["dice"].values())


def test_cli_train_2d_factorizer(tmp_path):
    """--dims 2 (axial slices) of a Swin Factorizer through the CLI harness."""
    _train_2d(tmp_path, report=False)


@pytest.mark.slow
def test_cli_train_2d_factorizer_figures(tmp_path):
    """The figures of a 2-D run (whole-volume slice-by-slice prediction, 2-D component maps)."""
    _train_2d(tmp_path, report=True)
    for name in ("curves.png", "overlay.png", "components.png"):
        assert (tmp_path / name).is_file(), name


def test_bf16_autocast_on_cpu(tmp_path):
    cfg = TrainConfig(
        spec="unet(channels=[4, 8], deep_supervision=1)", steps=2, amp="bf16", out=str(tmp_path)
    )
    cfg.holdout, cfg.report = (0.5, 0.53), False
    for key, value in FAST.items():
        setattr(cfg, key, value)
    metrics = train(cfg)
    assert metrics["amp"] == "bf16"
    history = json.loads(load_checkpoint(tmp_path / "checkpoint.pt")["history"])
    assert all(math.isfinite(v) for v in history["loss"])
    state = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    assert all(
        v.dtype == torch.float32 for v in state.values() if v.is_floating_point()
    )  # fp32 master weights


def test_bad_options_fail_before_writing(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="fp16 needs --device cuda"):
        train(TrainConfig(spec=TINY, steps=1, amp="fp16", device="cpu", out=str(out), **FAST))
    with pytest.raises(Exception, match="did you mean"):
        train(TrainConfig(spec="unett", steps=1, out=str(out), **FAST))
    with pytest.raises(ValueError, match="--patch"):
        TrainConfig(patch=(16, 16), dims=3)
    assert not out.exists()


def test_checkpoint_errors_and_atomic_write(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a `lowrank train` checkpoint"):
        load_checkpoint(other)
    # a crash in the middle of a write leaves the previous checkpoint intact and no temp file
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"a": torch.ones(3)})
    before = path.read_bytes()

    def exploding_save(obj, fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"a": torch.zeros(3)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "corrupt.pt", "other.pt"]


def test_resume_refuses_another_spec(run, tmp_path):
    out, _ = run
    with pytest.raises(CheckpointError, match="trained with spec"):
        train(
            TrainConfig(
                spec="unet(channels=[4, 8], deep_supervision=1)", steps=20, resume=True, out=str(out), **FAST
            )
        )
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(TrainConfig(spec=TINY, steps=2, resume=True, out=str(tmp_path / "empty"), **FAST))
    with pytest.raises(CheckpointError, match="trained with spec"):
        _cli(["train", "--resume", "--spec", "unet", "--out", str(out), "--quiet"])


def test_component_maps_of_first_and_last_factorizer_blocks(tmp_path):
    from lowrank import build_net
    from lowrank.train.report import component_maps, plot_components

    torch.manual_seed(0)
    net = build_net(
        "swin_factorizer(channels=[8, 16], head_dim=4, patch=4, deep_supervision=1, pos_embed_size=none)",
        1,
        4,
    )
    x = torch.rand(1, 1, 16, 16, 16)
    maps = component_maps(net, x)
    assert len(maps) == 2 and maps[0][0] != maps[1][0]
    # first block: 8 channels / head_dim 4 = 2 heads × rank 1, at the input resolution; NMF maps are >= 0
    assert maps[0][1].shape == (2, 16, 16, 16) and maps[0][1].min() >= 0 and maps[0][1].max() > 0
    assert all(not getattr(m, "store_factors", False) for m in net.modules())  # switched back off
    assert net.training  # mode restored
    path = plot_components(maps, x[0, 0].numpy(), tmp_path / "components.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    # a net without factorizer blocks has no maps
    assert component_maps(build_net("unet(channels=[4, 8], deep_supervision=1)", 1, 4), x) == []
