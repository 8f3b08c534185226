"""Process-level CPU memory tuning for training and inference runs: reuse freed memory.

PyTorch's CPU allocator takes every tensor from ``malloc`` and frees it at once. glibc serves
blocks of 32 MiB and more (a 32-channel 64³ float map is one) with a fresh ``mmap`` and returns
them with ``munmap``, and trims the top of its heap after large frees; PyTorch's 64-byte aligned
requests also fragment the heap so that a freed block often cannot serve the next request of
the same size. So on every step most large activations are page-faulted in again, and the
first op that writes one pays a fault per 4 KiB page, a large share of a CPU training step
at 1×4×64³.

glibc reads its tunables once, at process start: with :data:`ALLOCATOR_ENV` (no ``mmap``, no
trimming, the heap grown 256 MiB at a time) freed memory is reused warm and the same step takes
no fault at all. Setting them with ``mallopt`` in a running process does not work as well
(the heap already holds the interpreter's blocks), so :func:`reexec_with_allocator_env` restarts
the process itself with the variables set. That is opt-in: ``lowrank train --retain-memory`` /
``lowrank predict --retain-memory`` (or
``LOWRANK_RETAIN_MEMORY=1``) restart once on glibc, only when run from the shell as ``lowrank``
or ``python -m lowrank`` (never when :func:`lowrank.cli.main` is called from a script, which
would run the script's own code twice), and never for a CUDA run. The default run (24³
patches, tensors below glibc's mmap threshold) gains nothing from it.
The process keeps its peak footprint until it exits. Elsewhere (macOS, Windows, musl) nothing
changes. Without a restart, export the variables before Python starts
(``export $(python -m lowrank.runtime)``), or set ``THP_MEM_ALLOC_ENABLE=1`` (PyTorch's
transparent huge pages: 4 KiB faults become 2 MiB ones).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence

__all__ = ["ALLOCATOR_ENV", "allocator_env_active", "glibc", "reexec_with_allocator_env"]

#: glibc malloc tunables of a run: serve every block from the heap, never trim it, grow it
#: 256 MiB at a time (only touched pages count towards the resident size)
ALLOCATOR_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
    "MALLOC_TOP_PAD_": str(256 << 20),
}
#: set in the restarted process (and to opt out: any value stops the restart)
MARKER = "LOWRANK_ALLOCATOR_ENV"


def glibc() -> bool:
    """Whether this process runs on Linux with glibc (whose malloc reads :data:`ALLOCATOR_ENV`)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def allocator_env_active() -> bool:
    """Whether this process started with every variable of :data:`ALLOCATOR_ENV` set."""
    return all(os.environ.get(key) is not None for key in ALLOCATOR_ENV)


def reexec_with_allocator_env(argv: Sequence[str] | None = None) -> None:
    """Restart this process with :data:`ALLOCATOR_ENV` set (glibc; at most once; else a no-op).

    Call it first thing in a command-line entry point, before any work: the process image is
    replaced (same PID, arguments and environment plus the tunables), so a ``torchrun`` worker
    stays the same worker. Nothing happens off glibc, when the variables are already set, or
    when ``LOWRANK_ALLOCATOR_ENV`` is set (the restarted process has it; set it to opt out).

    Args:
        argv: the command line to run again; default ``sys.orig_argv`` (the interpreter and
            its own options included).
    """
    if not glibc() or allocator_env_active() or os.environ.get(MARKER) is not None:
        return
    args = list(sys.orig_argv if argv is None else argv)
    env = {**os.environ, **ALLOCATOR_ENV, MARKER: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, env)


if __name__ == "__main__":  # `export $(python -m lowrank.runtime)`
    print(" ".join(f"{key}={value}" for key, value in ALLOCATOR_ENV.items()))
