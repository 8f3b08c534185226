"""Reliability of checkpoints: damaged, edited and unwritable files, and kills at any moment.

Every damaged or malformed checkpoint is refused with the one-line :class:`CheckpointError`
(by ``load_checkpoint``, by ``lowrank predict``); a failed write (disk full, read-only folder)
is a CheckpointError that leaves the previous checkpoint intact; a run killed at random points
(also while it writes a checkpoint) and resumed ends with the uninterrupted run's parameters.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from lowrank import build_net
from lowrank.train import checkpoint as checkpoint_module
from lowrank.train.checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from lowrank.train.predict import load_model

SPEC = "unet(channels=[4, 8], deep_supervision=1)"
CHILD = Path(__file__).with_name("_fault_child.py")


def _state() -> dict:
    """A complete checkpoint of a small net, as ``lowrank train`` writes it."""
    net = build_net(SPEC, 1, 4)
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.01)
    net(torch.randn(1, 1, 8, 8, 8)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    info = {"in_channels": 1, "out_channels": 4, "spatial_dims": 3, "patch": [8, 8, 8]}
    info.update(classes=["bg", "a", "b", "c"], spacing=[2.0, 2.0, 2.0])
    return {
        "format": FORMAT,
        "spec": SPEC,
        "net": json.dumps(info),
        "config": json.dumps({"spec": SPEC}),
        "history": json.dumps({"step": [1], "loss": [0.5], "lr": [0.01], "val": []}),
        "step": 1,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": {},
        "rng": {"torch": torch.get_rng_state(), "cuda": []},
    }


@pytest.fixture
def saved(tmp_path) -> Path:
    return save_checkpoint(tmp_path / "checkpoint.pt", _state())


def test_a_sound_checkpoint_loads_and_predict_rebuilds_it(saved):
    state = load_checkpoint(saved)
    assert state["step"] == 1
    _, info = load_model(saved, "cpu")
    assert info["out_channels"] == 4


def _data_offsets(path: Path) -> list[int]:
    """Offsets of a few bytes inside the stored tensors' data (not in zip padding)."""
    with zipfile.ZipFile(path) as archive:
        entries = [i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 64]
    with open(path, "rb") as fh:
        offsets = []
        for info in entries[:3]:
            fh.seek(info.header_offset + 26)
            name_len, extra_len = (int.from_bytes(fh.read(2), "little") for _ in range(2))
            start = info.header_offset + 30 + name_len + extra_len
            offsets += [start, start + info.compress_size // 2]
    return offsets


@pytest.mark.parametrize("which", range(6))
def test_flipped_bits_are_refused(saved, which):
    offsets = _data_offsets(saved)
    data = bytearray(saved.read_bytes())
    data[offsets[which]] ^= 0x10
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is damaged") as info:
        load_checkpoint(saved)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError):
        load_model(saved, "cpu")


def test_truncated_and_foreign_files_are_refused(tmp_path, saved):
    data = saved.read_bytes()
    for size in (0, 10, len(data) // 2, len(data) - 5):
        saved.write_bytes(data[:size])
        with pytest.raises(CheckpointError):
            load_checkpoint(saved)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a `lowrank train` checkpoint"):
        load_checkpoint(other)


_MALFORMED = {
    "history=[]": lambda s: s.update(history=[]),
    "history list JSON": lambda s: s.update(history="[]"),
    "history.loss str": lambda s: s.update(history=json.dumps({"loss": "x"})),
    "history.val bad": lambda s: s.update(history=json.dumps({"val": [1]})),
    "no optimizer": lambda s: s.pop("optimizer"),
    "no rng": lambda s: s.pop("rng"),
    "no history": lambda s: s.pop("history"),
    "optimizer=[]": lambda s: s.update(optimizer=[]),
    "optimizer without groups": lambda s: s.update(optimizer={"state": {}}),
    "scheduler=1": lambda s: s.update(scheduler=1),
    "step=-1": lambda s: s.update(step=-1),
    "step=str": lambda s: s.update(step="3"),
    "step=True": lambda s: s.update(step=True),
    "spec=1": lambda s: s.update(spec=1),
    "net not JSON": lambda s: s.update(net="{"),
    "net.in_channels=0": lambda s: s.update(
        net=json.dumps({"in_channels": 0, "out_channels": 4, "spatial_dims": 3})
    ),
    "model=[]": lambda s: s.update(model=[]),
    "model values not tensors": lambda s: s.update(model={"w": 1.0}),
    "rng int64": lambda s: s.update(rng={"torch": torch.zeros(3, dtype=torch.int64), "cuda": []}),
    "config=[]": lambda s: s.update(config="[]"),
    "scaler=[]": lambda s: s.update(scaler=[]),
}


@pytest.mark.parametrize("edit", sorted(_MALFORMED))
def test_every_malformed_field_is_one_checkpoint_error(tmp_path, edit):
    state = _state()
    _MALFORMED[edit](state)
    path = save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError):
        load_model(path, "cpu")


