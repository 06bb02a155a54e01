"""The ``fbank_patches`` target: per-patch normalized fbank patches (Audio-MAE's norm_pix_loss).

Each 16x16 (time x mel) patch of the normalized fbank, flattened in (t, f) order (256 values),
minus its mean, divided by sqrt(unbiased var + 1e-6) - the official ``forward_loss``. The same as
the core ``pixels`` target on 1-channel input; a target of its own so that the model's pictures
are spectrograms (``visualizer = "spectrogram"``).
"""
from __future__ import annotations

import math

import attrs
import torch
from torch import nn

from mimkit.plugin_api import BuildEnv, Context, Mask, normalize_patches, patch_stats, patchify


class FbankPatchTarget(nn.Module):
    visualizer = "spectrogram"

    @attrs.define(kw_only=True)
    class Config:
        norm_pix: bool = True
        eps: float = 1e-6

    def __init__(self, config: "FbankPatchTarget.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        enc = env.encoder
        self.patch = enc.patch[1:]
        self.channels = enc.in_chans
        self.dim = math.prod(enc.patch) * self.channels
        self.input_key = env.input_key

    def _variant(self) -> dict:
        return dict(channels=self.channels, per_channel=False, unbiased=True, eps=self.config.eps, eps_inside_sqrt=True)

    @torch.no_grad()
    def forward(self, batch: dict, mask: Mask | None = None, ctx: Context | None = None) -> torch.Tensor:
        patches = patchify(batch[self.input_key].float(), self.patch)  # (B, N, 256)
        return normalize_patches(patches, **self._variant()) if self.config.norm_pix else patches

    @torch.no_grad()
    def to_pixels(self, pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Predictions back to fbank values, each patch with the mean/std of the original patch."""
        if not self.config.norm_pix:
            return pred
        mean, scale = patch_stats(patchify(x.float(), self.patch), **self._variant())
        return pred * scale + mean
