"""Every ``lowrank`` command as users run it: the installed console script (and ``python -m
lowrank``) in a subprocess, on files the test writes: exit codes, files written, and one clear
error line (exit code 2, nothing written) for the common mistakes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cli_data import FAST, lowrank_command, main_error, one_error_line, run, save, template

from lowrank.train import load_checkpoint, save_checkpoint

nib = pytest.importorskip("nibabel")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step run through ``python -m lowrank train`` and the template saved as NIfTI files."""
    root = tmp_path_factory.mktemp("cli")
    result = run("train", *FAST, "--holdout", "0.5", "0.56", "--out", root / "run", module=True)
    assert result.returncode == 0, result.stderr[-3000:]
    image, label, affine = template()
    save(root / "t1.nii.gz", image, affine)
    save(root / "label.nii.gz", label, affine)
    return root


def test_version_list_show(capsys):
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == "lowrank 0.1.0"
    result = run("list", "solvers")  # plural kinds are accepted
    assert result.returncode == 0 and result.stdout.startswith("solver:") and " nmf " in result.stdout
    assert "block:" not in result.stdout
    result = run("show", "unet(channels=[4, 8])", "--size", "16", "16", "16", module=True)
    assert result.returncode == 0 and "output:     (1, 2, 16, 16, 16)" in result.stdout, result.stderr
    from lowrank.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["list", "solverz"])
    assert exit_info.value.code == 2 and "'solverz' is not a kind of part" in capsys.readouterr().err
    assert main(["show", "unett"]) == 2
    assert capsys.readouterr().err.startswith("lowrank show: invalid spec: 'unett' is not a registered net")


def test_train_writes_the_run_folder(trained):
    out = trained / "run"
    for name in ("checkpoint.pt", "config.json", "metrics.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 2 and config["lr"] == 0.02 and config["out"] == str(out.resolve())
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["dice"]) == {"csf", "gm", "wm"}


