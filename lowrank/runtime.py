"""Process-level CPU memory tuning for training and inference runs: reuse freed memory.

PyTorch's CPU allocator takes every tensor from ``malloc`` and frees it at once. glibc serves
blocks of 32 MiB and more (a 32-channel 64³ float map is one) with a fresh ``mmap`` and returns
them with ``munmap``, and trims the top of its heap after large frees. So on every step each large
activation is page-faulted in again: the first op writing it pays about a page fault per 4 KiB.
On the 2-core VM of ``bench/README.md`` that is ~0.5 ms per MiB — a 70 MiB window buffer costs
35 ms before a byte is copied, and a Swin Factorizer training step spends a third of its time in
faults.

:func:`retain_freed_memory` asks glibc to serve every block from its heap and never to trim it,
so freed memory is reused warm: the process keeps its peak footprint until the context exits
(then the defaults come back and the heap is trimmed). ``lowrank train`` uses it on CPU
(``--no-retain-memory`` to opt out). It is process-wide: a library call should not switch it on
behind its caller's back, hence a context manager that the caller opts into. Elsewhere than
glibc (macOS, Windows, musl) it does nothing. ``THP_MEM_ALLOC_ENABLE=1`` (PyTorch's transparent
huge pages, read once at start-up) is an environment alternative with a similar effect on faults.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import platform
from collections.abc import Iterator

__all__ = ["retain_freed_memory", "glibc_malloc"]

# mallopt parameters (malloc.h) and glibc's defaults
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_TOP_PAD, _DEFAULT_MMAP_MAX = 128 * 1024, 128 * 1024, 65536
#: retained: no trimming below 2 GiB of free heap top; the heap grows 64 MiB at a time
_RETAIN_TRIM_THRESHOLD, _RETAIN_TOP_PAD = 2**31 - 1, 64 << 20

_active = 0  # nesting depth of retain_freed_memory contexts that changed the settings


@functools.lru_cache(maxsize=1)
def glibc_malloc() -> ctypes.CDLL | None:
    """The C library when it is glibc with ``mallopt`` and ``malloc_trim``, else ``None``."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def _set(libc: ctypes.CDLL, mmap_max: int, trim: int, top_pad: int) -> bool:
    ok = libc.mallopt(_M_MMAP_MAX, mmap_max) == 1
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, trim) == 1
    return ok & (libc.mallopt(_M_TOP_PAD, top_pad) == 1)


@contextlib.contextmanager
def retain_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Keep freed memory in the process heap for reuse while the context is active (glibc).

    Args:
        enabled: ``False`` makes the context a no-op (for a ``--no-retain-memory`` switch).

    Yields:
        Whether the setting is in effect (``False`` off glibc or when disabled).

    Example::

        with retain_freed_memory():
            for batch in loader:
                train_step(batch)
    """
    global _active
    libc = glibc_malloc() if enabled else None
    if libc is None:
        yield False
        return
    if _active == 0 and not _set(libc, 0, _RETAIN_TRIM_THRESHOLD, _RETAIN_TOP_PAD):
        _set(libc, _DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD, _DEFAULT_TOP_PAD)
        yield False
        return
    _active += 1
    try:
        yield True
    finally:
        _active -= 1
        if _active == 0:
            _set(libc, _DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD, _DEFAULT_TOP_PAD)
            libc.malloc_trim(0)
