"""The ``spectrogram`` visualizer: fbank | masked | reconstruction, one row per clip.

Time runs left to right, mel bins bottom to top. Predictions of hidden patches are put back to
fbank values with the mean/std of the same patch of the original (norm_pix, as MAE's pictures);
the reconstruction shows the visible patches as they were and the predicted ones in between.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import attrs
import torch

from mimkit.plugin_api import Context, patchify, pixel_predictions, pyplot, save_figure, unpatchify


class SpectrogramGrid:
    @attrs.define(kw_only=True)
    class Config:
        num_images: int = 4

    def __init__(self, config: "SpectrogramGrid.Config | None" = None):
        self.config = config or SpectrogramGrid.Config()

    @torch.no_grad()
    def __call__(self, model: Any, batch: dict, path: str | Path, mean: Sequence[float] = (0.0,),
                 std: Sequence[float] = (1.0,), seed: int = 0, title: str = "") -> Path:
        import matplotlib

        plt = pyplot()

        was_training = model.training
        model.eval()
        key = model.input_key
        x = batch[key][: self.config.num_images].float()
        sub = {k: (v[: len(x)] if torch.is_tensor(v) else v) for k, v in batch.items() if k != "_skipped"}
        out = model(sub, Context(generator=torch.Generator().manual_seed(seed)))
        model.train(was_training)
        enc, mask = model.encoder, out.mask
        patch, grid = enc.patch[1:], enc.grid[1:]
        pred = pixel_predictions(model, out, x)
        orig = patchify(x, patch)
        hidden = mask.hidden.unsqueeze(-1)
        cols = [orig, torch.where(hidden, torch.full_like(orig, float("nan")), orig), torch.where(hidden, pred, orig)]
        cols = [unpatchify(c, patch, grid, 1)[:, 0] for c in cols]  # (B, T, F)
        lo, hi = float(x.min()), float(x.max())
        n = x.shape[0]
        names = ["fbank", f"masked ({mask.hidden.float().mean():.0%} hidden)", "reconstruction (+ visible)"]
        fig, axes = plt.subplots(n, 3, figsize=(3 * 3.2, n * 1.6), squeeze=False)
        cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.6")
        for i in range(n):
            for j in range(3):
                ax = axes[i][j]
                ax.imshow(cols[j][i].t().cpu().numpy(), origin="lower", aspect="auto", cmap=cmap, vmin=lo, vmax=hi,
                          interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                if i == 0:
                    ax.set_title(names[j], fontsize=8)
            label = sub.get("label")
            if label is not None:
                axes[i][0].set_ylabel(f"label {int(label[i])}", fontsize=7)
        fig.suptitle((title + "\ntime ->, mel bins ^; hidden patches gray").strip(), fontsize=8)
        return save_figure(fig, path)
