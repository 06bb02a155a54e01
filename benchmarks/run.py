"""mimkit benchmarks: MAE pretraining step throughput against Hugging Face and lightly, the MAE
paper's Table 2 on our code, distance to the device's matmul limit, scaling with mask ratio and
image size, best settings (bf16, fused AdamW, torch.compile), and peak memory.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--out DIR] [--readme]

Writes DIR/results.json and DIR/results.md (``--readme`` also puts the tables into
benchmarks/README.md). All figures are medians over repeated steps after warm-up, measured
side by side (interleaved) in this one run; compare ratios, not absolute numbers, across runs.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import harness  # noqa: E402
from subjects import ARCHS, IMPLS, PEERS, Setup, Subject, available, peer_versions  # noqa: E402

SECTIONS = ("throughput", "best", "flops", "compile", "table2", "memory", "scaling", "profile")
PAPER_TABLE2 = {"visible_dec8": 2.8, "visible_dec1": 3.7}
GOAL_BEST_OVER_PEER = 1.3


@dataclass
class Plan:
    """Sizes and repeat counts of one run (``--quick``: a tiny ViT, 2 repeats)."""

    arch: str = "vit_b16"
    batch: int = 8
    precision: str = "fp32"  # of the main comparison
    best_precision: str = "bf16"
    warmup: int = 1
    repeats: int = 5
    best_warmup: int = 2
    best_repeats: int = 4
    table2_archs: tuple[str, ...] = ("vit_l16", "vit_b16")
    table2_batch: dict[str, int] = field(default_factory=lambda: {"vit_l16": 4, "vit_b16": 8})
    table2_repeats: int = 3
    scale_ratios: tuple[float, ...] = (0.5, 0.75, 0.9)
    scale_ratio_batch: int = 8
    scale_sizes: tuple[int, ...] = (112, 224, 448)
    scale_size_batch: int = 2
    loss_steps: int = 20
    loss_batch: int = 2
    matmul_n: int = 2048
    compile_timeout: float = 240.0
    memory_impls: tuple[str, ...] = IMPLS
    memory_steps: int = 2
    profile_rows: int = 12

    @classmethod
    def for_run(cls, quick: bool, device: str) -> "Plan":
        if quick:
            return cls(
                arch="tiny", batch=4, warmup=1, repeats=2, best_warmup=1, best_repeats=2,
                table2_archs=("tiny_l", "tiny"), table2_batch={"tiny_l": 2, "tiny": 2}, table2_repeats=2,
                scale_ratio_batch=4, scale_sizes=(16, 32, 64), loss_steps=3, loss_batch=2, matmul_n=256,
                compile_timeout=0.0, memory_impls=("mimkit",), memory_steps=1, profile_rows=5,
            )
        if device.startswith("cuda"):
            return cls(
                batch=256, precision="bf16", warmup=3, repeats=10, best_warmup=3, best_repeats=10,
                table2_batch={"vit_l16": 128, "vit_b16": 256}, table2_repeats=10, scale_ratio_batch=256,
                scale_size_batch=32, loss_batch=64, matmul_n=8192, compile_timeout=150.0,
            )
        return cls()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine(device: str, threads: int) -> dict[str, Any]:
    """The machine, named: host, CPU model, cores and threads, GPU, versions, load."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "threads": threads,
        "device": device, "python": platform.python_version(), "torch": torch.__version__,
        "load_avg_start": list(os.getloadavg()), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        **peer_versions(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def measure(setups: dict[str, Setup], warmup: int, repeats: int) -> dict[str, dict[str, Any]]:
    """Build every setup, time them interleaved; a setup that fails to build or step is
    reported with its error, the others still run."""
    subjects: dict[str, Subject] = {}
    results: dict[str, dict[str, Any]] = {}
    for name, s in setups.items():
        try:
            subjects[name] = Subject(s)
            subjects[name].step()  # also proves it runs before timing starts
        except Exception as exc:  # noqa: BLE001 - a peer's failure must not stop the run
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            subjects.pop(name, None)
    device = next(iter(setups.values())).device
    times = harness.interleaved({n: sub.step for n, sub in subjects.items()}, warmup, repeats, device)
    for name, ts in times.items():
        results[name] = harness.summary(ts, setups[name].batch)
    del subjects, times
    gc.collect()  # free one group's models before the next group is built
    return {name: results[name] for name in setups}


def peers_here(impls: tuple[str, ...] = IMPLS) -> list[str]:
    return [i for i in impls if available(i)]


# ---------------------------------------------------------------------------------------------
# Sections


def section_throughput(plan: Plan, base: Setup) -> dict[str, Any]:
    """1. One pretraining step, mimkit vs the peers, at the main precision."""
    setups = {impl: base.with_(impl=impl, precision=plan.precision) for impl in peers_here()}
    res = measure(setups, plan.warmup, plan.repeats)
    missing = [p for p in PEERS if not available(p)]
    return {"setup": base.with_(precision=plan.precision).to_json(), "results": res, "missing_peers": missing}


def section_best(plan: Plan, base: Setup, args: argparse.Namespace) -> dict[str, Any]:
    """5. Best settings: bf16 autocast for all; mimkit also with fused/foreach AdamW and
    torch.compile (in a child with a timeout); and the bf16 vs fp32 loss over a short run."""
    bp = plan.best_precision
    setups: dict[str, Setup] = {}
    for impl in peers_here():  # every implementation gets the same torch-level options
        setups[f"{impl}_{bp}"] = base.with_(impl=impl, precision=bp)
        setups[f"{impl}_{bp}_fused_math"] = base.with_(impl=impl, precision=bp, optimizer="fused", attention="math")
    setups[f"mimkit_{bp}_fused"] = base.with_(precision=bp, optimizer="fused")  # fused AdamW alone
    res = measure(setups, plan.best_warmup, plan.best_repeats)
    out: dict[str, Any] = {"results": res}
    log("bf16 vs fp32 loss agreement")
    out["loss_agreement"] = loss_agreement(base.with_(batch=plan.loss_batch), plan.loss_steps, bp)
    return out


def section_compile(plan: Plan, base: Setup, args: argparse.Namespace) -> dict[str, Any]:
    """mimkit eager vs ``torch.compile`` (best precision, fused AdamW), in a child process with a
    timeout; the CPU runs it with the math attention kernel (faster there under compile)."""
    if plan.compile_timeout <= 0:
        return {"skipped": "quick mode"}
    attention = "auto" if base.device.startswith("cuda") else "math"
    cs = base.with_(precision=plan.best_precision, optimizer="fused", attention=attention)
    out = harness.run_child("--compile-child", cs, ["--child-warmup", "1", "--child-repeats", str(plan.best_repeats)],
                            args.threads, plan.compile_timeout)
    return out | {"attention": attention}


def loss_agreement(base: Setup, steps: int, precision: str) -> dict[str, Any]:
    """Train ``steps`` steps from the same init on the same batch and noise in fp32 and in
    ``precision``; the relative difference of the losses (per step and the mean)."""
    curves: dict[str, list[float]] = {}
    for prec in ("fp32", precision):
        subject = Subject(base.with_(precision=prec, optimizer="foreach"))
        curves[prec] = [subject.step() for _ in range(steps)]
        del subject
    ref, low = curves["fp32"], curves[precision]
    rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(ref, low)]
    return {
        "steps": steps, "batch": base.batch, "fp32": ref, precision: low,
        "max_rel_diff": max(rel), "final_rel_diff": rel[-1],
        "mean_rel_diff": abs(statistics.mean(ref) - statistics.mean(low)) / abs(statistics.mean(ref)),
    }


