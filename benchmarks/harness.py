"""Measuring tools: interleaved step timing, peak memory (child process on CPU, the CUDA
allocator on GPU), FLOPs per step, the device's matmul FLOP/s, and a short profile.

Every figure the report gives is a ratio of medians measured side by side in one process run,
so load from other users of the machine slows all compared subjects alike.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from subjects import Setup, Subject

HERE = Path(__file__).resolve().parent


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(steps: dict[str, Callable[[], Any]], warmup: int, repeats: int, device: str = "cpu") -> dict[str, list[float]]:
    """Seconds per call of each function, run round-robin (the order rotates every round) after
    ``warmup`` untimed calls of each: shared load hits every subject alike."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def summary(times: list[float], batch: int) -> dict[str, float]:
    """Median step time, images/s, and the spread (min, max) of the repeats."""
    med = statistics.median(times)
    return {"median_s": med, "images_per_s": batch / med, "min_s": min(times), "max_s": max(times), "repeats": len(times)}


# ---------------------------------------------------------------------------------------------
# Peak memory


def _proc_status_mb(field: str) -> float | None:
    """A ``kB`` field of /proc/self/status in MiB (None where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def _peak_rss_mb() -> float:
    """Peak RSS of this process image: VmHWM (fresh after exec; ``ru_maxrss`` is not, as Linux
    carries the parent's high-water mark into a forked child)."""
    hwm = _proc_status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    """Resident set size now."""
    rss = _proc_status_mb("VmRSS")
    return rss if rss is not None else _peak_rss_mb()


def memory_child(setup_json: str, steps: int) -> dict[str, float]:
    """In a fresh process: build the subject, run ``steps`` steps, report peak RSS (CPU) or
    the allocator's peak (CUDA). ``step_delta_mb`` is what the steps added over the built model."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    setup = Setup(**json.loads(setup_json))
    subject = Subject(setup)
    if setup.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
        for _ in range(steps):
            subject.step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        base = _current_rss_mb()
        for _ in range(steps):
            subject.step()
        peak = _peak_rss_mb()
    return {"peak_mb": peak, "model_mb": base, "step_delta_mb": peak - base}


def peak_memory(setup: Setup, steps: int = 2, threads: int = 2, timeout: float = 600) -> dict[str, Any]:
    """Peak memory of ``steps`` training steps of ``setup``, measured in a child process so
    each configuration starts from a clean heap (max RSS cannot be reset in-process)."""
    return run_child("--memory-child", setup, ["--child-steps", str(steps)], threads, timeout)


# ---------------------------------------------------------------------------------------------
# FLOPs


def attention_flops(setup: Setup) -> float:
    """Attention FLOPs per step by formula: 4·B·heads·T²·head_dim forward (QKᵀ and AV), ×3 with
    the backward, over the encoder and decoder blocks."""
    a = setup.arch_spec
    b = setup.batch
    t_enc, t_dec = setup.encoder_tokens, a.num_patches + 1
    enc = a.depth * 4 * b * a.heads * t_enc**2 * (a.dim // a.heads)
    dec = a.dec_depth * 4 * b * a.dec_heads * t_dec**2 * (a.dec_dim // a.dec_heads)
    return 3.0 * (enc + dec)


def step_flops(setup: Setup) -> dict[str, float]:
    """FLOPs of one forward + backward (fp32) counted with ``FlopCounterMode``; fused attention
    kernels it has no formula for (CPU SDPA) are added by :func:`attention_flops`."""
    from torch.utils.flop_counter import FlopCounterMode

    subject = Subject(setup.with_(precision="fp32", compile=False))
    counter = FlopCounterMode(display=False)
    with counter:
        subject.forward_backward()
    counted = float(counter.get_total_flops())
    ops = {str(k): float(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    has_attention = any("attention" in k or "bmm" in k for k in ops)
    attn = 0.0 if has_attention else attention_flops(setup)
    return {"counted": counted, "attention_added": attn, "total": counted + attn}


def matmul_flops_per_s(n: int, dtype: torch.dtype, device: str, repeats: int = 5) -> float:
    """Measured FLOP/s of an n×n×n matmul (median of ``repeats`` after one warm-up)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    times = []
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / statistics.median(times)


# ---------------------------------------------------------------------------------------------
# Profile


def top_ops(subject: Subject, rows: int = 12) -> list[dict[str, Any]]:
    """Where one training step's time goes: the top ops by self time (CPU or CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    subject.step()  # warm
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if subject.setup.device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        subject.step()
    cuda = subject.setup.device.startswith("cuda")
    events = prof.key_averages()
    key = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    total = sum(key(e) for e in events) or 1.0
    out = []
    for e in sorted(events, key=key, reverse=True)[:rows]:
        out.append({"op": e.key, "self_ms": key(e) / 1000.0, "share": key(e) / total, "calls": e.count})
    return out


def compile_child(setup_json: str, warmup: int, repeats: int) -> dict[str, Any]:
    """In a fresh process: eager vs ``torch.compile`` step of the same setup, interleaved."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    setup = Setup(**json.loads(setup_json))
    eager = Subject(setup.with_(compile=False))
    compiled = Subject(setup.with_(compile=True))
    t0 = time.perf_counter()
    compiled.step()
    compile_s = time.perf_counter() - t0
    times = interleaved({"eager": eager.step, "compiled": compiled.step}, warmup, repeats, setup.device)
    from torch._dynamo.utils import counters

    return {
        "compile_s": compile_s, "frames": {k: int(counters["frames"][k]) for k in ("total", "ok")},
        "eager": summary(times["eager"], setup.batch),
        "compiled": summary(times["compiled"], setup.batch),
    }


def run_child(flag: str, setup: Setup, extra: list[str], threads: int, timeout: float) -> dict[str, Any]:
    """Run ``run.py <flag> <setup>`` in a child process; its last stdout line is JSON."""
    env = dict(os.environ, BENCH_THREADS=str(threads), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(HERE / "run.py"), flag, json.dumps(setup.to_json()), *extra]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(out.stdout.strip().splitlines()[-1])