def test_predict_cli_refuses_a_malformed_checkpoint_in_one_line(tmp_path, capsys):
    from lowrank.cli import main

    state = _state()
    state["history"] = []
    path = save_checkpoint(tmp_path / "checkpoint.pt", state)
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", str(path), str(tmp_path / "t1.nii.gz"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "history" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("failure", "fragment"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left"),
        (
            RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4480 vs 4374"),
            "no space left",
        ),
        (PermissionError(errno.EACCES, "Permission denied"), "not writable"),
        (OSError(errno.EROFS, "Read-only file system"), "not writable"),
    ],
)
def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure, fragment):
    path = save_checkpoint(tmp_path / "checkpoint.pt", _state())
    before = path.read_bytes()
    save = torch.save

    def failing_save(obj, fh, *args, **kwargs):
        save({"partial": torch.zeros(100)}, fh)  # some bytes reach the temp file first
        raise failure

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(CheckpointError, match=fragment) as info:
        save_checkpoint(path, _state())
    assert "previous checkpoint is kept" in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file left


def test_a_folder_that_cannot_be_created_is_a_checkpoint_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write the checkpoint"):
        save_checkpoint(blocker / "run" / "checkpoint.pt", _state())


def test_stale_temp_files_of_this_checkpoint_only_are_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".checkpoint.pt.abc123.tmp", run / ".checkpoint.pt.x.tmp"]
    keep = [run / ".other.pt.abc.tmp", run / "notes.tmp", tmp_path / ".checkpoint.pt.abc.tmp"]
    for p in stale + keep:
        p.write_bytes(b"partial")
    assert sorted(remove_stale_temp_files(run / "checkpoint.pt")) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


# ------------------------------------------------------------------------ fault injection
def _child(out: Path, steps: int, mode: str = "none", k: int = 0, resume: bool = False) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [
        sys.executable,
        str(CHILD),
        str(out),
        str(steps),
        mode,
        str(k),
        *(["resume"] if resume else []),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode in (0, -signal.SIGKILL), result.stdout + result.stderr
    return result.returncode


def _assert_same_parameters(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert sa["step"] == sb["step"]
    assert sa["model"].keys() == sb["model"].keys()
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    assert json.loads(sa["history"])["loss"] == json.loads(sb["history"])["loss"]


def _resume_until_done(out: Path, steps: int) -> None:
    for _ in range(3):
        if _child(out, steps, resume=(out / "checkpoint.pt").exists()) == 0:
            return
    pytest.fail("the resumed run did not finish")


def test_kill_during_a_checkpoint_write_then_resume_is_exact(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _child(straight, 6) == 0
    assert _child(killed, 6, "write", 2) == -signal.SIGKILL  # halfway through the step-4 checkpoint
    assert load_checkpoint(killed / "checkpoint.pt")["step"] == 2  # the previous one, intact
    assert list(killed.glob(".checkpoint.pt.*.tmp"))  # the killed writer's leftover
    _resume_until_done(killed, 6)
    assert not list(killed.glob(".checkpoint.pt.*.tmp"))  # cleaned when the run started again
    _assert_same_parameters(straight / "checkpoint.pt", killed / "checkpoint.pt")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_kills_at_random_points_then_resume_give_the_uninterrupted_parameters(tmp_path, seed):
    steps = 8
    rng = random.Random(seed)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _child(straight, steps) == 0
    for _ in range(3):  # three kills in a row, each at a random point of the remaining run
        done = load_checkpoint(killed / "checkpoint.pt")["step"] if (killed / "checkpoint.pt").exists() else 0
        left = steps - done
        mode = rng.choice(["step", "write", "rename"])
        k = rng.randint(1, left if mode == "step" else max(1, left // 2))
        _child(killed, steps, mode, k, resume=done > 0)
    _resume_until_done(killed, steps)
    _assert_same_parameters(straight / "checkpoint.pt", killed / "checkpoint.pt")
