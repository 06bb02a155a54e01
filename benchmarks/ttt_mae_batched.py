"""TTT-MAE: batched adaptation across test images against the official per-image loop.

    OMP_NUM_THREADS=1 python benchmarks/ttt_mae_batched.py [--device cpu|cuda] [--configs tiny:128,tiny:32]
        [--images 8] [--steps 2] [--repeats 3] [--chunk N] [--impl stacked|vmap] [--run RUN]
        [--no-profile] [--out benchmarks/results/ttt_mae_batched]

For each configuration (encoder size : masked copies per step), both paths adapt the same images
with the same mask noise from the same weights. The script checks that their logits agree, then
times them in one process, interleaved (loop, batched, batched, loop, ...), medians of
``--repeats``. On a CPU it reports wall time and the process's CPU time. On a shared machine the
CPU time is the steadier figure, because other users' load stretches wall time but not CPU
seconds. On CUDA it synchronizes and reports wall time.

To say how much any batched rewrite *could* gain, the loop is also measured (CPU only):
* a ``torch.profiler`` breakdown: matmul kernels (mm/addmm/bmm/baddbmm), attention kernels, all
  other aten ops (elementwise, norms, copies), and the rest (Python, dispatch, autograd engine,
  optimizer), which is the run's wall time minus the aten ops' self time;
* the FLOPs of one image-step (``FlopCounterMode`` for the matmuls, the formula for attention,
  which CPU SDPA kernels do not report), and the rate of a 1024^3 fp32 matmul in the same process.
The two upper bounds on ``batched / loop`` at equal FLOPs are:
* overhead bound = loop time / loop's (matmul + attention) kernel time: everything else free,
  the kernels no faster;
* roofline bound = loop time / (FLOPs / the 1024^3 matmul's rate): every FLOP at the large-matmul rate.

Configurations: ``tiny`` is ``mae_tiny_fashion_mnist`` (encoder 192-d x 6 blocks, decoder 128-d
x 2, 64 patches) with the plugin's default ViT head (128-d x 2). ``micro`` is the test model
(encoder 32-d x 2, decoder 16-d x 1; head 16-d x 1), a setting where dispatch overhead
dominates. ``--run`` uses a trained MAE run instead of ``tiny``; timing does not depend on the
weights.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

MODELS = {
    "tiny": ({"method": "mae_tiny_fashion_mnist"}, (128, 2, 4)),
    "micro": ({"method": "mae_tiny_fashion_mnist",
               "model": {"encoder": {"embed_dim": 32, "depth": 2, "num_heads": 2},
                         "decoder": {"embed_dim": 16, "depth": 1, "num_heads": 2}}}, (16, 1, 2)),
}
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_rate(device: torch.device, size: int = 1024, reps: int = 5) -> float:
    """GFLOP/s of a size^3 fp32 matmul (median), as the large-kernel reference."""
    a = torch.randn(size, size, device=device)
    a @ a
    ts = []
    for _ in range(reps):
        _sync(device)
        t = time.process_time() if device.type == "cpu" else time.perf_counter()
        a @ a
        _sync(device)
        ts.append((time.process_time() if device.type == "cpu" else time.perf_counter()) - t)
    return 2 * size**3 / statistics.median(ts) / 1e9


def count_flops(fn) -> float:
    """FLOPs of fn(): FlopCounterMode, plus CPU attention by formula (4 B H Tq Tk hd forward,
    twice that backward), since the CPU SDPA kernels report none."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    attn = [0.0]

    class SDPA(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func)
            if "scaled_dot_product" in name and "for_cpu" in name:  # CUDA kernels are counted by FlopCounterMode
                bwd = "backward" in name
                q, k = (args[1], args[2]) if bwd else (args[0], args[1])
                b, h, tq, hd = q.shape
                attn[0] += (8 if bwd else 4) * b * h * tq * k.shape[-2] * hd
            return func(*args, **(kwargs or {}))

    with FlopCounterMode(display=False) as fc, SDPA():
        fn()
    return float(fc.get_total_flops()) + attn[0]


