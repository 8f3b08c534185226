"""Training and prediction as GPU users run them, checked on a CPU: no host sync in the hot loop,
patches from DataLoader workers (same batches for any worker count), AMP/compile/cudnn
defaults, ``--device auto``, sharded DDP validation (tests/test_train_ddp.py)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lowrank import build_solver
from lowrank.data import PatchSampler, load_template, patch_loader, split_slab
from lowrank.solvers.cd import ridge_coefficients
from lowrank.train import TrainConfig, train

TINY = "unet(channels=[4, 8], deep_supervision=1)"
FAST = {"patch": (16, 16, 16), "batch": 1, "quiet": True, "overlap": 0.0, "sw_batch": 8, "report": False}


#: ops whose output size depends on the data: on a GPU each waits for the device
DATA_DEPENDENT = {"nonzero", "masked_select", "unique_dim", "_unique2", "unique_consecutive"}


class SyncCounter(TorchDispatchMode):
    """Counts host syncs a GPU would make: ``aten._local_scalar_dense`` (every ``.item()``,
    ``float()``, ``bool()`` of a tensor), ops with data-dependent output shapes, and boolean-mask
    indexing."""

    def __init__(self):
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if func is torch.ops.aten._local_scalar_dense.default or name in DATA_DEPENDENT:
            self.syncs += 1
        elif name == "index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else [])
        ):
            self.syncs += 1
        return func(*args, **(kwargs or {}))


def _syncs_of_a_run(tmp_path, monkeypatch, steps: int) -> int:
    # the patches come from a worker process (not counted here: it is not the training process);
    # validation (data-dependent metrics on the CPU) is left out
    from lowrank.train import loop

    fixed = {c: {"dice": 0.5, "hd95": 1.0} for c in ("csf", "gm", "wm")}
    monkeypatch.setattr(loop, "validate", lambda *args, **kwargs: fixed)
    cfg = TrainConfig(
        spec=TINY,
        steps=steps,
        workers=1,
        log_every=100,
        val_every=100,
        out=str(tmp_path / str(steps)),
        **FAST,
    )
    with SyncCounter() as counter:
        train(cfg)
    return counter.syncs


def test_the_training_step_makes_no_host_sync(tmp_path, monkeypatch):
    """The syncs of a run do not grow with its steps (the old loop made 2 per step: the
    non-finite check and ``float(loss)``); the losses are read back every --log-every steps."""
    assert _syncs_of_a_run(tmp_path, monkeypatch, 7) == _syncs_of_a_run(tmp_path, monkeypatch, 2)


def test_batches_and_losses_do_not_depend_on_workers_or_log_interval(tmp_path):
    one = train(TrainConfig(spec=TINY, steps=4, workers=0, log_every=1, out=str(tmp_path / "a"), **FAST))
    two = train(TrainConfig(spec=TINY, steps=4, workers=2, log_every=3, out=str(tmp_path / "b"), **FAST))
    history = [torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)["history"] for d in "ab"]
    import json

    losses = [json.loads(h)["loss"] for h in history]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    assert one["dice"] == two["dice"]


def test_loader_batches_equal_the_sampler_for_any_workers_and_start():
    sampler = PatchSampler(split_slab(load_template())[0], (8, 8, 8), seed=3)
    expected = [sampler.batch(s, 2, rank=1, world_size=2) for s in range(2, 6)]
    for workers in (0, 2):
        loader = patch_loader(sampler, start=2, steps=6, batch_size=2, rank=1, world_size=2, workers=workers)
        got = list(loader)
        assert len(got) == 4
        for (x, y), (ex, ey) in zip(got, expected, strict=True):
            assert torch.equal(x, ex) and torch.equal(y, ey)
    other = PatchSampler(split_slab(load_template())[0], (8, 8, 8), seed=4)
    assert not torch.equal(next(iter(patch_loader(other, start=2, steps=3, batch_size=2)))[0], expected[0][0])


class _SeedProbe:
    """A stand-in sampler whose 'batch' is the worker's RNG state."""

    seed = 5

    def batch(self, step, batch_size, *, rank=0, world_size=1):
        info = torch.utils.data.get_worker_info()
        return torch.tensor([info.id, torch.initial_seed() % 2**62, np.random.randint(2**31), step])


