"""The demo's quality, to compare two demo runs (before/after a change) on the same machine:
held-out reconstruction error and the last online k-NN accuracy of a run folder.

    python benchmarks/demo_quality.py runs/demo [runs/demo_other ...] [--images 2000]

Reconstruction error: the recipe's own masked loss (MAE: MSE of the normalized-pixel target on the
masked patches) over the first N images of the held-out split (``eval_data``), un-augmented, with
the same mask noise for every run (seed 0), in fp32. Because that loss depends on the patching (at
``img_size: 32`` the zero border makes some patches trivial), the script also reports a pixel error
that any two runs share: the MSE, in [0, 1] pixel units, between the reconstruction (norm_pix
predictions un-normalized with the original patch's mean/std, as ``reconstructions.png`` draws them)
and the original, over the hidden pixels of the central 28x28 Fashion-MNIST content. k-NN: the last ``knn_top1`` row of
``metrics.jsonl`` (the trainer's online probe); ``-`` when the run had no probe.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


@torch.no_grad()
def heldout_loss(run: Path, images: int) -> tuple[float, float]:
    import mimkit
    from mimkit.api import build_dataset
    from mimkit.data import SeededDataset, collate
    from mimkit.types import Context

    model = mimkit.load(run)
    ds = build_dataset(model.recipe, train=False, eval_split=True)
    seeded = SeededDataset(ds, 0, getattr(model.masker, "sample_noise", None))
    total, pix, n = 0.0, 0.0, 0
    for k in range(0, min(images, len(ds)), 250):
        idx = list(range(k, min(k + 250, images, len(ds))))
        batch = collate([seeded[i] for i in idx])
        batch.pop("_skipped", None)
        out = model(batch, Context(generator=None))
        total, n = total + float(out.loss) * len(idx), n + len(idx)
        pix += pixel_error(model, batch["image"], out, float(ds.std[0])) * len(idx)
    return total / n, pix / n


def pixel_error(model, x: torch.Tensor, out, std: float) -> float:
    """MSE in [0, 1] pixel units over the hidden pixels of the central 28x28 content."""
    from mimkit.geometry import patchify, unpatchify
    from mimkit.plugin_api import pixel_predictions

    enc, mask = model.encoder, out.mask
    patch, grid = enc.patch[1:], enc.grid[1:]
    pred = pixel_predictions(model, out, x)
    hidden = mask.hidden.unsqueeze(-1).expand(-1, -1, pred.shape[-1]).float()
    rec = unpatchify(pred, patch, grid, enc.in_chans)  # (B, C, H, W), normalized units
    hid = unpatchify(hidden, patch, grid, enc.in_chans)
    pad = (x.shape[-1] - 28) // 2
    crop = (slice(None), slice(None), slice(pad, pad + 28), slice(pad, pad + 28))
    err = ((rec - x.float())[crop] * std) ** 2 * hid[crop]
    return float(err.sum() / hid[crop].sum())


def last_knn(run: Path) -> float | None:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    knn = [r["knn_top1"] for r in rows if "knn_top1" in r]
    return knn[-1] if knn else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--images", type=int, default=2000)
    a = ap.parse_args(argv)
    print("| run | held-out masked loss | hidden-pixel MSE (28x28) | online k-NN top-1 | steps | images/s (last row) |")
    print("|---|---|---|---|---|---|")
    for r in map(Path, a.runs):
        rows = [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines() if x.strip()]
        speed = [x["images_per_s"] for x in rows if "images_per_s" in x]
        knn = last_knn(r)
        loss, pix = heldout_loss(r, a.images)
        print(f"| {r} | {loss:.4f} | {pix:.5f} | {'-' if knn is None else f'{knn:.1%}'} | "
              f"{rows[-1]['step']} | {speed[-1] if speed else 0:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
