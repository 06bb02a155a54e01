"""TTT-MAE: batched adaptation across test images (vmap) against the official per-image loop.

    OMP_NUM_THREADS=1 python benchmarks/ttt_mae_batched.py [--run RUN] [--images 16] [--steps 3]
        [--copies 32] [--chunk 16] [--repeats 2] [--out benchmarks/results/ttt_mae_batched.json]

Both implementations adapt the same images with the same mask noise from the same weights; the
script checks that their logits agree (max abs difference) and reports images/s of each and
the ratio, measured in one run, interleaved (loop, batched, loop, batched, ...), medians.
Without ``--run`` a randomly initialized ``mae_tiny_fashion_mnist`` is used (timing does not
depend on the weights).
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=None)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--copies", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--head", default="vit", choices=["vit", "linear"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from mimkit.api import build
    from mimkit.plugin_api import load_source
    from mimkit_ttt_mae import adapt_batched, adapt_loop, build_head, mask_noise

    torch.manual_seed(0)
    model = load_source(args.run) if args.run else build({"method": "mae_tiny_fashion_mnist"}).eval()
    head = build_head(args.head, model.encoder, 10, 128, 2, 4).eval()
    for p in head.parameters():
        p.requires_grad_(False)
    x = torch.randn(args.images, model.encoder.in_chans, *model.encoder.img_size)
    noise = mask_noise(range(args.images), args.steps, args.copies, model.encoder.num_patches, 0)

    times = {"loop": [], "batched": []}
    outs = {}
    for r in range(args.repeats):
        for name in (("loop", "batched") if r % 2 == 0 else ("batched", "loop")):
            t = time.perf_counter()
            if name == "loop":
                outs[name] = adapt_loop(model, head, x, noise)
            else:
                outs[name] = adapt_batched(model, head, x, noise, chunk=args.chunk)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: args.images / v for k, v in med.items()}
    diff = float((outs["loop"] - outs["batched"]).abs().max())
    same_pred = bool(torch.equal(outs["loop"].argmax(-1), outs["batched"].argmax(-1)))
    record = {
        "what": "TTT-MAE adaptation, images/s: per-image loop vs batched vmap",
        "images": args.images, "steps": args.steps, "copies": args.copies, "chunk": args.chunk,
        "encoder": {"embed_dim": model.encoder.embed_dim, "depth": len(model.encoder.vit.blocks),
                    "tokens": model.encoder.num_patches},
        "seconds": times, "images_per_s": ips, "ratio_batched_over_loop": ips["batched"] / ips["loop"],
        "max_abs_logit_diff": diff, "same_predictions": same_pred,
        "threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
    }
    print(json.dumps(record, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
