"""Smoke test of the benchmark harness: ``benchmarks/run.py --quick`` runs and writes a
complete JSON with positive numbers. It checks that the harness works, never the speed;
transformers and lightly are optional (a missing peer is reported, not an error)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and x > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete ``--quick`` run, shared: the merge test builds on its results."""
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore"), cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_quick_benchmark_writes_complete_results(quick_run: Path) -> None:
    out = quick_run
    res = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("Machine:")
    assert res["quick"] is True
    for key in ("machine", "throughput", "best", "table2", "flops", "scaling", "memory", "profile", "goals"):
        assert key in res, key

    thr = res["throughput"]["results"]
    assert _positive(thr["mimkit"]["images_per_s"]) and _positive(thr["mimkit"]["median_s"])
    for peer in ("hf", "lightly"):  # either measured or reported missing
        assert peer in res["throughput"]["missing_peers"] or _positive(thr[peer]["images_per_s"]), thr.get(peer)

    best = res["best"]
    assert _positive(best["results"]["mimkit_bf16_fused"]["images_per_s"])
    assert "best_vs_fastest_peer_best" in res["goals"] or res["throughput"]["missing_peers"] == ["hf", "lightly"]
    la = best["loss_agreement"]
    assert la["steps"] == len(la["fp32"]) == len(la["bf16"]) and la["max_rel_diff"] >= 0

    for arch in res["table2"].values():
        for r in arch["results"].values():
            assert _positive(r["speedup"]) and _positive(r["flop_ratio"])

    fl = res["flops"]
    assert _positive(fl["step_flops"]["total"])
    assert _positive(fl["matmul_flops_per_s"]["fp32"]) and _positive(fl["matmul_flops_per_s"]["bf16"])
    assert all(_positive(r["flops_per_s"]) for r in fl["results"].values())

    for sec in res["scaling"].values():
        assert all(_positive(r["time_ratio"]) and _positive(r["visible_ratio"]) for r in sec["results"].values())

    mem = res["memory"]["results"]
    assert _positive(mem["mimkit"]["peak_mb"]) and _positive(mem["mimkit_grad_checkpointing"]["peak_mb"])
    assert res["profile"] and all(res["profile"].values())


def test_time_limit_skips_the_sections_not_started(tmp_path: Path, quick_run: Path, subprocess_env: dict) -> None:
    out = tmp_path / "limited"
    proc = subprocess.run(  # compile does nothing in quick mode; as the first section asked for it always runs
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out), "--time-limit", "1e-9",
         "--sections", "compile,scaling,profile"],
        capture_output=True, text=True, timeout=300, env=subprocess_env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert "compile" in res and "scaling" not in res and res["skipped_sections"] == ["scaling", "profile"]

    # a second call merges: the earlier sections are kept and flops is computed from their throughput and best
    full = json.loads((quick_run / "results.json").read_text())
    merged = tmp_path / "merged"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(merged), "--merge",
         str(quick_run / "results.json"), "--sections", "flops"],
        capture_output=True, text=True, timeout=300, env=subprocess_env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res2 = json.loads((merged / "results.json").read_text())
    assert res2["throughput"] == full["throughput"] and res2["best"] == full["best"]
    assert {"throughput", "best", "memory"} <= set(res2["merged_from"]["sections"])
    assert "flops" not in res2["merged_from"]["sections"]
    assert "mimkit_fp32" in res2["flops"]["results"] and "mimkit_bf16_fused" in res2["flops"]["results"]
    assert _positive(res2["flops"]["results"]["mimkit_fp32"]["flops_per_s"])


def test_demo_profile_and_end_to_end_scripts_run(tmp_path: Path, subprocess_env: dict) -> None:
    """The demo profile's phases add up to its step; e2e.py reports every subject it ran."""
    import importlib.util

    md = tmp_path / "profile.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "demo_profile.py"), "--steps", "1", "--threads", "1",
         "--set", "train.batch_size=8", "--out", str(md)],
        capture_output=True, text=True, timeout=300, env=subprocess_env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r.split("|")[1].strip(): r.split("|")[2].strip() for r in md.read_text().splitlines() if r.startswith("| ")}
    parts = sum(float(rows[k]) for k in ("data", "collate", "forward", "backward", "optimizer"))
    assert abs(parts - float(rows["**whole step**"].strip("*"))) < 0.05 * parts
    subjects = "mimkit,mimkit_per_sample" + (",lightly" if importlib.util.find_spec("lightly") else "")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--rounds", "1", "--steps", "1", "--batch", "4",
         "--threads", "1", "--subjects", subjects],
        capture_output=True, text=True, timeout=300, env=subprocess_env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in subjects.split(","):
        assert f"| {name} | 3.12 |" in proc.stdout, proc.stdout


def test_ttt_mae_batched_benchmark_checks_equality_and_reports_a_ratio(tmp_path: Path, subprocess_env: dict) -> None:
    pytest.importorskip("mimkit_ttt_mae")
    out = tmp_path / "ttt"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ttt_mae_batched.py"), "--configs", "micro:16", "--images", "2",
         "--steps", "1", "--repeats", "1", "--no-profile", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=subprocess_env | {"OMP_NUM_THREADS": "1"}, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(out.with_suffix(".json").read_text())["rows"][0]
    assert row["same_predictions"] and row["max_abs_logit_diff"] < 1e-4 and _positive(row["ratio"])
    assert "| – |" in out.with_suffix(".md").read_text()  # no profile, no overhead bound (not 'nan')
