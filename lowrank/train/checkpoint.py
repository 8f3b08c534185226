"""Checkpoints: written atomically, read with ``weights_only=True``, checked before use.

A checkpoint is a plain dict of tensors, numbers and strings (so ``torch.load(...,
weights_only=True)`` reads it without unpickling code)::

    format     "lowrank.train/1"
    spec       the net's spec string (str(spec))
    net        JSON: in_channels, out_channels, spatial_dims, classes, spacing, patch
    config     JSON: the training configuration
    history    JSON: loss and validation curves so far
    step       the number of finished optimizer steps
    model, optimizer, scheduler, scaler   state dicts (scaler may be absent)
    rng        {"torch": ByteTensor, "cuda": [ByteTensor, ...]}
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint", "net_info"]

FORMAT = "lowrank.train/1"
_REQUIRED = ("format", "spec", "net", "model", "step")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, not from ``lowrank train``, or for another net."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    A reader (or a crash at any moment) sees either the previous file or the new one, never a
    partial write.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on CPU, ``weights_only=True``).

    Raises:
        CheckpointError: missing file, unreadable/corrupt file, or not a lowrank checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is corrupt or not a checkpoint written by `lowrank train` ({first[:200]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or any(k not in state for k in _REQUIRED):
        raise CheckpointError(
            f"{path} is not a `lowrank train` checkpoint (format {FORMAT!r} with keys {', '.join(_REQUIRED)})"
        )
    return state


def net_info(state: dict[str, Any]) -> dict[str, Any]:
    """The ``net`` entry of a checkpoint (channels, dims, classes, spacing, patch) as a dict."""
    return json.loads(state["net"])
