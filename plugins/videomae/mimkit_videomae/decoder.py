"""The ``videomae`` decoder (official ``PretrainVisionTransformerDecoder`` with its glue).

    latent (B, N_keep, D) -> bias-free linear to d -> + sinusoid positions of the kept tokens
    -> append mask tokens + the positions of the hidden tokens (no un-shuffle)
    -> ``depth`` blocks -> LayerNorm (eps 1e-6) -> linear: (B, N_hidden, D_target)
in ``mask.ids_hidden`` order (ascending token index, as the official boolean indexing).

Why not MAE's ``mae`` decoder with ``predict: masked, embed_bias: false``: its position table
for video is a 3-D sin-cos table (a third of the channels each for t, h, w, [sin | cos]
halves) where VideoMAE uses one 1-D sinusoid over the flat token index with sin and cos
interleaved, and its attention has a key bias, which VideoMAE's has not.
"""
from __future__ import annotations

import attrs
import torch
from torch import nn

from mimkit.plugin_api import BuildEnv, ConfigError, Context, gather_tokens, Mask, one_of, restore_tokens

from .encoder import init_videomae_, make_blocks, sinusoid_table


class VideoMAEDecoder(nn.Module):
    """Bias-free embed, mask token, 1-D sinusoid positions, ``depth`` blocks, norm, linear head."""

    @attrs.define(kw_only=True)
    class Config:
        embed_dim: int = 384  # 192 for ViT-S, 384 for B, 512 for L, 640 for H
        depth: int = 4
        num_heads: int = 6
        mlp_ratio: float = 4.0
        qkv_bias: str = attrs.field(default="qv", validator=one_of("qv", "qkv", "none"))
        norm_eps: float = 1e-6
        final_norm_eps: float | None = None  # the last LayerNorm's eps (None: norm_eps); Hugging Face's is 1e-5
        predict: str = attrs.field(default="masked", validator=one_of("masked", "all"))
        out_dim: int | None = None  # defaults to the target's width (pixels: pt*ph*pw*C)

    def __init__(self, config: "VideoMAEDecoder.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        enc = env.encoder
        out_dim = env.decoder_width(config.out_dim)
        if getattr(enc, "num_prefix_tokens", 0):
            raise ConfigError("model.decoder: the videomae decoder expects an encoder without prefix tokens")
        if config.embed_dim % config.num_heads:
            raise ConfigError(f"model.decoder: embed_dim {config.embed_dim} is not divisible by num_heads {config.num_heads}")
        self.predict = config.predict
        d = config.embed_dim
        self.embed = nn.Linear(enc.embed_dim, d, bias=False)  # official encoder_to_decoder
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos_embed", sinusoid_table(enc.num_patches, d).unsqueeze(0), persistent=False)  # (1, N, d)
        self.blocks = make_blocks(d, config.depth, config.num_heads, config.mlp_ratio, config.qkv_bias, config.norm_eps)
        self.norm = nn.LayerNorm(d, eps=config.norm_eps if config.final_norm_eps is None else config.final_norm_eps)
        self.head = nn.Linear(d, out_dim)
        init_videomae_(self)
        # the official PretrainVisionTransformer never applies _init_weights to itself, so
        # encoder_to_decoder keeps nn.Linear's default init; its trunc_normal_ cuts at +-std
        self.embed.reset_parameters()
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

    def forward(self, latent: torch.Tensor, mask: Mask, ctx: Context | None = None) -> torch.Tensor:
        x = self.embed(latent)  # (B, N_keep, d)
        b = x.shape[0]
        pos = self.pos_embed.to(x.dtype).expand(b, -1, -1)  # (B, N, d)
        if self.predict == "all":
            x = restore_tokens(x, self.mask_token, mask.ids_restore) + pos  # (B, N, d) in token order
        else:
            vis = x + gather_tokens(pos, mask.ids_keep)  # (B, N_keep, d)
            hid = self.mask_token.to(x.dtype) + gather_tokens(pos, mask.ids_hidden)  # (B, N_hidden, d)
            x = torch.cat([vis, hid], dim=1)
        for blk in self.blocks:
            x = blk(x)
        if self.predict == "all":
            return self.head(self.norm(x))  # (B, N, D_target)
        n_hidden = mask.num_tokens - mask.num_keep
        return self.head(self.norm(x[:, x.shape[1] - n_hidden :]))  # (B, N_hidden, D_target)
