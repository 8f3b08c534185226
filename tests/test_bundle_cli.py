"""The MONAI bundle path and the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser

from lowrank import list_parts
from lowrank.cli import main


def test_bundle_builds_a_part_without_expressions():
    config = {
        "conv": {
            "_target_": "lowrank.build_conv",
            "spec": "dense(bias=false)",
            "in_channels": 3,
            "out_channels": 5,
            "kernel_size": 3,
            "spatial_dims": 2,
        }
    }
    parser = ConfigParser(config)
    conv = parser.get_parsed_content("conv")
    assert conv(torch.randn(1, 3, 8, 8)).shape == (1, 5, 6, 6)
    assert conv.conv.bias is None


@pytest.mark.parametrize("name", list_parts("net"))
def test_bundle_builds_every_named_net(name):
    parser = ConfigParser(
        {"net": {"_target_": "lowrank.build_net", "spec": name, "in_channels": 4, "out_channels": 3}}
    )
    with torch.device("meta"):
        net = parser.get_parsed_content("net")
    assert net.spec.name == name


def test_cli_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "conv: " in out and "dense" in out
    assert main(["list", "conv", "--pattern", "den*"]) == 0
    assert "dense" in capsys.readouterr().out


def test_cli_show_reports_a_clear_error(capsys):
    assert main(["show", "densee"]) == 2
    err = capsys.readouterr().err
    assert "invalid spec" in err and "^" in err


def test_cli_show_net_or_block(capsys):
    nets = list_parts("net")
    blocks = list_parts("block")
    if not nets and not blocks:
        pytest.skip("no nets or blocks registered")
    if nets:
        spec = next(n for n in ("unet", *nets) if n in nets)
        assert main(["show", spec, "--in-channels", "1", "--out-channels", "2", "--size", "32", "32"]) == 0
        out = capsys.readouterr().out
        assert "parameters:" in out and "(1, 2, 32, 32)" in out


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "lowrank", "list", "conv"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "dense" in result.stdout
