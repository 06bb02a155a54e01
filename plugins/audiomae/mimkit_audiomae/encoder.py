"""The ``audio_vit`` encoder: Audio-MAE's visible-only ViT on 1-channel (time x mel) fbanks.

Input (B, 1, T, F) (1024 x 128 for AudioSet), non-overlapping 16x16 patches, tokens in
(time, frequency) raster order (token k = t * F' + f), a [CLS] token, fixed 2-D sin-cos
positions. Built on the core ``vit`` encoder (timm blocks with qkv bias, LayerNorm eps 1e-6 -
the official ``Block``), so weights keep timm's names under ``encoder.vit.``.

Position table (``pos_table``):
- ``official`` (default, needed to load official weights): the official code builds the table
  with the grid counts swapped (``patch_hw = (F', T')``), so token k gets the code of
  (column k mod T', row k div T') instead of its own (f, t);
- ``correct``: token (t, f) gets column f, row t (MAE's convention), for training from scratch.
"""
from __future__ import annotations

import attrs
import torch

from mimkit.plugin_api import BuildEnv, ConfigError, ViTEncoder, one_of, sincos_2d


def audio_pos_table(dim: int, grid_t: int, grid_f: int, kind: str = "official", cls_token: bool = True) -> torch.Tensor:
    """(1 + T'*F', dim) table for a (T', F') token grid; ``kind`` official (swapped) or correct."""
    if kind == "official":
        return sincos_2d(dim, grid_f, grid_t, cls_token=cls_token)  # get_2d_sincos_pos_embed_flexible((F', T'))
    return sincos_2d(dim, grid_t, grid_f, cls_token=cls_token)


class AudioViTEncoder(ViTEncoder):
    """Visible-only ViT on fbank patches with [CLS] (Audio-MAE's encoder)."""

    @attrs.define(kw_only=True)
    class Config(ViTEncoder.Config):
        model: str = "vit_base_patch16_224"
        img_size: int | list[int] | None = attrs.field(factory=lambda: [1024, 128])  # (frames, mel bins)
        patch_size: int | None = 16
        in_chans: int | None = 1
        pos_table: str = attrs.field(default="official", validator=one_of("official", "correct"))

    def __init__(self, config: "AudioViTEncoder.Config", env: BuildEnv | None = None):
        super().__init__(config, env)
        _, gt, gf = self.grid
        if self.num_prefix_tokens != 1:
            raise ConfigError(f"model.encoder.model: Audio-MAE needs a ViT with one [CLS] token, {config.model!r} has "
                              f"{self.num_prefix_tokens} prefix tokens")
        self.pos_table = config.pos_table
        if config.pos_embed == "sincos":
            self.vit.pos_embed.data.copy_(audio_pos_table(self.embed_dim, gt, gf, config.pos_table).unsqueeze(0))