def test_predict_and_evaluate_from_the_shell(trained, tmp_path):
    out = tmp_path / "seg.nii.gz"
    result = run(
        "predict", trained / "run" / "checkpoint.pt", trained / "t1.nii.gz", "-o", out, "--overlap", "0"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out}" in result.stdout
    seg, t1 = nib.load(str(out)), nib.load(str(trained / "t1.nii.gz"))
    np.testing.assert_allclose(seg.affine, t1.affine)
    assert seg.shape == t1.shape and np.asarray(seg.dataobj).max() <= 3
    # class names from the checkpoint; two files: nothing written
    result = run("evaluate", out, trained / "label.nii.gz", "--classes", trained / "run" / "checkpoint.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split()[0] for line in result.stdout.splitlines()}
    assert {"csf", "gm", "wm", "mean"} <= rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"]


def test_common_mistakes_give_one_line_and_write_nothing(trained, tmp_path):
    ckpt, t1 = trained / "run" / "checkpoint.pt", trained / "t1.nii.gz"
    image, _, affine = template()
    out = tmp_path / "out" / "seg.nii.gz"
    # arguments swapped: the image first
    assert "the checkpoint comes first" in one_error_line(run("predict", t1, ckpt, "-o", out), "predict")
    # a missing image
    line = one_error_line(run("predict", ckpt, tmp_path / "nope.nii.gz", "-o", out, module=True), "predict")
    assert "no such image file" in line
    # wrong channel count
    two = save(tmp_path / "in" / "two.nii.gz", np.stack([image, image], -1), affine)
    line = one_error_line(run("predict", ckpt, two, "-o", out), "predict")
    assert "2 channel(s), the checkpoint's net expects 1 (T1)" in line
    # a checkpoint of another net
    state = load_checkpoint(ckpt)
    state["spec"] = "unet(channels=[4, 8, 16], deep_supervision=1)"
    other = save_checkpoint(tmp_path / "in" / "other.pt", state)
    assert "do not fit the net" in one_error_line(run("predict", other, t1, "-o", out), "predict")
    assert not (tmp_path / "out").exists()


def test_bad_images_and_outputs_write_nothing(trained, tmp_path, capsys):
    """The same entry point in-process (fast): every check before anything is written."""
    ckpt, t1 = trained / "run" / "checkpoint.pt", trained / "t1.nii.gz"
    image, _, affine = template()
    out = tmp_path / "out" / "seg.nii.gz"
    # one NaN voxel (used to give an all-background prediction with exit code 0)
    bad = image.copy()
    bad[30, 40, 30] = np.nan
    nan = save(tmp_path / "in" / "nan.nii.gz", bad, affine)
    line = main_error(capsys, ["predict", ckpt, nan, "-o", out], "predict")
    assert "1 NaN/Inf voxel(s)" in line and "--nan-to-num" in line
    # a head with its skull (no zero background) for a net trained on a skull-stripped template
    skull = save(tmp_path / "in" / "skull.nii.gz", image + 50.0, affine)
    line = main_error(capsys, ["predict", ckpt, skull, "-o", out], "predict")
    assert "zero background" in line and "--allow-background" in line
    # a 2-D image
    flat = save(tmp_path / "in" / "flat.nii.gz", image[:, :, 40], affine)
    assert "2-D image" in main_error(capsys, ["predict", ckpt, flat, "-o", out], "predict")
    # -o an existing folder, or under a regular file; -i into a file
    assert "is a folder" in main_error(capsys, ["predict", ckpt, t1, "-o", tmp_path], "predict")
    under = nan / "seg.nii.gz"
    assert "is a file, not a folder" in main_error(capsys, ["predict", ckpt, t1, "-o", under], "predict")
    line = main_error(capsys, ["predict", ckpt, "-i", tmp_path / "in", "-o", nan], "predict")
    assert "is a file, not a folder" in line
    # a folder with one bad case: nothing is written for the good ones either
    save(tmp_path / "in2" / "a.nii.gz", image, affine)
    save(tmp_path / "in2" / "b.nii.gz", bad, affine)
    assert "NaN" in main_error(
        capsys, ["predict", ckpt, "-i", tmp_path / "in2", "-o", tmp_path / "out"], "predict"
    )
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == [
        "flat.nii.gz",
        "nan.nii.gz",
        "skull.nii.gz",
    ]
    # train: a missing data folder, an unknown config key
    line = main_error(capsys, ["train", "--data", tmp_path / "nope", "--out", tmp_path / "never"], "train")
    assert "no such file or folder" in line
    config = tmp_path / "run.yaml"
    config.write_text("stesp: 3\n")
    line = main_error(capsys, ["train", "--config", config, "--out", tmp_path / "never"], "train")
    assert "unknown option 'stesp'; did you mean 'steps'" in line
    assert not (tmp_path / "never").exists()


def test_evaluate_refuses_stray_labels_and_nan(trained, tmp_path):
    _, label, affine = template()
    stray = label.astype(np.int32)
    stray[10, 10, 10] = 2**31 - 1  # used to build a one-hot array of 2^31 classes
    pred = save(tmp_path / "stray.nii.gz", stray, affine)
    line = one_error_line(run("evaluate", pred, trained / "label.nii.gz"), "evaluate")
    assert "label value 2147483647 (1 voxel(s) >= 4)" in line
    nan = label.astype(np.float32)
    nan[5, 5, 5] = np.nan
    pred = save(tmp_path / "nan.nii.gz", nan, affine)
    assert "1 NaN/Inf voxel(s)" in one_error_line(run("evaluate", pred, trained / "label.nii.gz"), "evaluate")


SCRIPT = textwrap.dedent(
    """
    import sys
    print("side effect", flush=True)
    from lowrank.cli import main
    sys.argv = ["lowrank", *{argv!r}]
    code = main()
    print("exit", code, flush=True)
    """
)


def _clean_env(**extra) -> dict:
    import os

    from lowrank.runtime import ALLOCATOR_ENV, MARKER

    env = {k: v for k, v in os.environ.items() if k not in (*ALLOCATOR_ENV, MARKER)}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.parametrize("stdin", [False, True], ids=["script", "stdin"])
def test_main_called_from_a_script_never_restarts_the_process(tmp_path, stdin):
    """A user script calling ``lowrank.cli.main()`` runs once, even with the re-exec opted in
    (a restart ran its side effects twice; from stdin it re-read an empty script and did nothing)."""
    argv = [
        "predict",
        str(tmp_path / "missing.pt"),
        "x.nii.gz",
        "-o",
        str(tmp_path / "s.nii.gz"),
        "--retain-memory",
    ]
    code = SCRIPT.format(argv=argv)
    env = _clean_env(LOWRANK_RETAIN_MEMORY="1")
    if stdin:
        result = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, env=env)
    else:
        script = tmp_path / "user_script.py"
        script.write_text(code)
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["side effect", "exit 2"], result.stderr[-3000:]
    assert "no checkpoint at" in result.stderr


