"""Where the demo's training step goes: the whole tiny-MAE step of ``examples/fashion_mnist_mae.yaml``
split into data loading + per-sample augmentation (``num_workers: 0``), collation, masking, forward,
backward, optimizer step and the trainer's own bookkeeping.

    python benchmarks/demo_profile.py [--steps 10] [--threads 2] [--precision no] [--out FILE.md]

Every phase is timed with ``time.perf_counter`` around the same calls the trainer makes, step after step,
and reported as mean ms per step and share of the step. For the AVX2-only fp32 machine of issue 17, run it
under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` with ``--precision no``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _phases(recipe_path: str, overrides: list[str], steps: int, fast: bool) -> dict[str, list[float]]:
    from mimkit.api import build_dataset, build_model
    from mimkit.config import resolve
    from mimkit.data import SeededDataset, collate, epoch_batches
    from mimkit.optim import make_optimizer
    from mimkit.trainer import resolve_precision
    from mimkit.types import Context

    recipe = resolve(recipe_path, overrides)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe)
    dataset = build_dataset(recipe)
    seeded = SeededDataset(dataset, recipe.seed, getattr(model.masker, "sample_noise", None))
    opt = make_optimizer(model, recipe.optim, lr=1e-3)
    precision = resolve_precision(recipe.train.mixed_precision)
    bs = recipe.train.batch_size
    batches = epoch_batches(len(dataset), recipe.seed, 0, bs, 0, 1)
    ctx = Context(generator=None)
    t: dict[str, list[float]] = {k: [] for k in ("data", "collate", "mask", "forward", "backward", "optimizer", "step")}
    model.train()
    for k in range(steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        if fast and hasattr(seeded, "get_batch") and seeded.batched:
            batch = seeded.get_batch(batches[k])
            t1 = t2 = time.perf_counter()
        else:
            items = [seeded[i] for i in batches[k]]
            t1 = time.perf_counter()
            batch = collate(items)
            t2 = time.perf_counter()
        batch.pop("_skipped", None)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            model.make_mask(batch, ctx)  # timed alone; the forward below draws it again
            t3 = time.perf_counter()
            out = model(batch, ctx)
            t4 = time.perf_counter()
        out.loss.backward()
        t5 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t6 = time.perf_counter()
        if k >= 2:
            for name, a, b in (("data", t0, t1), ("collate", t1, t2), ("mask", t2, t3), ("forward", t3, t4),
                               ("backward", t4, t5), ("optimizer", t5, t6)):
                t[name].append((b - a) * 1e3)
            t["step"].append((t6 - t0 - (t3 - t2)) * 1e3)  # the mask is inside the forward too
    return t


def data_paths(recipe_path: str, overrides: list[str], rounds: int) -> dict[str, list[float]]:
    """Data loading + collation of one demo batch, per-sample path against the batched fast path,
    interleaved round by round (ms per batch)."""
    from mimkit.api import build_dataset, build_model
    from mimkit.config import resolve
    from mimkit.data import SeededDataset, collate, epoch_batches

    recipe = resolve(recipe_path, overrides)
    model, dataset = build_model(recipe), build_dataset(recipe)
    seeded = SeededDataset(dataset, recipe.seed, getattr(model.masker, "sample_noise", None))
    batches = epoch_batches(len(dataset), recipe.seed, 0, recipe.train.batch_size, 0, 1)
    t: dict[str, list[float]] = {"per-sample": [], "batched": []}
    for k in range(rounds + 1):
        for name in (("per-sample", "batched") if k % 2 else ("batched", "per-sample")):
            t0 = time.perf_counter()
            if name == "batched":
                seeded.get_batch(batches[k])
            else:
                collate([seeded[i] for i in batches[k]])
            if k:
                t[name].append((time.perf_counter() - t0) * 1e3)
    return t


def table(t: dict[str, list[float]]) -> str:
    med = {k: statistics.fmean(v) for k, v in t.items()}  # means: the phases add up to the step
    total = med["step"]
    rows = ["| phase | mean ms / step | share |", "|---|---|---|"]
    for k in ("data", "collate", "mask", "forward", "backward", "optimizer"):
        share = f"{med[k] / total:.0%}" if k != "mask" else f"({med[k] / total:.1%}, inside forward)"
        rows.append(f"| {k} | {med[k]:.1f} | {share} |")
    rows.append(f"| **whole step** | **{total:.1f}** | 100% |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "examples" / "fashion_mnist_mae.yaml"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    ap.add_argument("--precision", default="no", choices=["no", "bf16", "auto"])
    ap.add_argument("--per-sample", action="store_true", help="force the per-sample data path")
    ap.add_argument("--data-only", action="store_true", help="time only the two data paths, interleaved")
    ap.add_argument("--set", nargs="*", default=[], help="extra recipe overrides")
    ap.add_argument("--out", help="write the markdown table here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    overrides = [f"train.mixed_precision={a.precision}", *a.set]
    load = os.getloadavg()[0]
    if a.data_only:
        d = data_paths(a.recipe, overrides, a.steps)
        med = {k: statistics.median(v) for k, v in d.items()}
        text = (f"Data + collation of one batch, {a.steps} interleaved rounds, {a.threads} threads, load average "
                f"{load:.1f}: per-sample {med['per-sample']:.1f} ms, batched {med['batched']:.1f} ms, "
                f"ratio {med['per-sample'] / med['batched']:.1f}x\n")
        print(text)
        if a.out:
            Path(a.out).write_text(text)
        return 0
    t = _phases(a.recipe, overrides, a.steps, fast=not a.per_sample)
    isa = os.environ.get("ATEN_CPU_CAPABILITY", "default")
    head = (f"Demo step ({Path(a.recipe).name}, {' '.join(overrides)}), {a.steps} steps, {a.threads} threads, "
            f"ATEN_CPU_CAPABILITY={isa}, data path {'per-sample' if a.per_sample else 'default'}, "
            f"load average {load:.1f}, torch {torch.__version__}")
    text = head + "\n\n" + table(t) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