def section_table2(plan: Plan, base: Setup) -> dict[str, Any]:
    """2. The MAE paper's Table 2: encoder with mask tokens + 8-block decoder (baseline) vs
    visible-only encoder with 8- and 1-block decoders; speedup = baseline time / time."""
    out: dict[str, Any] = {}
    for arch in plan.table2_archs:
        b = base.with_(arch=arch, batch=plan.table2_batch[arch], precision=plan.best_precision, optimizer="fused")
        dec8 = ARCHS[arch].dec_depth
        setups = {
            "baseline_mask_tokens_dec8": b.with_(encoder_mode="with_mask_token"),
            "visible_dec8": b,
            "visible_dec1": b.with_(overrides={"dec_depth": 1}),
        }
        log(f"table 2: {arch}")
        res = measure(setups, plan.warmup, plan.table2_repeats)
        base_t = res["baseline_mask_tokens_dec8"].get("median_s")
        for name, r in res.items():
            if base_t and "median_s" in r:
                r["speedup"] = base_t / r["median_s"]
                r["flops"] = harness.step_flops(setups[name])["total"]
        bf = res["baseline_mask_tokens_dec8"].get("flops")
        for r in res.values():
            if bf and r.get("flops"):
                r["flop_ratio"] = bf / r["flops"]
        out[arch] = {"batch": b.batch, "precision": b.precision, "decoder_depth_baseline": dec8, "results": res}
    return out


