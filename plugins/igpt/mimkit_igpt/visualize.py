"""Pictures of iGPT: image completions (AR) or masked-token predictions (BERT), and palettes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import attrs
import torch

from mimkit.plugin_api import pyplot, save_figure


def _to_display(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalized images (B, C, H, W) -> [0, 1] for display (NaN, the hidden parts, become gray)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return torch.nan_to_num((x.float().cpu() * s + m).clamp(0, 1), nan=0.5)


def image_grid(rows: list[list[torch.Tensor]], names: list[str], path: str | Path, title: str = "") -> Path:
    """A grid of (C, H, W) images in [0, 1]: one list per row, ``names`` over the columns."""
    plt = pyplot()
    n, m = len(rows), len(rows[0])
    fig, axes = plt.subplots(n, m, figsize=(m * 1.25, n * 1.25 + 0.4), squeeze=False)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            ax = axes[i][j]
            arr = img.permute(1, 2, 0).numpy()
            ax.imshow(arr.squeeze(-1) if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(names[j], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=7)
    return save_figure(fig, path)


class Completions:
    """AR: original | quantized | top half given | ``samples`` completions of the bottom half,
    sampled with the KV cache at ``temperature`` over the ``top_k`` most likely colours.
    BERT: original | quantized | masked (gray) | the most likely colour at every masked position."""

    @attrs.define(kw_only=True)
    class Config:
        num_images: int = 6
        samples: int = 4
        temperature: float = 1.0
        top_k: int | None = None
        given_rows: int | None = None  # default: the top half

    def __init__(self, config: "Completions.Config | None" = None):
        self.config = config or Completions.Config()

    @torch.no_grad()
    def __call__(self, model: Any, batch: dict, path: str | Path, mean: Sequence[float] = (0.0,),
                 std: Sequence[float] = (1.0,), seed: int = 0, title: str = "") -> Path:
        cfg = self.config
        was_training = model.training
        model.eval()
        enc = model.encoder
        x = batch[model.input_key][: cfg.num_images]
        device = enc.wte.device
        x = enc.downsample(x.to(device))
        tokens = enc.tokenize(x)  # (n, L)
        n, L = tokens.shape
        side = enc.n_px
        gen = torch.Generator(device=device).manual_seed(seed)
        quant = enc.palette.dequantize(tokens)  # (n, C, side, side)
        if enc.causal:
            given = (side // 2 if cfg.given_rows is None else cfg.given_rows) * side
            prompts = tokens[:, :given].repeat_interleave(cfg.samples, 0)  # (n * S, P)
            done = enc.sample(prompts, L, temperature=cfg.temperature, top_k=cfg.top_k, generator=gen)
            samples = enc.palette.dequantize(done).view(n, cfg.samples, *quant.shape[1:])
            half = quant.clone()
            half.view(n, quant.shape[1], -1)[:, :, given:] = float("nan")
            cols = [x, quant, half] + [samples[:, s] for s in range(cfg.samples)]
            names = ["original", f"quantized ({enc.palette.size} colours)", "given (top)"] + [
                f"sample {s + 1}" for s in range(cfg.samples)]
            caption = f"T={cfg.temperature}, top-k={cfg.top_k}, KV cache"
        else:
            hidden = model.masker(model.masker.draw(n, gen if device.type == "cpu" else None, device))
            h = enc.hidden_states(enc.embed(tokens, hidden))[-1]
            pred = torch.where(hidden, enc.logits(h).argmax(-1), tokens)
            masked = quant.clone()
            masked.view(n, quant.shape[1], -1)[hidden.unsqueeze(1).expand(-1, quant.shape[1], -1)] = float("nan")
            cols = [x, quant, masked, enc.palette.dequantize(pred)]
            names = ["original", f"quantized ({enc.palette.size} colours)",
                     f"masked ({hidden.float().mean():.0%})", "argmax at masked"]
            caption = "BERT objective"
        model.train(was_training)
        disp = [_to_display(c, mean, std) for c in cols]
        rows = [[d[i] for d in disp] for i in range(n)]
        return image_grid(rows, names, path, f"{title}\n{caption}".strip())