def profile_loop(fn) -> dict[str, float]:
    """Seconds of the loop by kind: matmul / attention kernels, other aten ops, the rest."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        fn()
        wall = time.perf_counter() - t
    out = {"matmul": 0.0, "attention": 0.0, "other_aten": 0.0}
    for e in prof.key_averages():
        if not e.key.startswith("aten::"):
            continue
        s = e.self_cpu_time_total / 1e6
        kind = "matmul" if e.key in MATMUL else "attention" if "scaled_dot_product" in e.key else "other_aten"
        out[kind] += s
    out["python_dispatch_autograd"] = max(0.0, wall - sum(out.values()))
    out["wall"] = wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", default="tiny:128,tiny:32,tiny:16,micro:16")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=None, help="images per batched group (default: auto_chunk)")
    ap.add_argument("--impl", default="stacked", choices=["stacked", "vmap", "auto"])
    ap.add_argument("--run", default=None)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--out", default=None, help="writes OUT.json and OUT.md")
    args = ap.parse_args()

    from mimkit.api import build
    from mimkit.plugin_api import load_source
    from mimkit_ttt_mae import adapt_batched, adapt_loop, auto_chunk, build_head, mask_noise

    device = torch.device(args.device)
    cpu = device.type == "cpu"
    clock = time.process_time if cpu else time.perf_counter
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rate = matmul_rate(device)
    rows = []
    for cfg in args.configs.split(","):
        name, copies = cfg.split(":")
        copies = int(copies)
        recipe, (hd, hdepth, hheads) = MODELS[name]
        torch.manual_seed(0)
        model = (load_source(args.run) if args.run and name == "tiny" else build(recipe)).to(device).eval()
        head = build_head("vit", model.encoder, 10, hd, hdepth, hheads).to(device).eval()
        for p in head.parameters():
            p.requires_grad_(False)
        enc = model.encoder
        x = torch.randn(args.images, enc.in_chans, *enc.img_size, device=device)
        noise = mask_noise(range(args.images), args.steps, copies, enc.num_patches, 0).to(device)

        chunk = args.chunk or auto_chunk(copies, device)

        def loop(x=x, noise=noise, model=model, head=head):
            return adapt_loop(model, head, x, noise)

        def batched(x=x, noise=noise, model=model, head=head):
            return adapt_batched(model, head, x, noise, chunk=chunk, impl=args.impl)

        adapt_loop(model, head, x[:1], noise[:1, :1])  # warm-up
        adapt_batched(model, head, x[:2], noise[:2, :1], impl=args.impl)
        wall: dict[str, list[float]] = {"loop": [], "batched": []}
        proc: dict[str, list[float]] = {"loop": [], "batched": []}
        outs = {}
        for r in range(args.repeats):
            for which in (("loop", "batched") if r % 2 == 0 else ("batched", "loop")):
                _sync(device)
                t, c = time.perf_counter(), clock()
                outs[which] = (loop if which == "loop" else batched)()
                _sync(device)
                wall[which].append(time.perf_counter() - t)
                proc[which].append(clock() - c)
        n_img_steps = args.images * args.steps
        med = {k: statistics.median(v) for k, v in proc.items()}
        medw = {k: statistics.median(v) for k, v in wall.items()}
        row = {
            "config": cfg, "copies": copies, "images": args.images, "steps": args.steps, "chunk": chunk,
            "encoder": f"{enc.embed_dim}x{len(enc.vit.blocks)}", "decoder": f"{model.decoder.config.embed_dim}x{model.decoder.config.depth}",
            "wall_s": wall, "clock_s": proc, "clock": "process CPU time" if cpu else "wall",
            "images_per_s": {k: args.images / v for k, v in med.items()},
            "ratio": med["loop"] / med["batched"], "ratio_wall": medw["loop"] / medw["batched"],
            "max_abs_logit_diff": float((outs["loop"] - outs["batched"]).abs().max()),
            "same_predictions": bool(torch.equal(outs["loop"].argmax(-1), outs["batched"].argmax(-1))),
        }
        flops = count_flops(lambda: adapt_loop(model, head, x[:1], noise[:1])) / args.steps
        row["gflop_per_image_step"] = flops / 1e9
        loop_step = med["loop"] / n_img_steps
        row["loop_s_per_image_step"] = loop_step
        row["loop_gflops"] = flops / loop_step / 1e9
        row["batched_gflops"] = flops / (med["batched"] / n_img_steps) / 1e9
        row["roofline_bound"] = loop_step / (flops / (rate * 1e9))
        if cpu and not args.no_profile:
            prof = profile_loop(loop)
            row["loop_profile_s"] = prof
            row["overhead_bound"] = prof["wall"] / max(1e-9, prof["matmul"] + prof["attention"])
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("wall_s", "clock_s")}), flush=True)

    record = {
        "what": "TTT-MAE adaptation: per-image loop (official) vs batched (" + args.impl + ")",
        "device": str(device), "cpu": _cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "matmul_1024_gflops": rate,
        "loadavg_start": load0, "loadavg_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.get_device_name() if device.type == "cuda" else None, "rows": rows,
    }
    md = [f"Device {record['device']} ({record['cuda'] or record['cpu']}), torch {record['torch']}, "
          f"{record['threads']} thread(s); load average {load0} at start, {record['loadavg_end']} at end; "
          f"1024^3 matmul {rate:.1f} GFLOP/s; times are {rows[0]['clock'] if rows else ''}, medians of {args.repeats}.",
          "",
          "| encoder | decoder | copies | GFLOP / image-step | loop s / image-step | loop GFLOP/s | batched GFLOP/s "
          "| **batched / loop** | overhead bound | roofline bound | max logit diff |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bound = f"{r['overhead_bound']:.2f}×" if "overhead_bound" in r else "–"  # profiled on a CPU only
        md.append(f"| {r['encoder']} | {r['decoder']} | {r['copies']} | {r['gflop_per_image_step']:.2f} | "
                  f"{r['loop_s_per_image_step']:.3f} | {r['loop_gflops']:.1f} | {r['batched_gflops']:.1f} | "
                  f"**{r['ratio']:.2f}×** | {bound} | {r['roofline_bound']:.2f}× | "
                  f"{r['max_abs_logit_diff']:.1e} |")
    if any("loop_profile_s" in r for r in rows):
        md += ["", "Loop profile (seconds of one profiled loop run, self time):", "",
               "| config | matmul | attention | other aten ops | Python + dispatch + autograd + optimizer | wall |",
               "|---|---|---|---|---|---|"]
        for r in rows:
            p = r.get("loop_profile_s")
            if p:
                md.append(f"| {r['config']} | {p['matmul']:.2f} ({p['matmul'] / p['wall']:.0%}) | {p['attention']:.2f} "
                          f"({p['attention'] / p['wall']:.0%}) | {p['other_aten']:.2f} ({p['other_aten'] / p['wall']:.0%}) | "
                          f"{p['python_dispatch_autograd']:.2f} ({p['python_dispatch_autograd'] / p['wall']:.0%}) | "
                          f"{p['wall']:.2f} |")
    text = "\n".join(md)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
        out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
