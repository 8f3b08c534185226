"""Atomic file writes: the one temp-file-and-rename used by every file ``lowrank`` writes.

A reader, or a crash at any moment, sees the previous file or the new one, never a part of it
(checkpoints, reports, predictions, exported models).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "temp_prefix"]


def temp_prefix(path: Path) -> str:
    """The name prefix of :func:`atomic_path`'s temp files for ``path`` (to find stale ones)."""
    return f".{path.name}."


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """A temp path in ``path``'s folder to write to; renamed over ``path`` when the block succeeds.

    The folder is created if needed. On success the file gets mode 0644 (``mkstemp`` creates
    0600) and replaces ``path``; if the block raises, the temp file is removed and ``path`` is
    left as it was.

    Args:
        path: the file to write.
        suffix: the temp file's suffix (writers that pick a format by extension need the real
            one, e.g. ``.nii.gz``).

    Yields:
        The temp file's path (it exists, empty).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
