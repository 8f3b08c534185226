"""``lowrank.runtime.retain_freed_memory``: glibc keeps freed blocks in its heap, then lets go."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lowrank.runtime import glibc_malloc, retain_freed_memory

# run in a fresh interpreter: the malloc settings are process-wide
PROBE = textwrap.dedent(
    """
    import ctypes, json, torch
    from lowrank.runtime import retain_freed_memory

    class Info(ctypes.Structure):  # struct mallinfo2 (glibc >= 2.33)
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Info

    def rss_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 >> 20

    def cycle():
        t = torch.ones(64 << 18)  # 64 MiB
        mapped = libc.mallinfo2().hblkhd  # bytes in mmap-ed blocks while it lives
        del t
        return {"mapped_mib": mapped >> 20, "free_heap_mib": libc.mallinfo2().fordblks >> 20,
                "rss_mib": rss_mib()}

    out = {"before": cycle()}
    with retain_freed_memory() as on:
        out["on"] = on
        out["inside"] = cycle()
        with retain_freed_memory() as nested:
            out["nested"] = nested
        out["after_nested"] = cycle()
    out["released_rss_mib"] = rss_mib()
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(glibc_malloc() is None, reason="glibc only")
def test_freed_memory_is_kept_in_the_heap_inside_the_context_only():
    import json

    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["on"] and out["nested"]
    # default glibc: a 64 MiB tensor is an mmap-ed block, returned at once
    assert out["before"]["mapped_mib"] >= 64 and out["before"]["free_heap_mib"] < 64
    # inside: served from the heap and kept there after the free (also after a nested exit)
    for key in ("inside", "after_nested"):
        assert out[key]["mapped_mib"] < 64 and out[key]["free_heap_mib"] >= 64, key
    # kept: resident after the free; on exit the heap is trimmed (the pages go back)
    assert out["after_nested"]["rss_mib"] - out["released_rss_mib"] >= 48


def test_disabled_or_unsupported_is_a_no_op():
    with retain_freed_memory(enabled=False) as on:
        assert on is False


def test_train_config_and_cli_expose_the_switch():
    from lowrank.train.cli import add_commands
    from lowrank.train.config import TrainConfig

    assert TrainConfig().retain_memory is True
    import argparse

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--no-retain-memory"])
    assert args.retain_memory is False
    assert parser.parse_args(["train"]).retain_memory is None  # the config's default applies
