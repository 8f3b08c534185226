"""The part contract, checked for every registered part without per-part test code.

For each part: it builds from its bare name (also on the ``meta`` device, so full-size
configurations cost no memory); its ``test_spec`` runs forward and backward on a small input
in each supported dimensionality and dtype with finite outputs and gradients; ``repr`` shows its
spec; ``state_dict`` loads into a fresh instance with identical outputs; ``copy.deepcopy`` gives
an identical module.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lowrank import list_parts
from lowrank.build import build
from lowrank.registry import PartInfo, get_part_info

CHANNELS = 16
SOLVER_SHAPE = (2, 6, 20)


def _infos() -> list[PartInfo]:
    return [get_part_info(*entry.split(":")) for entry in list_parts()]


def _id(info: PartInfo) -> str:
    return f"{info.kind}:{info.name}"


INFOS = _infos()


def _spec(info: PartInfo) -> str:
    if info.kind in ("init", "update"):
        return info.test_spec or f"nmf(rank=2, {info.kind}={info.name})"
    return info.test_spec or info.name


def make(info: PartInfo, spec: str, dims: int):
    """Build a part of any kind with the context its kind needs."""
    kind = info.kind
    if kind in ("solver", "init", "update"):
        return build("solver", spec)
    if kind in ("matricize", "block"):
        return build(kind, spec, channels=CHANNELS, spatial_dims=dims)
    if kind == "conv":
        return build(kind, spec, in_channels=4, out_channels=6, kernel_size=3, spatial_dims=dims, padding=1)
    if kind == "net":
        return build(kind, spec, in_channels=2, out_channels=3, spatial_dims=dims)
    raise AssertionError(f"no contract for kind {kind!r}")


def make_input(info: PartInfo, dims: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    size = (info.test_size,) * dims
    if info.kind in ("solver", "init", "update"):
        x = torch.randn(*SOLVER_SHAPE, generator=generator).relu()
    elif info.kind in ("matricize", "block"):
        x = torch.randn(2, CHANNELS, *size, generator=generator)
    elif info.kind == "conv":
        x = torch.randn(2, 4, *size, generator=generator)
    else:
        x = torch.randn(1, 2, *size, generator=generator)
    return x.to(dtype)


def run(info: PartInfo, module, x):
    """Forward; seeded so that parts with per-call random inits are reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        if info.kind == "matricize":
            matrices, ctx = module(x)
            return module.inverse(matrices, ctx)
        return module(x)


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _dims(info: PartInfo) -> list[int]:
    return [1] if info.kind in ("solver", "init", "update") else list(info.dims)


CASES = [
    pytest.param(info, d, dtype, id=f"{_id(info)}-{d}d-{str(dtype).removeprefix('torch.')}")
    for info in INFOS
    for d in _dims(info)
    for dtype in info.dtypes
    if dtype in (torch.float32, torch.float64)
]


@pytest.mark.parametrize("info", INFOS, ids=_id)
def test_builds_from_default_spec(info):
    dims = _dims(info)[0]
    default = info.name if info.kind not in ("init", "update") else _spec(info)
    with torch.device("meta"):
        module = make(info, default, dims)
    params = list(module.parameters())
    assert all(p.device.type == "meta" for p in params)
    if info.kind != "net":  # nets at full size are only built on meta
        module = make(info, default, dims)
    head = repr(module).split("\n  (")[0]  # the module's own line(s), before its children
    assert head.count(f"spec={module.spec}") == 1, head


@pytest.mark.parametrize(("info", "dims", "dtype"), CASES)
def test_forward_backward_finite(info, dims, dtype):
    module = make(info, _spec(info), dims).to(dtype)
    module.train()
    x = make_input(info, dims, dtype).requires_grad_(True)
    out = run(info, module, x)
    tensors = _tensors(out)
    assert tensors, "the forward returned no tensor"
    for t in tensors:
        assert t.dtype == dtype
        assert torch.isfinite(t).all(), "non-finite output"
    if info.kind in ("solver", "init", "update", "matricize", "block"):
        assert tensors[0].shape == x.shape
    loss = sum((t.float() ** 2).mean() for t in tensors if t.requires_grad)
    if not isinstance(loss, torch.Tensor):
        pytest.skip("output does not depend on anything differentiable")
    loss.backward()
    grads = [x.grad] + [p.grad for p in module.parameters() if p.grad is not None]
    for g in grads:
        if g is not None:
            assert torch.isfinite(g).all(), "non-finite gradient"
    if info.kind == "net":
        module.eval()
        with torch.no_grad():
            out = run(info, module, x)
        assert isinstance(out, torch.Tensor), "a net returns one tensor in eval mode"
        assert out.shape == (x.shape[0], 3, *x.shape[2:])


@pytest.mark.parametrize("info", INFOS, ids=_id)
def test_state_dict_round_trip_and_deepcopy(info):
    dims = _dims(info)[0]
    module = make(info, _spec(info), dims).eval()
    x = make_input(info, dims, torch.float32)
    with torch.no_grad():
        # snapshot before any forward: stateful parts (counters, EMA buffers) must continue alike
        fresh = make(info, _spec(info), dims).eval()
        fresh.load_state_dict(module.state_dict())
        clone = copy.deepcopy(module)
        expected = _tensors(run(info, module, x))
        for other in (fresh, clone):
            for a, b in zip(expected, _tensors(run(info, other, x)), strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert clone.spec == module.spec
