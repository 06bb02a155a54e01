"""MFM's (SimMIM-style) linear decoder: a 1x1 convolution to stride^2 * C channels per token,
then PixelShuffle(stride) back to an image.

    latent (B, P + N, D) -> drop the P prefix tokens -> (B, D, gh, gw)
    -> 1x1 conv -> (B, s*s*C, gh, gw) -> PixelShuffle(s) -> (B, C, gh*s, gw*s)

It serves a ViT (stride = the patch size, 16) and the ``resnet`` encoder (stride = the
network's total stride, 32, its tokens being the cells of the last feature map) alike.
"""
from __future__ import annotations

import attrs
import torch
from torch import nn

from mimkit.plugin_api import BuildEnv, ConfigError, Context, Mask


class LinearPixelShuffleDecoder(nn.Module):
    """Tokens -> image: (B, P + N, D) -> (B, C, H, W). ``predict`` is "all"."""

    @attrs.define(kw_only=True)
    class Config:
        stride: int | None = None  # defaults to the encoder's patch (token) size
        out_chans: int | None = None  # defaults to the encoder's input channels

    def __init__(self, config: "LinearPixelShuffleDecoder.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        enc = env.encoder
        _, ph, pw = enc.patch
        if config.stride is None and ph != pw:
            raise ConfigError(f"model.decoder.stride: the encoder's patch {(ph, pw)} is not square; set stride")
        self.stride = config.stride or ph
        self.out_chans = config.out_chans or enc.in_chans
        self.grid = enc.grid[1:]  # (gh, gw)
        self.num_prefix = enc.num_prefix_tokens
        self.predict = "all"
        self.proj = nn.Conv2d(enc.embed_dim, self.stride**2 * self.out_chans, kernel_size=1)
        self.shuffle = nn.PixelShuffle(self.stride)

    def forward(self, latent: torch.Tensor, mask: Mask | None = None, ctx: Context | None = None) -> torch.Tensor:
        tokens = latent[:, self.num_prefix :]  # (B, N, D)
        b, n, d = tokens.shape
        gh, gw = self.grid
        if n != gh * gw:
            raise ValueError(
                f"linear_pixelshuffle needs a latent for every position ({gh}x{gw}), got {n} tokens: "
                "use an encoder that sees the whole image (vit mode: full)"
            )
        fmap = tokens.transpose(1, 2).reshape(b, d, gh, gw)  # (B, D, gh, gw)
        return self.shuffle(self.proj(fmap))  # (B, C, gh*s, gw*s)
