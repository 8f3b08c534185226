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

Guarantees:

- **atomic**: the file is written to a temp file in the same folder, fsynced and renamed over
  the old one, so a crash, a kill or a full disk leaves the previous checkpoint intact; a
  failed write is one :class:`CheckpointError` naming the cause (no space, read-only folder);
- **integrity**: ``torch.save`` writes a zip archive with a CRC-32 of every entry; reading
  verifies all of them, so flipped bits are refused instead of loading altered weights;
- **schema**: every field is checked (types, JSON contents) before anything uses it: a
  truncated, damaged, edited or foreign file is one :class:`CheckpointError` line;
- **leftovers**: :func:`remove_stale_temp_files` deletes the temp files a killed writer left.
"""

from __future__ import annotations

import errno
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_path, temp_prefix

__all__ = [
    "FORMAT",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "net_info",
    "remove_stale_temp_files",
]

FORMAT = "lowrank.train/1"
_REQUIRED = ("format", "spec", "net", "config", "history", "step", "model", "optimizer", "scheduler", "rng")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, damaged, not from ``lowrank train``, for another
    net, or that cannot be written."""


def remove_stale_temp_files(path: str | Path) -> list[Path]:
    """Delete the temp files that an interrupted :func:`save_checkpoint` of ``path`` left behind.

    Only ``.<name>.*.tmp`` files next to ``path`` (this checkpoint's own temp files in the run's
    folder) are touched. Call it when a run starts, before it writes checkpoints.

    Returns:
        The files removed.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.glob(f"{temp_prefix(path)}*.tmp"):
        try:
            candidate.unlink()
            removed.append(candidate)
        except FileNotFoundError:
            pass
    return removed


def _write_error(path: Path, err: BaseException) -> CheckpointError:
    code = getattr(err, "errno", None)
    text = str(err).lower()
    if code == errno.ENOSPC or "no space" in text or "unexpected pos" in text:
        cause = "no space left on the device: free some space or choose another --out"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS) or isinstance(err, PermissionError):
        cause = "the folder is not writable (read-only or no permission): choose another --out"
    else:
        cause = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    kept = " (the previous checkpoint is kept)" if path.exists() else ""
    return CheckpointError(f"cannot write the checkpoint {path}: {cause}{kept}")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    A reader (or a crash at any moment) sees either the previous file or the new one, never a
    partial write.

    Returns:
        The path written.

    Raises:
        CheckpointError: the file cannot be written (no space left, read-only folder, ...); the
            previous checkpoint, if any, is left as it was and no temp file remains.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_folder(path.parent)
    except (OSError, RuntimeError) as err:
        raise _write_error(path, err) from None
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _verify_archive(path: Path) -> None:
    """Check every entry's CRC-32 (the bytes ``torch.load`` would trust without looking)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"{path} is damaged or not a checkpoint written by `lowrank train` ({first[:200]})"
        ) from None
    if bad is not None:
        raise CheckpointError(
            f"{path} is damaged: the checksum of its entry {bad!r} does not match (bit rot or an "
            "incomplete copy); use another copy of the checkpoint"
        )


def _json_object(state: dict, key: str, path: Path) -> dict:
    try:
        value = json.loads(state[key])
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: the field {key!r} is not valid JSON text") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: the field {key!r} must be a JSON object, got {type(value).__name__}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(state: dict, path: Path) -> None:
    """Types and contents of every field (see the module docstring)."""

    def bad(key: str, what: str) -> CheckpointError:
        got = state.get(key)
        return CheckpointError(f"{path}: the field {key!r} must be {what}, got {type(got).__name__}")

    if not isinstance(state["spec"], str):
        raise bad("spec", "a spec string")
    if not _is_int(state["step"]) or state["step"] < 0:
        raise bad("step", "a non-negative int")
    net = _json_object(state, "net", path)
    for key in ("in_channels", "out_channels", "spatial_dims"):
        if not _is_int(net.get(key)) or net[key] < 1:
            raise CheckpointError(f"{path}: net.{key} must be a positive int, got {net.get(key)!r}")
    for key in ("classes", "patch", "spacing"):
        if key in net and not isinstance(net[key], list):
            raise CheckpointError(f"{path}: net.{key} must be a list, got {type(net[key]).__name__}")
    _json_object(state, "config", path)
    history = _json_object(state, "history", path)
    for key in ("step", "loss", "lr", "val"):
        if not isinstance(history.get(key, []), list):
            raise CheckpointError(f"{path}: history.{key} must be a list, got {type(history[key]).__name__}")
    if any(not isinstance(v, dict) or "metrics" not in v for v in history.get("val", [])):
        raise CheckpointError(f"{path}: history.val must hold {{'step', 'metrics'}} entries")
    model = state["model"]
    if not isinstance(model, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        raise bad("model", "a state dict (parameter names to tensors)")
    optimizer = state["optimizer"]
    if not (
        isinstance(optimizer, dict)
        and isinstance(optimizer.get("state"), dict)
        and isinstance(optimizer.get("param_groups"), list)
        and all(isinstance(g, dict) for g in optimizer["param_groups"])
    ):
        raise bad("optimizer", "an optimizer state dict with 'state' and 'param_groups'")
    if not isinstance(state["scheduler"], dict):
        raise bad("scheduler", "a scheduler state dict")
    if "scaler" in state and not isinstance(state["scaler"], dict):
        raise bad("scaler", "a GradScaler state dict")
    rng = state["rng"]
    if not (
        isinstance(rng, dict)
        and isinstance(rng.get("torch"), torch.Tensor)
        and rng["torch"].dtype == torch.uint8
        and isinstance(rng.get("cuda", []), list)
        and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in rng.get("cuda", []))
    ):
        raise bad("rng", "{'torch': uint8 tensor, 'cuda': [uint8 tensors]}")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on CPU, ``weights_only=True``).

    Raises:
        CheckpointError: missing file, damaged file (a CRC mismatch), unreadable file, not a
            lowrank checkpoint, or a field of the wrong type (one line, naming the field).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    _verify_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is corrupt or not a checkpoint written by `lowrank train` ({first[:200]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a `lowrank train` checkpoint (format {FORMAT!r} with keys {', '.join(_REQUIRED)})"
        )
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint has no {', '.join(repr(k) for k in missing)} entry")
    _check_fields(state, path)
    return state


def net_info(state: dict[str, Any]) -> dict[str, Any]:
    """The ``net`` entry of a checkpoint (channels, dims, classes, spacing, patch, the input
    normalization) as a dict; ``normalize`` is ``"zscore"`` for checkpoints that predate it."""
    from ..data.intensity import LEGACY_NORMALIZATION

    info = json.loads(state["net"])
    info.setdefault("normalize", LEGACY_NORMALIZATION)
    return info
