"""The section runner and report of ``bench/gpu_check.py``: sizes of a run, the time guard,
isolated sections (``ok`` / ``failed`` / ``skipped``), CUDA-event timing, Markdown output."""

from __future__ import annotations

import gc
import os
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["Config", "Section", "Skip", "free_memory", "median_time", "run_sections", "to_markdown", "write"]

#: a section: ``(cfg, its result dict to fill, the results of the sections before it)``
Section = Callable[["Config", dict, dict], None]


class Skip(Exception):
    """A section (or the rest of one) does not run: the message says why."""


class Config:
    """Sizes and repetitions of a run: the full GPU check or the CPU smoke test."""

    def __init__(self, *, smoke: bool, budget: float):
        self.smoke, self.budget, self.start = smoke, budget, time.monotonic()
        self.device = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
        # smoke: rank 2 for rank 8 (the interpreter runs HALS's rank-8 column loop for seconds)
        self.ranks = (1, 2) if smoke else (1, 8)
        self.parity_shape = (2, 8, 16) if smoke else (16, 8, 256)
        self.nmf_shape = (1, 8, 32) if smoke else (4096, 8, 512)
        self.warmup, self.reps = (0, 1) if smoke else (3, 20)
        self.net_size, self.net_reps = (32, 1) if smoke else (128, 10)
        self.copy_bytes = 2**24 if smoke else 2**30

    def left(self) -> float:
        """Seconds left of the budget."""
        return self.budget - (time.monotonic() - self.start)

    def need(self, seconds: float, what: str) -> None:
        """Raise :class:`Skip` unless ``seconds`` are left for ``what``."""
        if self.left() < seconds:
            raise Skip(
                f"time guard: {self.left():.0f} s left of {self.budget:.0f} s, {what} needs ~{seconds:.0f} s"
            )

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def median_time(
    cfg: Config, fn: Callable[[], object], *, warmup: int | None = None, reps: int | None = None
) -> float:
    """Median seconds of ``fn()`` after warm-up: CUDA events on CUDA, ``perf_counter`` on CPU."""
    for _ in range(cfg.warmup if warmup is None else warmup):
        fn()
    times = []
    for _ in range(cfg.reps if reps is None else reps):
        if cfg.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def free_memory(cfg: Config) -> None:
    gc.collect()
    if cfg.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _alarm(signum, frame):
    raise Skip("time guard: the budget ran out inside this section (rows done so far kept)")


def run_sections(cfg: Config, sections: dict[str, Section]) -> dict:
    """Run each section in turn, isolated: its status is ``ok``, ``skipped`` (a :class:`Skip`:
    the time guard or a missing dependency) or ``failed`` (any other exception: its last line);
    rows a section produced before it stopped are kept. A SIGALRM at the budget's end (POSIX,
    main thread) stops a section that runs past it."""
    done: dict[str, dict] = {}
    alarm = hasattr(signal, "SIGALRM") and sys.platform != "win32"
    for name, fn in sections.items():
        res: dict = {"status": "ok", "reason": "", "rows": []}
        t0 = time.monotonic()
        try:
            cfg.need(0, name)
            if alarm:
                signal.signal(signal.SIGALRM, _alarm)
                signal.setitimer(signal.ITIMER_REAL, max(cfg.left(), 0.01))
            try:
                fn(cfg, res, done)
            finally:
                if alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except Skip as e:
            res.update(status="skipped", reason=str(e))
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            line = traceback.format_exception_only(type(e), e)[-1].strip().splitlines()[0]
            res.update(status="failed", reason=line)
        res["seconds"] = time.monotonic() - t0
        print(
            f"[gpu_check] {name}: {res['status']} {res['reason']} ({res['seconds']:.1f} s)", file=sys.stderr
        )
        done[name] = res
        free_memory(cfg)
    return done


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if v and (abs(v) < 1e-2 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:,.1f}"
    return "" if v is None else str(v)


def to_markdown(meta: dict, sections: dict) -> str:
    lines = [f"## GPU check ({'smoke, CPU' if meta['smoke'] else meta['device']})", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "| section | status | seconds | reason |", "|---|---|---|---|"]
    lines += [f"| {n} | {s['status']} | {s['seconds']:.1f} | {s['reason']} |" for n, s in sections.items()]
    for name, sec in sections.items():
        if not sec["rows"]:
            continue
        keys = list(dict.fromkeys(k for r in sec["rows"] for k in r))
        lines += ["", f"### {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in sec["rows"]]
        if sec.get("notes"):
            lines += ["", sec["notes"]]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
