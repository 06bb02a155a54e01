"""MAE's lightweight decoder (models_mae.py: ``forward_decoder``), owned by the MAE plugin.

    latent (B, 1 + N_keep, D) -> linear to D_dec -> mask tokens in the hidden slots, un-shuffled
    -> + fixed 2D sin-cos positions -> blocks -> LayerNorm -> linear to the target's width
    -> drop the [CLS] output: (B, N, D_target)   (predict: all)
With ``predict: masked`` (VideoMAE) the mask tokens are appended after the visible tokens and
only their outputs are predicted: (B, N_hidden, D_target) in ``mask.ids_hidden`` order.
"""
from __future__ import annotations

from functools import partial

import attrs
import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from mimkit.plugin_api import (
    BuildEnv, Context, gather_tokens, init_xavier_, Mask, one_of, restore_tokens, sincos_2d,
    sincos_3d,
)


class MAEDecoder(nn.Module):
    """Linear embed, mask token, sin-cos positions, ``depth`` ViT blocks, norm, linear head."""

    @attrs.define(kw_only=True)
    class Config:
        embed_dim: int = 512
        depth: int = 8
        num_heads: int = 16
        mlp_ratio: float = 4.0
        predict: str = attrs.field(default="all", validator=one_of("all", "masked"))
        out_dim: int | None = None  # defaults to the target's width (pixels: p*p*C)
        norm_eps: float = 1e-6
        embed_bias: bool = True
        grad_checkpointing: bool = False  # recompute block activations in backward (memory for time)

    def __init__(self, config: "MAEDecoder.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        enc = env.encoder
        out_dim = env.decoder_width(config.out_dim)
        self.predict = config.predict
        self.grad_checkpointing = config.grad_checkpointing
        self.num_prefix = enc.num_prefix_tokens
        d = config.embed_dim
        self.embed = nn.Linear(enc.embed_dim, d, bias=config.embed_bias)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        t, h, w = enc.grid
        table = sincos_2d(d, h, w, cls_token=self.num_prefix == 1) if t == 1 else sincos_3d(d, t, h, w, cls_token=self.num_prefix == 1)
        self.pos_embed = nn.Parameter(table.unsqueeze(0), requires_grad=False)  # (1, P + N, d), fixed
        self.blocks = nn.ModuleList(
            Block(d, config.num_heads, config.mlp_ratio, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=config.norm_eps))
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.pred = nn.Linear(d, out_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        init_xavier_(self)

    def forward(self, latent: torch.Tensor, mask: Mask, ctx: Context | None = None) -> torch.Tensor:
        x = self.embed(latent)  # (B, P + N_keep, d)
        p = self.num_prefix
        prefix, visible = x[:, :p], x[:, p:]
        n = mask.num_tokens
        if self.predict == "all":
            if visible.shape[1] == n:  # an encoder that already saw every position
                full = visible
            else:
                full = restore_tokens(visible, self.mask_token, mask.ids_restore)  # (B, N, d)
            x = torch.cat([prefix, full], dim=1) + self.pos_embed
        else:
            pos = self.pos_embed[:, p:].expand(x.shape[0], -1, -1)  # (B, N, d)
            vis = visible + gather_tokens(pos, mask.ids_keep)
            hid = self.mask_token + gather_tokens(pos, mask.ids_hidden)  # (B, N_hidden, d)
            x = torch.cat([prefix + self.pos_embed[:, :p], vis, hid], dim=1)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        x = self.norm(x)
        if self.predict == "all":
            return self.pred(x[:, p:])  # (B, N, D_target)
        return self.pred(x[:, -(n - mask.num_keep):])  # (B, N_hidden, D_target)
