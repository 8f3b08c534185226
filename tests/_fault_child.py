"""Fault injection for the training tests: run a small ``lowrank train`` in this process and
``SIGKILL`` it at a chosen point (not a test module; the tests run it as a subprocess).

Usage: ``python _fault_child.py OUT STEPS MODE K [resume]`` where MODE is

- ``none``: run to the end;
- ``step``: die when the K-th optimizer step (counted in this process) starts;
- ``write``: die halfway through writing the K-th checkpoint's temp file;
- ``rename``: die after the K-th checkpoint's temp file is complete, before its rename.

The points are reached by replacing module attributes in this process only (dependency
injection); the library has no test hooks.
"""

from __future__ import annotations

import io
import os
import signal
import sys

import torch

import lowrank.train.checkpoint as checkpoint
import lowrank.train.loop as loop
from lowrank.train import TrainConfig

SPEC = "unet(channels=[4, 8], deep_supervision=1)"


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main(out: str, steps: int, mode: str, k: int, resume: bool) -> None:
    calls = {"n": 0}

    def nth() -> bool:
        calls["n"] += 1
        return calls["n"] == k

    if mode == "step":
        forward_backward = loop.forward_backward

        def killing_forward_backward(*args, **kwargs):
            if nth():
                _die()
            return forward_backward(*args, **kwargs)

        loop.forward_backward = killing_forward_backward
    elif mode == "write":
        save = torch.save

        def half_save(obj, fh, *args, **kwargs):
            if not nth():
                return save(obj, fh, *args, **kwargs)
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            fh.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            _die()

        checkpoint.torch.save = half_save
    elif mode == "rename":
        replace = os.replace

        def killing_replace(src, dst, *args, **kwargs):
            if str(dst).endswith("checkpoint.pt") and nth():
                _die()
            return replace(src, dst, *args, **kwargs)

        checkpoint.os.replace = killing_replace
    elif mode != "none":
        raise SystemExit(f"unknown mode {mode!r}")
    cfg = TrainConfig(
        spec=SPEC,
        steps=steps,
        patch=(16, 16, 16),
        batch=2,
        ckpt_every=2,
        val_every=100,
        holdout=(0.5, 0.56),
        lr=0.01,
        report=False,
        quiet=True,
        out=out,
        resume=resume,
    )
    loop.train(cfg)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5:] == ["resume"])
