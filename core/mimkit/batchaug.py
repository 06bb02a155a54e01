"""Batched, per-sample seeded augmentation for in-memory tensor datasets (the data fast path).

MAE's pretraining augmentation (RandomResizedCrop + horizontal flip + normalize) applied to a
whole batch in one ``grid_sample`` call instead of one torchvision pipeline per image. Every sample's
crop and flip derive from its own seed (``seed_for(seed, epoch, index, 0)``, as in the per-sample
path), so a batch's images do not depend on which other samples share the batch: runs stay exact on
resume and independent of the number of processes and workers.

The crop box follows torchvision's ``RandomResizedCrop.get_params`` (10 tries of scale and log-ratio,
then the central crop clamped to the ratio range; the same distribution, drawn from one uniform
vector per sample); the resampling has exactly the weights of torchvision's bicubic antialiased
``resized_crop`` on a float image, applied as two batched matmuls (separable rows and columns).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

_TRIES = 10


def crop_boxes(seeds: Sequence[int], height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> torch.Tensor:
    """(B, 5) float64 rows ``(top, left, h, w, flipped)``, one per seed, as RandomResizedCrop +
    RandomHorizontalFlip would draw them (from each sample's own generator)."""
    u = torch.stack([torch.rand(3 * _TRIES + 3, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                     for s in seeds])  # (B, 33)
    area = height * width
    log_r = torch.tensor([math.log(ratio[0]), math.log(ratio[1])], dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, 0:_TRIES])
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * u[:, _TRIES:2 * _TRIES])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full_like(ok[:, 0], -1, dtype=torch.long))
    rows = torch.arange(len(seeds))
    # the fallback: the central crop with the aspect ratio clamped to the range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fh, fw = height, int(round(height * ratio[1]))
    else:
        fw, fh = width, height
    hh = torch.where(first >= 0, h[rows, first.clamp(min=0)], torch.full_like(u[:, 0], fh))
    ww = torch.where(first >= 0, w[rows, first.clamp(min=0)], torch.full_like(u[:, 0], fw))
    top = torch.where(first >= 0, torch.floor(u[:, 2 * _TRIES] * (height - hh + 1)), torch.round((height - hh) / 2))
    left = torch.where(first >= 0, torch.floor(u[:, 2 * _TRIES + 1] * (width - ww + 1)), torch.round((width - ww) / 2))
    flipped = (u[:, 2 * _TRIES + 2] < 0.5) if flip else torch.zeros(len(seeds), dtype=torch.bool)
    return torch.stack([top, left, hh, ww, flipped.double()], 1)


def _cubic_aa(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """The cubic convolution kernel of ATen's antialiased bicubic resize (a = -0.5)."""
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_weights(start: torch.Tensor, length: torch.Tensor, size_in: int, size_out: int) -> torch.Tensor:
    """(B, size_out, size_in) rows that resample the segments ``[start, start + length)`` of a line of
    ``size_in`` pixels to ``size_out`` pixels: the weights of ``F.interpolate(mode="bicubic",
    antialias=True, align_corners=False)`` on the cropped segment (torchvision's ``resized_crop`` on a
    float image), for upsampling and downsampling alike."""
    start, length = start.view(-1, 1, 1), length.view(-1, 1, 1)
    scale = length / size_out
    support = 2.0 * scale.clamp(min=1.0)
    invscale = torch.where(scale >= 1.0, 1.0 / scale, torch.ones_like(scale))
    center = scale * (torch.arange(size_out, dtype=torch.float64).view(1, -1, 1) + 0.5)
    lo = torch.trunc(center - support + 0.5).clamp(min=0)
    hi = torch.minimum(torch.trunc(center + support + 0.5), length)
    j = torch.arange(size_in, dtype=torch.float64).view(1, 1, -1) - start  # source pixel in crop coordinates
    w = _cubic_aa((j - center + 0.5) * invscale) * ((j >= lo) & (j < hi))
    return w / w.sum(-1, keepdim=True)


@functools.lru_cache(maxsize=8192)
def _weights(start: int, length: int, size_in: int, size_out: int, flip: bool, dtype: torch.dtype) -> torch.Tensor:
    w = resize_weights(torch.tensor([float(start)], dtype=torch.float64),
                       torch.tensor([float(length)], dtype=torch.float64), size_in, size_out)[0]
    return (w.flip(0) if flip else w).to(dtype)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``boxes`` (from :func:`crop_boxes`) out of float ``images`` (B, C, H, W) and resize
    each to ``size``×``size``, flipping where the box says so: two batched matmuls with the
    separable weights of torchvision's bicubic antialiased ``resized_crop`` (one small matrix per
    (offset, length) of a side, cached: a batch costs a lookup per sample, no large elementwise op)."""
    rows = boxes.to(torch.int64).tolist()
    h_in, w_in, dt = images.shape[-2], images.shape[-1], images.dtype
    wy = torch.stack([_weights(t, h, h_in, size, False, dt) for t, _, h, _, _ in rows]).unsqueeze(1)
    wx = torch.stack([_weights(l, w, w_in, size, bool(f), dt) for _, l, _, w, f in rows]).unsqueeze(1)
    return wy @ images @ wx.transpose(-1, -2)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - m) / s
