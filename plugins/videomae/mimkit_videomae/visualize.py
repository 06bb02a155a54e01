"""Video pictures: the ``video_reconstruction`` visualizer and the ``video_pixels`` target that names it.

``video_reconstruction`` writes a PNG frame grid - for each clip three rows (original | masked |
reconstruction with the visible cubes pasted back), one column per frame - and an animated GIF
beside it (same name, ``.gif``) playing the three side by side. Predictions of norm_pix targets
are un-normalized with the mean/std of the same cube of the original, as MAE's pictures.

``video_pixels`` is the core ``pixels`` target (same options, same numbers) whose ``visualizer``
is ``video_reconstruction``, so that ``mim visualize`` and the end-of-run pictures of a VideoMAE
recipe draw videos.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import attrs
import torch

from mimkit.plugin_api import (BuildEnv, Context, Mask, one_of, patchify, PixelTarget, pixel_predictions, pyplot,
                               save_figure, unpatchify)


class VideoPixelTarget(PixelTarget):
    """The core ``pixels`` target with VideoMAE's defaults (per-cube, per-channel norm, eps
    outside the sqrt), cubes of (pt, ph, pw) even when pt is 1, and the video visualizer."""

    visualizer = "video_reconstruction"

    @attrs.define(kw_only=True)
    class Config(PixelTarget.Config):
        norm: str = attrs.field(default="patch_channel", validator=one_of("none", "patch", "patch_channel"))
        eps_inside_sqrt: bool = False

    def __init__(self, config: "VideoPixelTarget.Config", env: BuildEnv):
        super().__init__(config, env)
        self.patch = tuple(env.encoder.patch)


def reconstruct(model: Any, batch: dict, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Mask]:
    """(original, masked (NaN where hidden), reconstruction) videos (B, C, T, H, W) in input space."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(batch, Context(generator=torch.Generator().manual_seed(seed)))
    model.train(was_training)
    x = batch[model.input_key].float()
    enc, mask = model.encoder, out.mask
    pred = pixel_predictions(model, out, x)
    orig = patchify(x, enc.patch)
    hidden = mask.hidden.unsqueeze(-1)
    vids = [orig, torch.where(hidden, torch.full_like(orig, float("nan")), orig), torch.where(hidden, pred, orig)]
    return (*[unpatchify(v, enc.patch, enc.grid, enc.in_chans) for v in vids], mask)


class VideoReconstruction:
    @attrs.define(kw_only=True)
    class Config:
        num_videos: int = 3
        max_frames: int = 16
        gif: bool = True
        fps: int = 4

    def __init__(self, config: "VideoReconstruction.Config | None" = None):
        self.config = config or VideoReconstruction.Config()

    def __call__(self, model: Any, batch: dict, path: str | Path, mean: Sequence[float] = (0.0,),
                 std: Sequence[float] = (1.0,), seed: int = 0, title: str = "") -> Path:
        plt = pyplot()
        import numpy as np
        from PIL import Image

        n = min(self.config.num_videos, batch[model.input_key].shape[0])
        sub = {k: (v[:n] if torch.is_tensor(v) else v) for k, v in batch.items() if k != "_skipped"}
        orig, masked, recon, mask = reconstruct(model, sub, seed)
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        vids = [torch.nan_to_num((v.cpu() * s + m).clamp(0, 1), nan=0.5) for v in (orig, masked, recon)]  # hidden = gray
        t = min(orig.shape[2], self.config.max_frames)
        c = orig.shape[1]
        names = ["original", f"masked ({mask.hidden.float().mean():.0%})", "reconstruction"]
        fig, axes = plt.subplots(3 * n, t, figsize=(t * 0.9, 3 * n * 0.95), squeeze=False)
        for i in range(n):
            for r in range(3):
                for f in range(t):
                    ax = axes[3 * i + r][f]
                    img = vids[r][i, :, f].permute(1, 2, 0).numpy()
                    ax.imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
                    ax.set_xticks([]), ax.set_yticks([])
                    if f == 0:
                        ax.set_ylabel(names[r], fontsize=6)
                    if i == 0 and r == 0:
                        ax.set_title(f"frame {f}", fontsize=6)
        fig.suptitle((title + "\nrows: original | masked | reconstruction (+ visible cubes); one column per frame").strip(),
                     fontsize=7)
        path = save_figure(fig, path, dpi=100)
        if self.config.gif:
            frames = []
            for f in range(t):
                rows = [np.concatenate([v[i, :, f].permute(1, 2, 0).numpy() for v in vids], axis=1) for i in range(n)]
                arr = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
                arr = arr[..., 0] if c == 1 else arr
                im = Image.fromarray(arr)
                frames.append(im.resize((im.width * 4, im.height * 4), Image.NEAREST))
            frames[0].save(path.with_suffix(".gif"), save_all=True, append_images=frames[1:],
                           duration=int(1000 / self.config.fps), loop=0)
        return path
