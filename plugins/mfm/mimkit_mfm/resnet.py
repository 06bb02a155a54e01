"""The ``resnet`` encoder: a timm ResNet behind mimkit's encoder protocol, for MFM with a CNN.

Contract (what the composed ``MaskedModel`` calls, no core change needed):
    embed(x, mask)  -> x unchanged (B, C, H, W): a CNN has no token embedding, and MFM's
                       corruption already happened in input space (mask.corrupted);
                       token masks are ignored (the mask must hide nothing to be meaningful).
    encode(x, mask) -> (B, N, D) tokens = the last feature map (B, D, H/s, W/s) flattened in
                       raster order, s = the network's total stride (32 for ResNet-50), D = 2048.
    forward_features(x) -> the same (B, N, D); pool -> mean over tokens.
Attributes follow the ViT encoder: ``patch`` = (1, s, s), ``grid`` = (1, H/s, W/s),
``num_prefix_tokens`` = 0, so token-level decoders (``linear_pixelshuffle``) work unchanged.
"""
from __future__ import annotations

import attrs
import timm
import torch
from torch import nn

from mimkit.plugin_api import BuildEnv, ConfigError, Mask


def _pair(v: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ResNetEncoder(nn.Module):
    """A timm ResNet (``resnet50`` by default) whose last feature map serves as tokens."""

    @attrs.define(kw_only=True)
    class Config:
        model: str = "resnet50"  # any timm ResNet-like CNN with forward_features
        img_size: int | list[int] = attrs.field(default=224, metadata={"follows": "img_size"})  # default: the data's
        in_chans: int = attrs.field(default=3, metadata={"follows": "channels"})
        drop_path: float = 0.0

    def __init__(self, config: "ResNetEncoder.Config", env: BuildEnv | None = None):
        super().__init__()
        self.config = config
        try:
            self.net = timm.create_model(
                config.model, pretrained=False, num_classes=0, global_pool="", in_chans=config.in_chans,
                drop_path_rate=config.drop_path,
            )
        except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"model.encoder: timm cannot build {config.model!r}: {exc}") from None
        info = getattr(self.net, "feature_info", None)
        stride = int(info[-1]["reduction"]) if info else 32
        h, w = _pair(config.img_size)
        if h % stride or w % stride:
            raise ConfigError(f"model.encoder.img_size: {(h, w)} is not divisible by the network stride {stride}")
        self.embed_dim: int = self.net.num_features
        self.num_prefix_tokens: int = 0
        self.img_size: tuple[int, int] = (h, w)
        self.patch: tuple[int, int, int] = (1, stride, stride)
        self.grid: tuple[int, int, int] = (1, h // stride, w // stride)
        self.in_chans: int = config.in_chans
        self.num_patches: int = (h // stride) * (w // stride)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"resnet encoder expects (B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}) input, "
                f"got {tuple(x.shape)}"
            )

    def embed(self, x: torch.Tensor, mask: Mask | None = None) -> torch.Tensor:
        """The (corrupted) image itself, (B, C, H, W); see the module docstring."""
        self._check_input(x)
        return x

    def encode(self, x: torch.Tensor, mask: Mask | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, D): the last feature map's cells as tokens, raster order."""
        fmap = self.net.forward_features(x)  # (B, D, H/s, W/s)
        return fmap.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: Mask | None = None) -> torch.Tensor:
        return self.encode(self.embed(x, mask), mask)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.encode(x)

    def pool(self, latent: torch.Tensor, how: str = "mean") -> torch.Tensor:
        """(B, N, D) -> (B, D): global average pooling (a CNN has no [CLS] token)."""
        return latent.mean(1)
