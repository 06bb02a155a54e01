"""How many gray levels does Fashion-MNIST need? Quantization error against palette size.

Fits a palette of each size on the first training batch (32 images at 14x14, as the tiny preset
does), quantizes 2,000 test images and reports the RMS error in 8-bit gray levels and the PSNR;
draws docs/palette_sizes.png (original | one column per size).

    .venv/bin/python plugins/igpt/examples/palette_sizes.py
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from mimkit.plugin_api import FashionMNIST
from mimkit_igpt import Palette
from mimkit_igpt.visualize import _to_display, image_grid

SIZES = (4, 8, 16, 32, 64)


def main(out: Path = Path(__file__).resolve().parents[1] / "docs" / "palette_sizes.png") -> None:
    cfg = dict(img_size=14, channels=1, augment=False)
    train = FashionMNIST(FashionMNIST.Config(split="train", limit=32, **cfg))
    test = FashionMNIST(FashionMNIST.Config(split="test", limit=2000, **cfg))
    fit_on = torch.stack([train[i]["image"] for i in range(32)])  # (32, 1, 14, 14)
    x = torch.stack([test[i]["image"] for i in range(len(test))])
    std = train.std[0]
    cols, names = [x[:6]], ["original"]
    print("| palette size | bits | RMS error (8-bit gray levels) | PSNR (dB) |")
    print("| --- | --- | --- | --- |")
    for k in SIZES:
        pal = Palette(k, 1, seed=0)
        pal.fit(fit_on)
        q = pal.dequantize(pal(x))
        rmse = float(((q - x) * std).pow(2).mean().sqrt()) * 255  # back to [0, 255]
        print(f"| {k} | {math.log2(k):.0f} | {rmse:.2f} | {20 * math.log10(255 / rmse):.1f} |")
        cols.append(q[:6])
        names.append(f"{k} levels")
    disp = [_to_display(c, train.mean, train.std) for c in cols]
    image_grid([[d[i] for d in disp] for i in range(6)], names, out, "Fashion-MNIST 14x14, k-means palettes")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
