"""MaskFeat's prediction head: one linear layer per patch token (SlowFast ``MSSeparateHead``
in the image ViT config), from the encoder width to the target's width.

    latent (B, P + N, D) -> drop the P prefix tokens -> linear -> (B, N, D_target)   (predict: all)
    with predict "masked": the hidden tokens only, (B, N_hidden, D_target) in mask.ids_hidden order.
"""
from __future__ import annotations

import attrs
import torch
from torch import nn

from mimkit.plugin_api import BuildEnv, Context, gather_tokens, Mask, one_of


class LinearDecoder(nn.Module):
    """A linear head on every patch token of an encoder that keeps all positions
    (``with_mask_token`` or ``full`` mode): it has no mask token of its own."""

    @attrs.define(kw_only=True)
    class Config:
        out_dim: int | None = None  # defaults to the target's width (HOG: 108 for ViT-B/16 RGB)
        predict: str = attrs.field(default="all", validator=one_of("all", "masked"))
        init_std: float = 0.02  # truncated-normal init of the weight, zero bias

    def __init__(self, config: "LinearDecoder.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        out_dim = env.decoder_width(config.out_dim)
        self.predict = config.predict
        self.num_prefix = env.encoder.num_prefix_tokens
        self.head = nn.Linear(env.encoder.embed_dim, out_dim)
        nn.init.trunc_normal_(self.head.weight, std=config.init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, latent: torch.Tensor, mask: Mask, ctx: Context | None = None) -> torch.Tensor:
        tokens = latent[:, self.num_prefix :]  # (B, N, D)
        if tokens.shape[1] != mask.num_tokens:
            raise ValueError(
                f"linear decoder needs a latent for every patch ({mask.num_tokens}), got {tokens.shape[1]}: "
                "use an encoder mode that keeps all positions (vit mode: with_mask_token)"
            )
        if self.predict == "masked":
            if bool((mask.hidden.sum(1) != mask.num_tokens - mask.num_keep).any()):
                raise ValueError(
                    "linear decoder with predict: masked needs the same hidden count in every sample; "
                    "the block masker's counts vary (as the official generator's): use predict: all "
                    "(the MaskFeat presets) or the masker's exact: true"
                )
            tokens = gather_tokens(tokens, mask.ids_hidden)  # (B, N_hidden, D)
        return self.head(tokens)  # (B, N | N_hidden, D_target)