def test_retain_memory_restarts_the_console_script_once(tmp_path):
    """``--retain-memory`` (or LOWRANK_RETAIN_MEMORY=1) from the shell: one restart with the
    tunables (glibc); without it, and for a CUDA run: none."""
    import os

    from lowrank.runtime import glibc

    probe = tmp_path / "site"
    probe.mkdir()
    starts = tmp_path / "starts.txt"
    (probe / "sitecustomize.py").write_text(
        "import os\n"
        f"with open({str(starts)!r}, 'a') as fh:\n"
        "    fh.write(str(os.environ.get('MALLOC_MMAP_MAX_')) + '\\n')\n"
    )
    env = _clean_env(PYTHONPATH=os.pathsep.join([str(probe), os.environ.get("PYTHONPATH", "")]))
    # the restart comes first (before any file is read): a missing checkpoint is cheap to run
    args = ["predict", str(tmp_path / "missing.pt"), "x.nii.gz", "-o", str(tmp_path / "s.nii.gz")]

    def launch(*extra, **more_env):
        starts.unlink(missing_ok=True)
        command = [*lowrank_command(), *args, *extra]
        result = subprocess.run(command, capture_output=True, text=True, env={**env, **more_env})
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        return starts.read_text().split()

    assert launch() == ["None"]  # opt-in: no restart by default
    assert launch("--retain-memory") == (["None", "0"] if glibc() else ["None"])


def test_restart_is_asked_by_flag_or_variable_never_for_cuda(monkeypatch):
    """When :func:`_retain_memory` restarts (the console script's case, in-process)."""
    from lowrank.train import cli as train_cli

    calls = []
    monkeypatch.setattr("lowrank.runtime.reexec_with_allocator_env", lambda: calls.append(1))
    monkeypatch.setattr(train_cli, "_launched_as_lowrank", lambda: True)
    monkeypatch.delenv("LOWRANK_RETAIN_MEMORY", raising=False)

    def restarts(retain, device="cpu", command_line=True) -> bool:
        calls.clear()
        args = argparse.Namespace(retain_memory=retain, command_line=command_line)
        train_cli._retain_memory(args, device)
        return bool(calls)

    assert restarts(True) and not restarts(False)
    assert not restarts(True, "cuda")  # never for a CUDA run
    assert not restarts(True, command_line=False)  # main([...]) called with arguments
    monkeypatch.setenv("LOWRANK_RETAIN_MEMORY", "1")
    assert restarts(False)
    monkeypatch.setenv("LOWRANK_RETAIN_MEMORY", "0")
    assert not restarts(False)
    monkeypatch.setattr(train_cli, "_launched_as_lowrank", lambda: False)  # a user's script
    assert not restarts(True)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(trained, tmp_path, capsys, monkeypatch):
    import errno

    def full(img, path):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(nib, "save", full)
    out = tmp_path / "preds" / "seg.nii.gz"
    argv = ["predict", trained / "run" / "checkpoint.pt", trained / "t1.nii.gz", "-o", out, "--overlap", "0"]
    assert "No space left on device" in main_error(capsys, argv, "predict")
    assert list((tmp_path / "preds").iterdir()) == []