def test_worker_seeds_are_deterministic_per_seed_worker_and_rank():
    state = torch.get_rng_state()

    def seeds(rank):
        loader = patch_loader(_SeedProbe(), start=0, steps=4, batch_size=1, rank=rank, workers=2)
        return {int(b[0]): (int(b[1]), int(b[2])) for b in loader}

    first = seeds(0)
    assert first == seeds(0) and len(set(first.values())) == 2  # per worker, reproducible
    assert set(seeds(1).values()).isdisjoint(first.values())  # another rank: other seeds
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG is not read


def test_amp_auto_is_bf16_on_cuda_and_none_on_cpu():
    assert TrainConfig().amp == "auto"
    assert TrainConfig().resolved(1e-3, (2.0,) * 3, torch.device("cpu")).amp is None
    assert TrainConfig().resolved(1e-3, (2.0,) * 3, torch.device("cuda", 0)).amp == "bf16"
    assert TrainConfig(amp="fp16").resolved(1e-3, (2.0,) * 3, torch.device("cuda")).amp == "fp16"
    assert TrainConfig(amp="none").resolved(1e-3, (2.0,) * 3, torch.device("cuda")).amp is None
    assert TrainConfig(amp="bf16").resolved(1e-3, (2.0,) * 3, torch.device("cpu")).amp == "bf16"
    with pytest.raises(ValueError, match="--workers"):
        TrainConfig(workers=-1)
    with pytest.raises(ValueError, match="--log-every"):
        TrainConfig(log_every=0)


def test_compile_wraps_the_training_net_and_cudnn_benchmark_is_left_as_found(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(module, **kwargs):
        compiled.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    before = torch.backends.cudnn.benchmark
    train(TrainConfig(spec=TINY, steps=1, compile=True, out=str(tmp_path / "c"), **FAST))
    assert len(compiled) == 1
    train(TrainConfig(spec=TINY, steps=1, out=str(tmp_path / "n"), **FAST))
    assert len(compiled) == 1  # not without --compile
    assert torch.backends.cudnn.benchmark == before  # set on CUDA runs only, and restored


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    eager = train(TrainConfig(spec=TINY, steps=2, out=str(tmp_path / "e"), **FAST))
    compiled = train(TrainConfig(spec=TINY, steps=2, compile=True, out=str(tmp_path / "c"), **FAST))
    for name, value in eager["dice"].items():
        assert compiled["dice"][name] == pytest.approx(value, abs=0.02)


def test_predict_device_auto_is_cuda_when_available(monkeypatch):
    from lowrank.cli import build_parser
    from lowrank.train import cli as train_cli
    from lowrank.train.predict import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda") and pick_device(None).type == "cuda"
    assert pick_device("cpu") == torch.device("cpu")
    args = build_parser().parse_args(["predict", "ckpt.pt", "x.nii.gz", "-o", "s.nii.gz"])
    assert args.device == "auto"
    # the glibc allocator restart never happens for a run that will be on CUDA
    calls = []
    monkeypatch.setattr("lowrank.runtime.reexec_with_allocator_env", lambda: calls.append(1))
    monkeypatch.setattr(train_cli, "_launched_as_lowrank", lambda: True)
    for device in ("auto", None, "cuda"):
        train_cli._retain_memory(argparse.Namespace(retain_memory=True, command_line=True), device)
    assert calls == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        pick_device("cuda")
    train_cli._retain_memory(argparse.Namespace(retain_memory=True, command_line=True), "auto")
    assert calls == [1]  # a CPU run does restart when asked


def test_cd_ridge_coefficients_make_no_host_sync():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 40, generator=g, dtype=torch.float64).requires_grad_()
    d = torch.nn.functional.normalize(torch.randn(2, 16, 4, generator=g, dtype=torch.float64), dim=-2)
    with SyncCounter() as counter:
        v = ridge_coefficients(x, d, 0.1)
        v.sum().backward()
        solver = build_solver("cd(rank=4, iters=3)")
        solver(x.detach().float().abs().requires_grad_()).sum().backward()
    assert counter.syncs == 0
    eye = torch.eye(4, dtype=torch.float64)
    expected = torch.linalg.solve(d.mT @ d + 0.1 * eye, d.mT @ x.detach()).mT
    torch.testing.assert_close(v.detach(), expected)
    # a tiny ridge on rank-deficient concepts stays finite; non-finite input gives NaN, not garbage
    flat = d[..., :1].expand(2, 16, 4)
    assert torch.isfinite(ridge_coefficients(x.detach(), flat, 1e-300)).all()
    bad = d.clone()
    bad[0, 0, 0] = float("inf")
    out = ridge_coefficients(x.detach(), bad, 0.1)
    assert out[0].isnan().all() and torch.isfinite(out[1]).all()
