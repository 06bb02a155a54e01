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

Video (B, C, T, H, W) with cubes of pt x ph x pw (``frames`` option):
    first (official, SlowFast ``_get_hog_label_3d``): the HOG of the first frame of each cube
          (``x[:, :, ::pt]``), per frame as above -> (B, t*h*w, C*nbins*cells), tokens in (t, h, w) order;
    all:  the HOG of each of the cube's pt frames, concatenated frame by frame -> (B, t*h*w, pt*C*nbins*cells).

Everything is vectorized (convolutions, scatter_add, unfold); nothing loops over pixels.
"""
from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mimkit.plugin_api import BuildEnv, ConfigError, Context, Mask, one_of


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
        # video cubes of pt frames: "first" = the HOG of the cube's first frame (SlowFast's
        # _get_hog_label_3d takes every pt-th frame); "all" = the pt frames' HOGs concatenated
        frames: str = attrs.field(default="first", validator=one_of("first", "all"))

    def __init__(self, config: "HOGTarget.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        enc = env.encoder
        pt, ph, pw = enc.patch
        self.tubelet = pt
        if ph % config.cell or pw % config.cell:
            raise ConfigError(f"model.target.cell: the patch {(ph, pw)} is not divisible by the cell {config.cell}")
        self.cells = (ph // config.cell, pw // config.cell)
        self.channels = enc.in_chans
        self.frame_dim = self.channels * config.nbins * self.cells[0] * self.cells[1]
        self.dim = self.frame_dim * (pt if config.frames == "all" else 1)
        self.input_key = env.input_key

    @torch.no_grad()
    def forward(self, batch: dict, mask: Mask | None = None, ctx: Context | None = None) -> torch.Tensor:
        x = batch[self.input_key].float()  # (B, C, H, W) or video (B, C, T, H, W)
        c = self.config
        if c.input_mean is not None and c.input_std is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            x = x * torch.tensor(c.input_std, device=x.device).view(shape) + torch.tensor(
                c.input_mean, device=x.device).view(shape)
        if x.ndim == 5:
            return self._video(x)
        if self.tubelet != 1:
            raise ValueError(f"hog target: cubes of {self.tubelet} frames need a video (B, C, T, H, W), "
                             f"got {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):  # fp32 even under bf16/fp16 training
            hog = hog_cells(x, c.nbins, c.cell, c.gaussian_window)  # (B, C, nbins, H/cell, W/cell)
        return hog_per_patch(hog, *self.cells)  # (B, N, dim)

    def _video(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, t*h*w, dim): per-frame HOG, tokens in (t, h, w) raster order."""
        c, pt = self.config, self.tubelet
        b, ch, frames = x.shape[:3]
        if frames % pt:
            raise ValueError(f"hog target: {frames} frames are not divisible by the cube's {pt}")
        if c.frames == "first":
            x = x[:, :, ::pt]  # (B, C, t, H, W): the first frame of every cube
        n_frames = x.shape[2]
        flat = x.transpose(1, 2).reshape(b * n_frames, ch, *x.shape[3:])  # (B*F, C, H, W)
        with torch.autocast(device_type=x.device.type, enabled=False):
            hog = hog_cells(flat, c.nbins, c.cell, c.gaussian_window)  # (B*F, C, nbins, H/cell, W/cell)
        per = hog_per_patch(hog, *self.cells)  # (B*F, h*w, frame_dim)
        hw = per.shape[1]
        if c.frames == "first":
            return per.reshape(b, n_frames * hw, self.frame_dim)  # (B, t*h*w, frame_dim)
        per = per.reshape(b, n_frames // pt, pt, hw, self.frame_dim).transpose(2, 3)  # (B, t, h*w, pt, frame_dim)
        return per.reshape(b, (n_frames // pt) * hw, pt * self.frame_dim)
