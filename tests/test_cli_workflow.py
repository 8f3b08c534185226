"""The newcomer's workflow from the shell: a Decathlon-layout dataset with 2 channels and named
classes, ``lowrank train --config run.yaml``, ``lowrank predict -i FOLDER``, ``lowrank evaluate``
per named class; a run's ``config.json`` as ``--config``; ``--resume`` with changed options."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from cli_data import CLASSES, TINY, main_error, make_cases, run, write_decathlon, write_nnunet

from lowrank.train import load_checkpoint


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflow")
    cases = make_cases(7, size=(32, 32, 32))
    write_decathlon(root / "Task01", cases[:5])
    write_nnunet(root / "Task01", cases[5:], split="Ts")  # test cases: imagesTs/CASE_000c, labelsTs/
    config = root / "run.yaml"
    config.write_text(
        "\n".join(
            [
                f"spec: '{TINY}'",
                "data: Task01",
                "fold: 0",
                "steps: 3",
                "patch: [16, 16, 16]",
                "batch: 1",
                "overlap: 0.0",
                "report: false",
                "out: runs/task01",
            ]
        )
        + "\n"
    )
    result = run("train", "--config", config, "--steps", "4", cwd=root)  # a flag overrides the file
    assert result.returncode == 0, result.stderr[-3000:]
    (root / "train.out").write_text(result.stdout)
    return root


def test_train_with_a_config_file_on_a_decathlon_dataset(workflow):
    out = workflow / "runs" / "task01"
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 4 and config["fold"] == 0 and config["data"] == str(workflow / "Task01")
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["dice"]) == list(CLASSES[1:]) and metrics["channels"] == ["T1", "T1inv"]
    assert metrics["validation"].startswith("fold 0 of 5: 1 held-out case(s) (case")
    state = load_checkpoint(out / "checkpoint.pt")
    net = json.loads(state["net"])
    assert net["in_channels"] == 2 and net["classes"] == list(CLASSES) and net["spacing"] == [2.0, 2.0, 2.0]
    # the end-of-run summary names the classes and the validation cases
    summary = (workflow / "train.out").read_text()
    assert "validation: fold 0 of 5" in summary
    assert "5 case(s), channels T1, T1inv; classes background, csf, gm, wm; voxels 2×2×2 mm" in summary
    assert [
        line.split()[0] for line in summary.splitlines() if line.startswith(" csf") or line.startswith(" wm")
    ] == [
        "csf",
        "wm",
    ]


def test_predict_a_folder_then_evaluate_it_per_named_class(workflow):
    ckpt = workflow / "runs" / "task01" / "checkpoint.pt"
    preds = workflow / "preds"
    result = run("predict", ckpt, "-i", workflow / "Task01" / "imagesTs", "-o", preds, "--overlap", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in preds.iterdir()) == ["case05.nii.gz", "case06.nii.gz"]
    for name in ("case05", "case06"):
        seg = nib.load(str(preds / f"{name}.nii.gz"))
        ref = nib.load(str(workflow / "Task01" / "labelsTs" / f"{name}.nii.gz"))
        np.testing.assert_allclose(seg.affine, ref.affine)
        assert seg.shape == ref.shape
    # the class names come from the dataset.json next to labelsTs/
    result = run("evaluate", preds, workflow / "Task01" / "labelsTs")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split()[0] for line in result.stdout.splitlines()[1:5]] == ["csf", "gm", "wm", "mean"]
    summary = json.loads((preds / "summary.json").read_text())
    assert summary["classes"] == list(CLASSES) and [c["case"] for c in summary["cases"]] == [
        "case05.nii.gz",
        "case06.nii.gz",
    ]
    rows = list(csv.DictReader((preds / "metrics.csv").open()))
    assert [(r["case"], r["class"]) for r in rows[:3]] == [("case05.nii.gz", c) for c in CLASSES[1:]]
    # the mean row is the mean of the cases (an independent recomputation from the CSV)
    for c in CLASSES[1:]:
        dice = [float(r["dice"]) for r in rows if r["class"] == c and r["case"] != "mean"]
        mean = next(float(r["dice"]) for r in rows if r["class"] == c and r["case"] == "mean")
        assert mean == pytest.approx(np.mean(dice), abs=1e-6)
        assert summary["mean"][c]["dice"] == pytest.approx(mean, abs=1e-6)
    # a perfect prediction scores Dice 1 for every class
    from lowrank.cli import main

    labels = workflow / "Task01" / "labelsTs"
    assert main(["evaluate", str(labels), str(labels), "-o", str(workflow / "p.json")]) == 0
    assert all(m["dice"] == 1.0 for m in json.loads((workflow / "p.json").read_text())["mean"].values())


def test_config_json_reproduces_the_run(workflow):
    """A run's config.json is a valid --config: the same options give the same weights."""
    out = workflow / "runs" / "task01"
    again = workflow / "again"
    result = run("train", "--config", out / "config.json", "--out", again)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = load_checkpoint(out / "checkpoint.pt")["model"], load_checkpoint(again / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    first, second = (
        json.loads((out / "config.json").read_text()),
        json.loads((again / "config.json").read_text()),
    )
    assert {k: v for k, v in first.items() if k != "out"} == {k: v for k, v in second.items() if k != "out"}


def test_resume_honours_steps_and_lr_and_refuses_the_rest(workflow, capsys):
    out = workflow / "runs" / "task01"
    line = main_error(capsys, ["train", "--resume", "--out", out, "--steps", "2"], "train")
    assert "has already 4 steps, --steps 2 is fewer" in line
    line = main_error(capsys, ["train", "--resume", "--out", out, "--batch", "2"], "train")
    assert "trained with --batch 1, this run asks 2" in line and "--steps" in line
    before = load_checkpoint(out / "checkpoint.pt")
    result = run("train", "--resume", "--out", out, "--steps", "6", "--lr", "1e-3", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 6 and json.loads(state["config"])["lr"] == 1e-3
    assert (
        json.loads((out / "config.json").read_text())["lr"]
        == 1e-3
        == json.loads((out / "config.json").read_text())["lr"]
    )
    history = json.loads(state["history"])
    old = json.loads(before["history"])
    assert history["lr"][:4] == old["lr"][:4]  # the first 4 steps are kept as they were
    assert max(history["lr"][4:]) <= 1e-3 < max(old["lr"])  # the new peak applies from step 5 on
