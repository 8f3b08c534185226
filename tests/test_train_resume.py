"""Exact resume: N steps straight == N/2 steps, ``kill -9``, ``--resume`` for the rest (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from lowrank import build_net
from lowrank.train import load_checkpoint

SPEC = "unet(channels=[4, 8], deep_supervision=1)"


def _command(out, steps=8):
    return [
        sys.executable,
        "-m",
        "lowrank.train",
        "train",
        "--spec",
        SPEC,
        "--steps",
        str(steps),
        "--patch",
        "16",
        "16",
        "16",
        "--batch",
        "2",
        "--ckpt-every",
        "2",
        "--val-every",
        "100",
        "--holdout",
        "0.5",
        "0.56",
        "--lr",
        "0.01",
        "--no-report",
        "--quiet",
        "--out",
        str(out),
    ]


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update(extra)
    return env


def test_resume_after_sigkill_is_exact(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # the uninterrupted run, in parallel with the run that will be killed
    ref = subprocess.Popen(_command(straight), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # SIGKILL when step 6 starts (tests/_fault_child.py: the same run through the public API,
    # killed by an injected forward_backward): the last checkpoint is at step 4, so step 5 is
    # lost and must be redone
    child = Path(__file__).with_name("_fault_child.py")
    victim = subprocess.run(
        [sys.executable, str(child), str(killed), "8", "step", "6"],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert victim.returncode == -signal.SIGKILL, victim.stdout + victim.stderr
    assert load_checkpoint(killed / "checkpoint.pt")["step"] == 4
    resumed = subprocess.run([*_command(killed), "--resume"], env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert ref.wait() == 0, ref.stdout.read()

    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(killed / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 8
    ha, hb = json.loads(a["history"]), json.loads(b["history"])
    assert ha["loss"] == hb["loss"] and len(ha["loss"]) == 8
    assert ha["val"] == hb["val"]
    # the weights did move away from their (seeded) initialization: the comparison is not vacuous
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        init = build_net(SPEC, 1, 4).state_dict()
    assert not all(torch.equal(init[k], a["model"][k]) for k in init)
