"""``lowrank.runtime``: the process restarts itself once with glibc's malloc tunables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from lowrank.runtime import ALLOCATOR_ENV, MARKER, glibc, reexec_with_allocator_env

# the probe restarts itself (same command line), then reports its environment and the page
# faults taken by each of six 64 MiB tensors allocated and freed in turn
PROBE = textwrap.dedent(
    """
    import json, os, resource, sys
    import torch
    from lowrank.runtime import reexec_with_allocator_env

    reexec_with_allocator_env()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    taken = []
    for _ in range(6):  # 64 MiB, used and freed
        before = faults()
        torch.ones(16 << 20).sum()
        taken.append(faults() - before)
    print(json.dumps({"env": {k: os.environ.get(k) for k in %r}, "marker": os.environ.get(%r),
                      "pid": os.getpid(), "faults": taken}))
    """
)


def _probe(env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV and k != MARKER}
    code = PROBE % (list(ALLOCATOR_ENV), MARKER)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**clean, **env}
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout  # ran to the end once (the first image was replaced)
    return json.loads(lines[0])


@pytest.mark.skipif(not glibc(), reason="glibc only")
def test_restart_sets_the_tunables_once_and_freed_memory_is_reused():
    done = _probe({})
    assert done["env"] == ALLOCATOR_ENV and done["marker"] == "1"
    # once the heap has grown, a new 64 MiB tensor reuses freed memory: no page faults
    assert min(done["faults"][-3:]) < 1000, done
    # opting out (or the variables already set) runs the program as it is
    plain = _probe({MARKER: "0"})
    assert plain["env"] == dict.fromkeys(ALLOCATOR_ENV) and plain["marker"] == "0"
    assert min(plain["faults"]) > 10000  # glibc's default: mmap-ed afresh, 16384 pages faulted in


def test_no_restart_when_the_variables_are_set(monkeypatch):
    for key, value in ALLOCATOR_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(MARKER, raising=False)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("restarted"))
    reexec_with_allocator_env()


def test_cli_restarts_only_from_the_shell(monkeypatch):
    from lowrank.cli import main

    calls = []
    monkeypatch.setattr("lowrank.runtime.reexec_with_allocator_env", lambda *a: calls.append(a))
    # called from Python with arguments: never restarts (an error exit is fine here)
    main(["train", "--steps", "0"])
    assert calls == []


def test_export_line_for_the_shell():
    """``export $(python -m lowrank.runtime)`` sets the tunables without any restart."""
    out = subprocess.run(
        ["bash", "-c", f"export $({sys.executable} -m lowrank.runtime) && env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert {k: env.get(k) for k in ALLOCATOR_ENV} == ALLOCATOR_ENV
