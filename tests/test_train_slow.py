"""The README's default ``lowrank train`` run and its Dice floor (slow: minutes on 2 CPU cores)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_default_run_reaches_the_dice_floor(tmp_path):
    out = tmp_path / "default"
    result = subprocess.run(
        [sys.executable, "-m", "lowrank.train", "train", "--out", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["spec"].startswith("swin_factorizer")
    assert metrics["dice"]["gm"] >= 0.85, metrics
    assert metrics["dice"]["wm"] >= 0.90, metrics
    assert "csf" in metrics["dice"]
    for name in ("checkpoint.pt", "config.json", "curves.png", "overlay.png", "components.png"):
        assert (out / name).is_file(), name
