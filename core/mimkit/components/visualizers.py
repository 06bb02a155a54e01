"""The built-in visualizer ``reconstruction``: original | masked | reconstruction rows."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import attrs
import torch

from ..geometry import patchify, unpatchify
from ..types import Context
from ..viz import pyplot, save_figure


def pixel_predictions(model: Any, out: Any, x: torch.Tensor) -> torch.Tensor:
    """The model's prediction for every token in the input's (normalized) pixel units, (B, N, values):
    hidden-only predictions are scattered back to their tokens (zeros elsewhere) and a target
    that normalizes per patch is undone (``target.to_pixels``)."""
    pred, mask = out.pred.float(), out.mask
    if out.pred_scope == "masked":
        full = torch.zeros(pred.shape[0], mask.num_tokens, pred.shape[-1], device=pred.device)
        full.scatter_(1, mask.ids_hidden.unsqueeze(-1).expand_as(pred), pred)
        pred = full
    target = model.target
    return target.to_pixels(pred, x) if hasattr(target, "to_pixels") else pred


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
        pred = pixel_predictions(model, out, x)
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
        plt = pyplot()
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
        return save_figure(fig, path)
