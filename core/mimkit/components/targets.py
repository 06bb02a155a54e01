"""The ``pixels`` target, with the per-patch normalization variants of the MAE family (MAE: He et al.
2022, ``norm_pix_loss`` in facebookresearch/mae ``models_mae.py``; VideoMAE, MaskFeat and MFM variants)."""
from __future__ import annotations

import math

import attrs
import torch
from torch import nn

from ..schema import one_of
from ..geometry import normalize_patches, patch_stats, patchify
from ..types import Context, Mask
from . import BuildEnv


class PixelTarget(nn.Module):
    """Raw or per-patch normalized pixels of every token: (B, N, pt*ph*pw*C).

    ``norm``: ``none``; ``patch`` (MAE: all values of a patch, unbiased var, eps inside the
    sqrt); ``patch_channel`` (VideoMAE / BootMAE: per channel; set ``unbiased``, ``eps`` and
    ``eps_inside_sqrt`` to the paper's variant). ``input_mean``/``input_std`` undo the input
    normalization first (VideoMAE computes its target on [0, 1] pixels).
    """

    visualizer = "reconstruction"

    @attrs.define(kw_only=True)
    class Config:
        norm: str = attrs.field(default="patch", validator=one_of("none", "patch", "patch_channel"))
        unbiased: bool = True
        eps: float = 1e-6
        eps_inside_sqrt: bool = True
        input_mean: list[float] | None = None
        input_std: list[float] | None = None

    def __init__(self, config: "PixelTarget.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        enc = env.encoder
        self.patch = enc.patch if enc.patch[0] > 1 else enc.patch[1:]
        self.channels = enc.in_chans
        self.dim = math.prod(enc.patch) * self.channels
        self.input_key = env.input_key

    def _variant(self) -> dict:
        c = self.config
        return dict(channels=self.channels, per_channel=c.norm == "patch_channel", unbiased=c.unbiased,
                    eps=c.eps, eps_inside_sqrt=c.eps_inside_sqrt)

    def raw_patches(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.input_mean is not None and c.input_std is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            x = x * torch.tensor(c.input_std, device=x.device).view(shape) + torch.tensor(c.input_mean, device=x.device).view(shape)
        return patchify(x, self.patch)

    @torch.no_grad()
    def forward(self, batch: dict, mask: Mask | None = None, ctx: Context | None = None) -> torch.Tensor:
        patches = self.raw_patches(batch[self.input_key].float())  # (B, N, P*C)
        if self.config.norm == "none":
            return patches
        return normalize_patches(patches, **self._variant())

    @torch.no_grad()
    def to_pixels(self, pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Predictions (B, N, P*C) back to patch values in input space: norm_pix predictions are
        un-normalized with each patch's own mean and scale taken from the original ``x``."""
        patches = self.raw_patches(x.float())
        if self.config.norm != "none":
            mean, scale = patch_stats(patches, **self._variant())
            pred = pred * scale + mean
        c = self.config
        if c.input_mean is not None and c.input_std is not None:  # back to normalized input space
            mean = torch.tensor(c.input_mean, device=pred.device).repeat(pred.shape[-1] // self.channels)
            std = torch.tensor(c.input_std, device=pred.device).repeat(pred.shape[-1] // self.channels)
            pred = (pred - mean) / std
        return pred
