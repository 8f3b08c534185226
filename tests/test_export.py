"""Export (issue 19.3): every registered net through torch.export and ONNX (onnxruntime within
1e-4 of eager on a crop of the embedded template), TorchScript's one clear error, and
``lowrank export`` through the console script."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from lowrank import build_net, list_parts
from lowrank.data import load_template
from lowrank.export import TorchScriptError, example_input, export_checkpoint, export_model
from lowrank.registry import get_part_info
from lowrank.train import save_checkpoint
from lowrank.train.checkpoint import FORMAT

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

NETS = sorted(list_parts("net"))


def _net(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    info = get_part_info("net", name)
    torch.manual_seed(0)
    net = build_net(info.test_spec or name, 1, 4).eval()
    return net, _crop(info.test_size)


def _crop(size: int) -> torch.Tensor:
    """A ``size³`` crop of the embedded template around its center (real intensities)."""
    image = torch.from_numpy(load_template().image)
    c = [s // 2 for s in image.shape[1:]]
    crop = image[:, c[0] - size // 2 :, c[1] - size // 2 :, c[2] - size // 2 :][:, :size, :size, :size]
    return crop.unsqueeze(0).contiguous()


def _onnx(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("name", NETS)
def test_every_net_exports_to_onnx_within_1e_4(name, tmp_path):
    net, x = _net(name)
    assert x.abs().amax() > 0.5  # brain tissue, not background
    with torch.no_grad():
        eager = net(x)
    result = export_model(net, tmp_path / "net.onnx", x, metadata={"spec": str(net.spec)})
    assert result["max_abs_error"] is not None and result["max_abs_error"] <= 1e-4
    got = _onnx(tmp_path / "net.onnx", x)
    assert got.shape == eager.shape
    torch.testing.assert_close(got, eager, rtol=0, atol=1e-4)
    session = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["lowrank.spec"] == str(net.spec)


@pytest.mark.parametrize("name", NETS)
def test_every_net_exports_through_torch_export(name, tmp_path):
    net, x = _net(name)
    with torch.no_grad():
        eager = net(x)
    export_model(net, tmp_path / "net.pt2", x)
    extra = {"lowrank.json": ""}
    program = torch.export.load(tmp_path / "net.pt2", extra_files=extra)
    torch.testing.assert_close(program.module()(x), eager, rtol=0, atol=1e-5)
    assert json.loads(extra["lowrank.json"])["input_shape"] == list(x.shape)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["swin_factorizer", "ham_segnet"])
def test_torchscript_one_clear_error_and_ts_through_torch_export(name, tmp_path):
    net, x = _net(name)
    with pytest.raises(TorchScriptError, match=r"torch\.jit\.script .*lowrank export"):
        torch.jit.script(net)
    with pytest.raises(TorchScriptError, match=r"torch\.jit\.trace .*lowrank export"), torch.no_grad():
        torch.jit.trace(net, x, check_trace=False)
    result = export_model(net, tmp_path / "net.ts", x)  # the torch.export program, traced
    assert result["max_abs_error"] <= 1e-5
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "net.ts"))(x), net(x), rtol=0, atol=1e-5)


def test_bad_suffix_is_refused_before_anything_is_written(tmp_path):
    net, x = _net("unet")
    with pytest.raises(ValueError, match=r"\*\.onnx"):
        export_model(net, tmp_path / "net.bin", x)
    assert list(tmp_path.iterdir()) == []


def test_example_input_crops_the_template_and_pads():
    x = example_input(1, (200, 8, 8))
    assert x.shape == (1, 1, 200, 8, 8) and x.abs().amax() > 0.5
    assert (x[0, 0, 150:] == 0).all()  # the template is 75 voxels along x: padded with zeros
    assert example_input(2, (4, 4)).shape == (1, 2, 4, 4)  # no template for 2 channels: noise


SPEC = "swin_factorizer(channels=[8, 16], head_dim=4, patch=4, iters=2, pos_embed_size=none)"


def _checkpoint(path, spec: str = SPEC):
    torch.manual_seed(0)
    net = build_net(spec, 1, 4)
    info = {
        "in_channels": 1,
        "out_channels": 4,
        "spatial_dims": 3,
        "patch": [16, 16, 16],
        "classes": ["background", "csf", "gm", "wm"],
        "spacing": [2.0, 2.0, 2.0],
    }
    optimizer = torch.optim.AdamW(net.parameters())
    state = {
        "format": FORMAT,
        "spec": spec,
        "net": json.dumps(info),
        "config": json.dumps({"spec": spec}),
        "history": json.dumps({"step": [], "loss": [], "lr": [], "val": []}),
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0).state_dict(),
        "rng": {"torch": torch.get_rng_state(), "cuda": []},
        "step": 1,
    }
    save_checkpoint(path, state)
    return net.eval()


def test_export_checkpoint_function_pt2(tmp_path):
    net = _checkpoint(tmp_path / "checkpoint.pt")
    result = export_checkpoint(tmp_path / "checkpoint.pt", tmp_path / "model.pt2")
    assert result["input_shape"] == [1, 1, 16, 16, 16]
    x = example_input(1, (16, 16, 16))
    with torch.no_grad():
        torch.testing.assert_close(
            torch.export.load(tmp_path / "model.pt2").module()(x), net(x), rtol=0, atol=1e-5
        )


@pytest.mark.skipif(shutil.which("lowrank") is None, reason="the lowrank console script is not installed")
def test_lowrank_export_cli_onnx(tmp_path):
    net = _checkpoint(tmp_path / "checkpoint.pt")
    out = tmp_path / "model.onnx"
    cmd = ["lowrank", "export", str(tmp_path / "checkpoint.pt"), "-o", str(out), "--size", "8", "8", "12"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrote" in result.stdout and "(1, 1, 8, 8, 12)" in result.stdout
    x = example_input(1, (8, 8, 12))
    with torch.no_grad():
        torch.testing.assert_close(_onnx(out, x), net(x), rtol=0, atol=1e-4)
    meta = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert json.loads(meta.custom_metadata_map["lowrank.classes"]) == ["background", "csf", "gm", "wm"]


@pytest.mark.skipif(shutil.which("lowrank") is None, reason="the lowrank console script is not installed")
def test_lowrank_export_cli_errors(tmp_path):
    _checkpoint(tmp_path / "checkpoint.pt")
    bad = subprocess.run(
        ["lowrank", "export", str(tmp_path / "checkpoint.pt"), "-o", str(tmp_path / "model.bin")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "*.onnx" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run(
        ["lowrank", "export", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "model.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 2 and "no checkpoint" in missing.stderr and "Traceback" not in missing.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_default_training_net_onnx_at_32(tmp_path):
    """The default ``lowrank train`` net on a 32³ crop (where the onnxscript optimizer gave 0/0)."""
    from lowrank.train.config import DEFAULT_SPEC

    torch.manual_seed(0)
    net = build_net(DEFAULT_SPEC, 1, 4).eval()
    x = example_input(1, (32, 32, 32))
    export_model(net, tmp_path / "net.onnx", x)
    with torch.no_grad():
        torch.testing.assert_close(_onnx(tmp_path / "net.onnx", x), net(x), rtol=0, atol=1e-4)