def section_flops(plan: Plan, base: Setup, thr: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
    """3. Achieved model FLOP/s (mimkit's counted FLOPs per step / step time) against the
    measured matmul FLOP/s of the same device in the same run."""
    flops = harness.step_flops(base)
    peaks = {
        "fp32": harness.matmul_flops_per_s(plan.matmul_n, torch.float32, base.device),
        "bf16": harness.matmul_flops_per_s(plan.matmul_n, torch.bfloat16, base.device),
    }
    rows: dict[str, Any] = {}
    entries = [(f"{k}_{plan.precision}", v, plan.precision) for k, v in thr["results"].items()]
    entries += [(k, v, plan.best_precision) for k, v in best["results"].items()]
    for name, r, prec in entries:
        if "median_s" not in r:
            continue
        achieved = flops["total"] / r["median_s"]
        rows[name] = {"flops_per_s": achieved, "precision": prec, "fraction_of_matmul": achieved / peaks[prec]}
    return {"step_flops": flops, "matmul_n": plan.matmul_n, "matmul_flops_per_s": peaks, "results": rows}


def section_scaling(plan: Plan, base: Setup) -> dict[str, Any]:
    """4. Step cost vs mask ratio and image size (mimkit, best precision); cost relative to the
    middle setting next to the visible-token and FLOP ratios."""
    b = base.with_(precision=plan.best_precision, optimizer="fused")
    by_ratio = {f"mask_{r}": b.with_(mask_ratio=r, batch=plan.scale_ratio_batch) for r in plan.scale_ratios}
    by_size = {f"img_{s}": b.with_(batch=plan.scale_size_batch, overrides={"img_size": s}) for s in plan.scale_sizes}
    out: dict[str, Any] = {}
    for label, setups, ref in (("mask_ratio", by_ratio, f"mask_{plan.scale_ratios[1]}"),
                               ("img_size", by_size, f"img_{plan.scale_sizes[1]}")):
        log(f"scaling: {label}")
        res = measure(setups, plan.warmup, plan.repeats)
        for name, r in res.items():
            s = setups[name]
            r["batch"] = s.batch
            r["visible_tokens"] = s.batch * s.num_keep
            r["all_tokens"] = s.batch * s.arch_spec.num_patches
            r["flops"] = harness.step_flops(s)["total"]
        rr = res[ref]
        for r in res.values():
            if "median_s" in r and "median_s" in rr:
                r["time_ratio"] = r["median_s"] / rr["median_s"]
                r["visible_ratio"] = r["visible_tokens"] / rr["visible_tokens"]
                r["flop_ratio"] = r["flops"] / rr["flops"]
        out[label] = {"reference": ref, "results": res}
    return out


def section_memory(plan: Plan, base: Setup, threads: int) -> dict[str, Any]:
    """6. Peak memory per configuration, each in its own child process."""
    setups: dict[str, Setup] = {}
    for impl in peers_here(plan.memory_impls):
        setups[impl] = base.with_(impl=impl, precision=plan.precision)
    for impl in ("mimkit", "lightly"):
        if impl in setups:
            setups[f"{impl}_grad_checkpointing"] = setups[impl].with_(grad_checkpointing=True)
    if len(plan.memory_impls) > 1:  # the full run: best settings too
        setups["mimkit_bf16_fused"] = base.with_(precision=plan.best_precision, optimizer="fused")
        setups["mimkit_bf16_fused_grad_checkpointing"] = setups["mimkit_bf16_fused"].with_(grad_checkpointing=True)
    out: dict[str, Any] = {"measure": "peak RSS of a child process (CPU)" if base.device == "cpu"
                           else "torch.cuda.max_memory_allocated", "results": {}}
    for name, s in setups.items():
        log(f"memory: {name}")
        out["results"][name] = harness.peak_memory(s, plan.memory_steps, threads)
    return out


def section_profile(plan: Plan, base: Setup) -> dict[str, Any]:
    """Top ops of one mimkit step, main and best precision."""
    out = {}
    for prec in dict.fromkeys((plan.precision, plan.best_precision)):
        subject = Subject(base.with_(precision=prec, optimizer="fused" if prec != "fp32" else "default"))
        out[prec] = harness.top_ops(subject, plan.profile_rows)
        del subject
    return out


# ---------------------------------------------------------------------------------------------
# Goals and the markdown report


def goals(res: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, met or missed and by how much."""
    g: dict[str, Any] = {}
    thr = res.get("throughput", {}).get("results", {})
    mk = thr.get("mimkit", {}).get("images_per_s")
    peer = {p: thr[p]["images_per_s"] for p in PEERS if "images_per_s" in thr.get(p, {})}
    if mk and peer:
        fastest = max(peer, key=peer.get)
        g["main_vs_fastest_peer"] = {"peer": fastest, "ratio": mk / peer[fastest], "target": 1.0}
    best = res.get("best", {}).get("results", {})
    # best = fastest setting measured side by side in this process; torch.compile ran in a
    # child (its own eager baseline) and is reported apart, not folded in
    mk_best = {k: v["images_per_s"] for k, v in best.items() if k.startswith("mimkit") and "images_per_s" in v}
    peer_best = {k: v["images_per_s"] for k, v in best.items() if not k.startswith("mimkit") and "images_per_s" in v}
    if mk_best and peer_best:
        mine, fastest = max(mk_best, key=mk_best.get), max(peer_best, key=peer_best.get)
        g["best_vs_fastest_peer_best"] = {"peer": f"{mine} vs {fastest}", "ratio": mk_best[mine] / peer_best[fastest],
                                          "target": GOAL_BEST_OVER_PEER}
    for arch, t in res.get("table2", {}).items():
        if arch not in ("vit_l16", "tiny_l"):  # the paper's Table 2 is ViT-L only
            continue
        for k, paper in PAPER_TABLE2.items():
            sp = t["results"].get(k, {}).get("speedup")
            if sp:
                g[f"table2_{arch}_{k}"] = {"ratio": sp, "target": paper}
    for v in g.values():
        v["met"] = v["ratio"] >= v["target"]
    return g


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) else "–"


def _err(r: dict[str, Any]) -> str:
    return f"error: {r['error']}" if "error" in r else ""


def markdown(res: dict[str, Any]) -> str:
    """The results as markdown tables."""
    m = res["machine"]
    dev = m.get("gpu") or f"{m['cpu']} ({m['cores']} cores, {m['threads']} threads)"
    L = [f"Machine: `{m['host']}`, {dev}; torch {m['torch']}, timm {m['timm']}, transformers {m['transformers']}, "
         f"lightly {m['lightly']}; load average {m['load_avg_start'][0]:.2f} at start, {m['load_avg_end'][0]:.2f} at end; "
         f"{m['time']}{' (quick mode: tiny ViT, not a measurement)' if res['quick'] else ''}.", ""]
    thr = res.get("throughput")
    if thr:
        s = thr["setup"]
        L += [f"### 1. Pretraining step ({s['arch']}, batch {s['batch']}, {s['precision']}, mask {s['mask_ratio']}, "
              f"decoder {ARCHS[s['arch']].dec_dim}×{ARCHS[s['arch']].dec_depth})", "",
              "| impl | median step (s) | images/s | × mimkit | peak mem (MB) |", "|---|---|---|---|---|"]
        mk = thr["results"].get("mimkit", {}).get("images_per_s")
        mem = res.get("memory", {}).get("results", {})
        for name, r in thr["results"].items():
            rel = r["images_per_s"] / mk if mk and "images_per_s" in r else None
            L.append(f"| {name} | {_f(r.get('median_s'))} | {_f(r.get('images_per_s'))} | {_f(rel)} | "
                     f"{_f(mem.get(name, {}).get('peak_mb'), '{:.0f}')} {_err(r)} |")
        for p in thr.get("missing_peers", []):
            L.append(f"| {p} | not installed: skipped | | | |")
    if "best" in res:
        b = res["best"]
        L += ["", "### 5. Best settings", "", "| setting | median step (s) | images/s |", "|---|---|---|"]
        for name, r in b["results"].items():
            L.append(f"| {name} | {_f(r.get('median_s'))} | {_f(r.get('images_per_s'))} {_err(r)} |")
        c = res.get("compile") or b.get("compile") or {"skipped": "not run"}
        if "compiled" in c:
            frames = c.get("frames")
            fr = f"; {frames['ok']} of {frames['total']} frames compiled" if frames else ""
            L.append(f"| mimkit bf16 fused {c.get('attention', 'math')} + torch.compile (child run; eager there "
                     f"{_f(c['eager']['median_s'])} s) | {_f(c['compiled']['median_s'])} | "
                     f"{_f(c['compiled']['images_per_s'])} (compile {c['compile_s']:.0f} s{fr}) |")
        else:
            L.append(f"| torch.compile | {c.get('error') or c.get('skipped')} | |")
        la = b["loss_agreement"]
        L += ["", f"bf16 vs fp32 loss over {la['steps']} steps (same init, batch {la['batch']}, same noise): "
              f"max per-step relative difference {la['max_rel_diff']:.2%}, final {la['final_rel_diff']:.2%}, "
              f"of the mean {la['mean_rel_diff']:.2%}."]
    if "table2" in res:
        L += ["", "### 2. MAE Table 2 (wall-clock speedup of one training step vs the mask-token baseline)", "",
              "| arch | batch | setting | median step (s) | speedup | FLOP ratio | paper |", "|---|---|---|---|---|---|---|"]
        for arch, t in res["table2"].items():
            for name, r in t["results"].items():
                L.append(f"| {ARCHS[arch].label} ({t['precision']}) | {t['batch']} | {name} | {_f(r.get('median_s'))} | "
                         f"{_f(r.get('speedup'))}× | {_f(r.get('flop_ratio'))}× | {PAPER_TABLE2.get(name, 1.0)}× {_err(r)} |")
    if "flops" in res:
        f = res["flops"]
        L += ["", "### 3. Distance to the machine's limit", "",
              f"Step FLOPs (fwd+bwd, counted {f['step_flops']['counted']/1e9:.1f} G + attention by formula "
              f"{f['step_flops']['attention_added']/1e9:.1f} G). Matmul {f['matmul_n']}³: "
              f"fp32 {f['matmul_flops_per_s']['fp32']/1e9:.1f} GFLOP/s, bf16 {f['matmul_flops_per_s']['bf16']/1e9:.1f} GFLOP/s.", "",
              "| run | achieved GFLOP/s | of matmul peak (same dtype) |", "|---|---|---|"]
        for name, r in f["results"].items():
            L.append(f"| {name} | {r['flops_per_s']/1e9:.1f} | {r['fraction_of_matmul']:.0%} |")
    if "scaling" in res:
        L += ["", "### 4. Scaling (mimkit, best precision)", "",
              "| setting | batch | median step (s) | time ratio | visible-token ratio | FLOP ratio |", "|---|---|---|---|---|---|"]
        for label, sec in res["scaling"].items():
            for name, r in sec["results"].items():
                L.append(f"| {name} | {r.get('batch', '')} | {_f(r.get('median_s'))} | {_f(r.get('time_ratio'))} | "
                         f"{_f(r.get('visible_ratio'))} | {_f(r.get('flop_ratio'))} |")
    if "memory" in res:
        L += ["", f"### 6. Peak memory ({res['memory']['measure']})", "",
              "| config | peak (MB) | after build (MB) | added by the steps (MB) |", "|---|---|---|---|"]
        for name, r in res["memory"]["results"].items():
            L.append(f"| {name} | {_f(r.get('peak_mb'), '{:.0f}')} | {_f(r.get('model_mb'), '{:.0f}')} | "
                     f"{_f(r.get('step_delta_mb'), '{:.0f}')} {_err(r)} |")
    if "profile" in res:
        for prec, rows in res["profile"].items():
            L += ["", f"Top ops, one mimkit step ({prec}):", "", "| op | self ms | share | calls |", "|---|---|---|---|"]
            L += [f"| `{r['op']}` | {r['self_ms']:.0f} | {r['share']:.0%} | {r['calls']} |" for r in rows]
    if res.get("goals"):
        L += ["", "### Goals", "", "| goal | measured | target | met |", "|---|---|---|---|"]
        for name, g in res["goals"].items():
            L.append(f"| {name}{' (' + g['peer'] + ')' if 'peer' in g else ''} | {g['ratio']:.2f}× | ≥ {g['target']}× | "
                     f"{'yes' if g['met'] else 'no'} |")
    return "\n".join(L) + "\n"


def update_readme(md: str) -> None:
    """Put the tables between the results markers of benchmarks/README.md."""
    path = Path(__file__).resolve().parent / "README.md"
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{start}\n{md}{end}{tail}")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny ViT, 2 repeats: a smoke test of the harness")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default="benchmarks/results", help="folder for results.json and results.md")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    ap.add_argument("--merge", help="results.json of an earlier run on the same kind of machine: its sections not "
                    "run now are kept (a lent GPU's time split over two calls)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help="comma-separated subset to run (flops needs throughput and best)")
    ap.add_argument("--time-limit", type=float, default=0.0,
                    help="seconds: sections not started by then are skipped, the first always runs (0: no limit; a lent GPU: 480)")
    ap.add_argument("--readme", action="store_true", help="also write the tables into benchmarks/README.md")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    ap.add_argument("--compile-child", help=argparse.SUPPRESS)
    ap.add_argument("--child-steps", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--child-warmup", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--child-repeats", type=int, default=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.memory_child:
        print(json.dumps(harness.memory_child(args.memory_child, args.child_steps)))
        return 0
    if args.compile_child:
        print(json.dumps(harness.compile_child(args.compile_child, args.child_warmup, args.child_repeats)))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    plan = Plan.for_run(args.quick, args.device)
    base = Setup(arch=plan.arch, batch=plan.batch, device=args.device)
    sections = set(args.sections.split(","))
    res: dict[str, Any] = {"quick": args.quick, "machine": machine(args.device, args.threads), "plan": plan.__dict__}
    if args.merge:
        earlier = json.loads(Path(args.merge).read_text())
        kept = [k for k in SECTIONS if k in earlier and k not in sections]
        res |= {k: earlier[k] for k in kept} | {"merged_from": {"file": args.merge, "sections": kept,
                                                               "machine": earlier.get("machine")}}
    t_start = time.perf_counter()
    skipped: list[str] = []
    started: list[str] = []

    def run(name: str) -> bool:
        """Whether to run section ``name``: asked for, and started before --time-limit is spent
        (a section started in time finishes; later ones are listed as skipped). The first section
        asked for always runs, so the outcome does not hang on how fast the start-up was."""
        if name not in sections:
            return False
        if args.time_limit and started and time.perf_counter() - t_start > args.time_limit:
            skipped.append(name)
            return False
        started.append(name)
        return True

    out = Path(args.out)

    def save() -> str:
        """Write results.json and results.md as they stand: after every section, so that a run
        stopped from outside (a lent GPU's time limit) keeps what it measured."""
        res["skipped_sections"] = skipped
        res["goals"] = goals(res)
        res["machine"]["load_avg_end"] = list(os.getloadavg())
        res["wall_s"] = time.perf_counter() - t_start
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(res, indent=1, default=str))
        tmp.replace(out / "results.json")
        md = markdown(res)
        (out / "results.md").write_text(md)
        return md

    def section(name: str, fn, *fargs) -> None:
        if run(name):
            log(name)
            res[name] = fn(*fargs)
            save()

    section("throughput", section_throughput, plan, base)
    section("best", section_best, plan, base, args)
    if "throughput" in res and "best" in res:
        section("flops", section_flops, plan, base, res["throughput"], res["best"])
    section("compile", section_compile, plan, base, args)
    section("table2", section_table2, plan, base)
    section("memory", section_memory, plan, base, args.threads)  # before scaling: a GPU run with a time limit wants it more
    section("scaling", section_scaling, plan, base)
    section("profile", section_profile, plan, base)
    if skipped:
        log(f"time limit {args.time_limit:.0f} s reached: skipped {', '.join(skipped)}")
    md = save()
    if args.readme:
        update_readme(md)
    print(md)
    log(f"done in {res['wall_s']:.0f} s: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
