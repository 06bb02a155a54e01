"""MaskFeat's HOG target (Wei et al. 2022; conventions of ``HOGLayerC`` in facebookresearch/SlowFast ``slowfast/models/operators.py``).

    image (B, C, H, W)
      -> reflect-pad 1 -> depthwise 3x3 Sobel (cross-correlation: gx = left - right, gy = top - bottom)
      -> magnitude |(gx, gy)|, orientation atan2(gx, gy)           (gx first, as the official code)
      -> hard bin floor(phase / pi * nbins) mod nbins              (unsigned, 180 / nbins degrees)
      [-> magnitude x tiled gaussian window (MMPretrain variant)]
      -> scatter-add into bins -> sum over cell x cell pixels -> L2-normalize each cell's bins
    hog (B, C, nbins, H / cell, W / cell)
      -> per patch of ph x pw pixels: (B, N, C * nbins * (ph/cell) * (pw/cell)),
         value order channel, bin, cell_row, cell_col (16x16 RGB patch, 8 px cells: c*36 + bin*4 + r*2 + c')

Everything is vectorized (convolutions, scatter_add, unfold); nothing loops over pixels.
"""
from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mimkit.plugin_api import BuildEnv, ConfigError, Context, Mask


def gaussian_window(size: int) -> torch.Tensor:
    """(size, size) gaussian, std = size // 2, centred, summing to 1 (SlowFast/MMPretrain ``get_gkern``)."""
    n = torch.arange(size, dtype=torch.float32)
    n = (n - n.mean()) / (size // 2)
    w = torch.exp(-0.5 * n**2)  # (size,)
    k = w[:, None] * w[None, :]
    return k / k.sum()


def hog_cells(x: torch.Tensor, nbins: int = 9, cell: int = 8, window: int = 0) -> torch.Tensor:
    """Per-channel HOG of ``x`` (B, C, H, W) -> (B, C, nbins, H // cell, W // cell).

    Each cell's ``nbins`` histogram is L2-normalized on its own, per channel (no block
    normalization). ``window`` > 0 weights magnitudes with a gaussian of that size tiled over
    the image (MMPretrain's ``gaussian_window=16``); 0 is the official SlowFast build.
    """
    x = x.float()
    b, c, h, w = x.shape
    if h % cell or w % cell:
        raise ValueError(f"image {(h, w)} is not divisible by the HOG cell {cell}")
    sobel_x = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=x.device)
    weight_x = sobel_x.view(1, 1, 3, 3).repeat(c, 1, 1, 1)  # (C, 1, 3, 3), depthwise
    weight_y = weight_x.transpose(2, 3)  # gy = top - bottom
    xp = F.pad(x, (1, 1, 1, 1), mode="reflect")  # (B, C, H + 2, W + 2)
    gx = F.conv2d(xp, weight_x, groups=c)  # (B, C, H, W); conv2d is a cross-correlation
    gy = F.conv2d(xp, weight_y, groups=c)
    magnitude = torch.stack([gx, gy], dim=-1).norm(dim=-1)  # (B, C, H, W)
    phase = torch.atan2(gx, gy) / math.pi * nbins  # (B, C, H, W) in [-nbins, nbins]
    if window:
        if h % window or w % window:
            raise ValueError(f"image {(h, w)} is not divisible by the gaussian window {window}")
        gk = gaussian_window(window).to(x.device).repeat(h // window, w // window)  # (H, W)
        magnitude = magnitude * gk
    bins = torch.remainder(phase.floor().long(), nbins).unsqueeze(2)  # (B, C, 1, H, W), Python-style mod
    out = torch.zeros(b, c, nbins, h, w, dtype=x.dtype, device=x.device)
    out.scatter_add_(2, bins, magnitude.unsqueeze(2))  # (B, C, nbins, H, W)
    out = out.view(b, c, nbins, h // cell, cell, w // cell, cell).sum(dim=(4, 6))  # (B, C, nbins, h, w)
    return F.normalize(out, p=2, dim=2)


def hog_per_patch(hog: torch.Tensor, cells_h: int, cells_w: int) -> torch.Tensor:
    """(B, C, nbins, h, w) cell histograms -> (B, N, C * nbins * cells_h * cells_w) per patch.

    Patches are row-major; within a patch the order is (channel, bin, cell_row, cell_col), the
    order of SlowFast's ``_get_hog_label_2d`` (flatten(1, 2), permute, unfold, unfold, flatten).
    """
    b, c, k, h, w = hog.shape
    gh, gw = h // cells_h, w // cells_w
    x = hog.reshape(b, c, k, gh, cells_h, gw, cells_w)
    x = x.permute(0, 3, 5, 1, 2, 4, 6)  # (B, gh, gw, C, nbins, cells_h, cells_w)
    return x.reshape(b, gh * gw, c * k * cells_h * cells_w)


class HOGTarget(nn.Module):
    """HOG features of every patch: (B, N, C * nbins * (ph / cell) * (pw / cell)); 108 for ViT-B/16 RGB.

    The official code computes the HOG on the network input, i.e. the mean/std-normalized
    image. Per-channel normalization cannot change the result: Sobel kernels sum to zero (the
    mean cancels), atan2 is invariant to a positive scale of (gx, gy), and the per-cell L2
    normalization removes the scale of the magnitudes. ``input_mean``/``input_std`` undo the
    normalization anyway for those who want [0, 1] pixels (only float rounding changes).
    """

    @attrs.define(kw_only=True)
    class Config:
        nbins: int = 9
        cell: int = 8  # pixels per cell side (SlowFast ``pool``)
        gaussian_window: int = 0  # 0: SlowFast (official); 16: MMPretrain HOGGenerator
        input_mean: list[float] | None = None
        input_std: list[float] | None = None

    def __init__(self, config: "HOGTarget.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        enc = env.encoder
        pt, ph, pw = enc.patch
        if pt != 1:
            raise ConfigError("model.target: the hog target supports images only (patch time size 1)")
        if ph % config.cell or pw % config.cell:
            raise ConfigError(f"model.target.cell: the patch {(ph, pw)} is not divisible by the cell {config.cell}")
        self.cells = (ph // config.cell, pw // config.cell)
        self.channels = enc.in_chans
        self.dim = self.channels * config.nbins * self.cells[0] * self.cells[1]
        self.input_key = env.input_key

    @torch.no_grad()
    def forward(self, batch: dict, mask: Mask | None = None, ctx: Context | None = None) -> torch.Tensor:
        x = batch[self.input_key].float()  # (B, C, H, W)
        c = self.config
        if c.input_mean is not None and c.input_std is not None:
            x = x * torch.tensor(c.input_std, device=x.device).view(1, -1, 1, 1) + torch.tensor(
                c.input_mean, device=x.device
            ).view(1, -1, 1, 1)
        with torch.autocast(device_type=x.device.type, enabled=False):  # fp32 even under bf16/fp16 training
            hog = hog_cells(x, c.nbins, c.cell, c.gaussian_window)  # (B, C, nbins, H/cell, W/cell)
        return hog_per_patch(hog, *self.cells)  # (B, N, dim)
