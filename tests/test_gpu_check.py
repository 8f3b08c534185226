"""``bench/gpu_check.py`` (issue 17 §5): its ``--smoke`` run on CPU, as CI runs it (a subprocess
writing Markdown + JSON), and its section runner (a failing section is reported, the others run;
the time guard skips what would run past the budget)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import gpu_check  # noqa: E402

#: parity rows known to fail today, with the reason (the test fails on any other row)
KNOWN: dict[tuple[str, str], str] = {}


def test_smoke_run_reports_every_section(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)  # the script sets it in --smoke
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), "--smoke", "--out", str(tmp_path / "report")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "report.md").read_text() in proc.stdout
    sections = report["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    known = []
    for name, sec in sections.items():
        if name == "parity" and sec["status"] == "failed" and sec["reason"].startswith("AssertionError"):
            continue  # judged row by row below
        assert sec["status"] in ("ok", "skipped"), (name, sec["reason"])
        assert sec["status"] == "ok" or sec["reason"], name
    parity = sections["parity"]["rows"]
    parts = {r["part"] for r in parity}
    assert {"cd(rank=4)", "nmf", "semi_nmf", "vq(rank=4)", "weak_nmf"} <= parts
    assert "nmf(rank=2, update=hals, grad_steps=1)" in parts  # the smoke's grid: ranks 1 and 2
    for row in parity:
        assert row["out_err"] == row["out_err"] and row["grad_err"] == row["grad_err"], row  # not NaN
        if (row["part"], row["backend"]) in KNOWN and not row["ok"]:
            known.append(KNOWN[row["part"], row["backend"]])
            continue
        assert row["ok"] and max(row["out_err"], row["grad_err"]) <= row["tol"], row
    if report["meta"]["triton"].startswith("not importable"):
        assert sections["parity"]["status"] == "skipped"
    else:  # the Triton kernels really ran (in the interpreter), not a fallback
        assert any(r["backend"] == "triton" and r["ran"] == "triton" for r in parity)
        assert any(r["part"].startswith("block") and r["ran"] == "triton" for r in parity)
    layer = sections["nmf_layer"]["rows"]
    assert {r["backend"] for r in layer} >= {"reference", "auto", "textbook"}
    assert all(r["ms"] > 0 and r["GBs"] > 0 for r in layer)
    nets = {r["model"]: r for r in sections["nets"]["rows"]}
    assert set(nets) == {"swin_factorizer", "SwinUNETR", "SegResNet"}
    assert nets["SwinUNETR"]["time_vs_SwinUNETR"] == 1.0
    assert sections["compile"]["rows"][0]["graph_breaks"] == 0
    counts = {(r["model"], r["backend"]): r for r in sections["counts"]["rows"]}
    assert len(counts) == 4
    lean = counts["swin_factorizer", "auto"]  # the whole-net budgets of issue 17 §3
    assert lean["train_ops"] <= 1266 and lean["train_GB"] <= 60 and lean["eval_ops"] <= 1000, lean
    if known:
        pytest.xfail("; ".join(sorted(set(known))))


def _cfg(budget: float = 60.0) -> gpu_check.Config:
    return gpu_check.Config(smoke=True, budget=budget)


def test_a_failing_section_is_reported_and_the_others_still_run():
    ran = []

    def good(cfg, res, done):
        ran.append(len(done))
        res["rows"].append({"x": 1})

    def bad(cfg, res, done):
        res["rows"].append({"x": 0})
        raise RuntimeError("CUDA error: an illegal memory access\nsecond line")

    def skip(cfg, res, done):
        raise gpu_check.Skip("triton not importable")

    out = gpu_check.run_sections(_cfg(), {"a": good, "b": bad, "c": skip, "d": good})
    assert [s["status"] for s in out.values()] == ["ok", "failed", "skipped", "ok"]
    assert out["b"]["reason"] == "RuntimeError: CUDA error: an illegal memory access"
    assert out["b"]["rows"] == [{"x": 0}]  # rows done before the failure are kept
    assert out["c"]["reason"] == "triton not importable"
    assert ran == [0, 3] and out["d"]["rows"] == [{"x": 1}]
    md = gpu_check.to_markdown({"smoke": True, "device": "CPU"}, out)
    assert "| b | failed |" in md and "RuntimeError: CUDA error" in md


def test_the_time_guard_skips_what_would_run_past_the_budget():
    import time

    def slow(cfg, res, done):
        res["rows"].append({"step": 1})
        time.sleep(5)  # interrupted by the guard's alarm at the budget's end
        res["rows"].append({"step": 2})

    def later(cfg, res, done):
        raise AssertionError("must not run")

    out = gpu_check.run_sections(_cfg(budget=1.0), {"slow": slow, "later": later})
    assert out["slow"]["status"] == "skipped" and "time guard" in out["slow"]["reason"]
    assert out["slow"]["rows"] == [{"step": 1}] and out["slow"]["seconds"] < 3
    assert out["later"]["status"] == "skipped" and "time guard" in out["later"]["reason"]


def test_spec_bandwidth_table():
    assert gpu_check.spec_bandwidth("NVIDIA H100 80GB HBM3") == 3350
    assert gpu_check.spec_bandwidth("NVIDIA H100 PCIe") == 2000
    assert gpu_check.spec_bandwidth("NVIDIA H200") == 4800
    assert gpu_check.spec_bandwidth("NVIDIA A100-SXM4-80GB") == 2000
    assert gpu_check.spec_bandwidth("NVIDIA A100-SXM4-40GB") == 1550
    assert gpu_check.spec_bandwidth("NVIDIA GeForce RTX 4090") is None


def test_textbook_loop_decreases_the_error():
    import torch

    x = torch.rand(3, 8, 20, dtype=torch.float64) @ torch.rand(3, 20, 20, dtype=torch.float64)
    for update in ("mu", "hals"):
        errs = [(gpu_check.textbook_nmf(x, 4, update, iters=t) - x).norm() for t in (1, 10)]
        assert errs[1] < errs[0] and errs[1] < 0.2 * x.norm()
