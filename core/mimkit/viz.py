"""Pictures a person would rather look at than read: reconstruction grids and loss curves."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import attrs
import torch

from .geometry import patchify, unpatchify
from .types import Context


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def visualizer_name(model: Any) -> str | None:
    """The registered visualizer a model asks for: ``model.visualizer``, else its target's."""
    return getattr(model, "visualizer", None) or getattr(getattr(model, "target", None), "visualizer", None)


class ReconstructionGrid:
    """original | masked | reconstruction (visible patches pasted back), one row per image.

    For norm_pix targets the prediction of each patch is un-normalized with that patch's own
    mean and std taken from the original image, as the official MAE visualization does.
    """

    @attrs.define(kw_only=True)
    class Config:
        num_images: int = 8

    def __init__(self, config: "ReconstructionGrid.Config | None" = None):
        self.config = config or ReconstructionGrid.Config()

    @torch.no_grad()
    def __call__(self, model: Any, batch: dict, path: str | Path, mean: Sequence[float] = (0.0,),
                 std: Sequence[float] = (1.0,), seed: int = 0, title: str = "") -> Path:
        model_was_training = model.training
        model.eval()
        key = model.input_key
        x = batch[key][: self.config.num_images]
        sub = {k: (v[: len(x)] if torch.is_tensor(v) else v) for k, v in batch.items() if k != "_skipped"}
        out = model(sub, Context(generator=torch.Generator().manual_seed(seed)))
        model.train(model_was_training)
        enc, target, mask = model.encoder, model.target, out.mask
        patch = enc.patch[1:]
        pred = out.pred.float()
        if out.pred_scope == "masked":  # scatter hidden-token predictions back to all tokens
            full = torch.zeros(x.shape[0], mask.num_tokens, pred.shape[-1], device=pred.device)
            full.scatter_(1, mask.ids_hidden.unsqueeze(-1).expand_as(pred), pred)
            pred = full
        pred = target.to_pixels(pred, x) if hasattr(target, "to_pixels") else pred
        orig = patchify(x.float(), patch)
        hidden = mask.hidden.unsqueeze(-1)
        masked = torch.where(hidden, torch.full_like(orig, float("nan")), orig)
        pasted = torch.where(hidden, pred, orig)
        grid = enc.grid[1:]
        c = enc.in_chans
        cols = [unpatchify(t, patch, grid, c) for t in (orig, masked, pred, pasted)]
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        cols = [torch.nan_to_num((t.cpu() * s + m).clamp(0, 1), nan=0.5) for t in cols]  # hidden = gray
        plt = _plt()
        n = x.shape[0]
        names = ["original", f"masked ({mask.hidden.float().mean():.0%} hidden)", "prediction", "reconstruction + visible"]
        fig, axes = plt.subplots(n, 4, figsize=(4 * 1.6, n * 1.6), squeeze=False)
        for i in range(n):
            for j in range(4):
                img = cols[j][i].permute(1, 2, 0).numpy()
                ax = axes[i][j]
                ax.imshow(img.squeeze(-1) if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                if i == 0:
                    ax.set_title(names[j], fontsize=7)
        caption = title or ""
        if getattr(getattr(target, "config", None), "norm", "none") != "none":
            caption += "\nnorm_pix: each predicted patch is un-normalized with the mean/std of the same patch of the original"
        fig.suptitle(caption.strip(), fontsize=7)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def loss_curve(metrics_file: str | Path, path: str | Path, title: str = "") -> Path | None:
    """Plot every logged loss term of ``metrics.jsonl`` against the step."""
    all_rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    rows = [r for r in all_rows if "loss" in r]
    knn = [(r["step"], r["knn_top1"]) for r in all_rows if "knn_top1" in r]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if knn:  # the online k-NN probe on a second axis
        ax2 = ax.twinx()
        ax2.plot([k[0] for k in knn], [k[1] for k in knn], "o-", color="tab:green", lw=1, ms=3, label="k-NN top-1")
        ax2.set_ylabel("online k-NN top-1", color="tab:green")
        ax2.set_ylim(0, 1)
    keys = ["loss"] + sorted({k for r in rows for k in r if k.startswith("loss/")})
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, lw=1.5 if k == "loss" else 1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "training loss", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
