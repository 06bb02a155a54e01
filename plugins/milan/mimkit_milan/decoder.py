"""MILAN's prompting decoder (``models_milan.py``: ``forward_decoder``, ``Block_fordecoder``,
``Attention_fordecoder``; ``--change_decoder``).

    latent (B, 1 + K, D) -> linear to d -> + fixed 2D sin-cos positions of their slots
      prompts P = [CLS] + K visible tokens  (B, 1 + K, d)   frozen: never updated by a block
      queries Q = mask token + positions of the hidden slots  (B, M, d)
    each block:  Q <- Q + proj(attn(q = norm1(Q), k, v = [P ; norm1(Q)]))   (prompts enter K/V
                 without norm1, as the official code concatenates the raw prompts)
                 Q <- Q + mlp(norm2(Q))
    [P ; Q] un-shuffled to token order ([CLS] first) -> LayerNorm -> linear to the teacher width
    -> (B, 1 + N, E): a prediction for every token, [CLS] included.
"""
from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from mimkit.plugin_api import BuildEnv, ConfigError, Context, Mask, gather_tokens, init_xavier_, sincos_2d


class PromptingAttention(nn.Module):
    """Queries from the mask-token stream, keys/values from [prompts ; mask tokens]."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        b, m, d = x.shape
        h = self.num_heads
        full = torch.cat([prompts, x], dim=1)  # (B, 1 + K + M, d): token order does not matter to attention
        q = self.q(x).reshape(b, m, h, d // h).transpose(1, 2)  # (B, h, M, d/h)
        k, v = self.kv(full).reshape(b, full.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)  # (B, h, T, d/h)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, M, d/h)
        return self.proj(out.transpose(1, 2).reshape(b, m, d))


class PromptingBlock(nn.Module):
    """A pre-norm block that updates only the mask-token stream."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = PromptingAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), prompts)
        return x + self.mlp(self.norm2(x))


class PromptingDecoder(nn.Module):
    """MILAN's decoder: visible tokens are frozen prompts; only the mask tokens are decoded."""

    @attrs.define(kw_only=True)
    class Config:
        embed_dim: int = 512
        depth: int = 8
        num_heads: int = 16
        mlp_ratio: float = 4.0
        out_dim: int | None = None  # defaults to the target's (teacher's) width
        norm_eps: float = 1e-6

    predict = "all"

    def __init__(self, config: "PromptingDecoder.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        enc = env.encoder
        out_dim = env.decoder_width(config.out_dim)
        if enc.num_prefix_tokens != 1:
            raise ConfigError("model.decoder: the prompting decoder expects an encoder with one [CLS] token")
        t, h, w = enc.grid
        if t != 1:
            raise ConfigError("model.decoder: the prompting decoder is 2D (images)")
        d = config.embed_dim
        self.embed = nn.Linear(enc.embed_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(sincos_2d(d, h, w, cls_token=True).unsqueeze(0), requires_grad=False)  # (1, 1+N, d)
        self.blocks = nn.ModuleList(PromptingBlock(d, config.num_heads, config.mlp_ratio, config.norm_eps)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.pred = nn.Linear(d, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        init_xavier_(self)

    def forward(self, latent: torch.Tensor, mask: Mask, ctx: Context | None = None, return_streams: bool = False):
        """latent (B, 1 + K, D) -> (B, 1 + N, E). With ``return_streams`` also the (prompts,
        queries) pair seen by every block (for inspection: prompts must never change)."""
        x = self.embed(latent)  # (B, 1 + K, d)
        b = x.shape[0]
        pos = self.pos_embed.expand(b, -1, -1)  # (B, 1 + N, d)
        patch_pos = pos[:, 1:]
        prompts = torch.cat([x[:, :1] + pos[:, :1], x[:, 1:] + gather_tokens(patch_pos, mask.ids_keep)], dim=1)
        q = self.mask_token.to(x.dtype) + gather_tokens(patch_pos, mask.ids_hidden)  # (B, M, d)
        streams = []
        for blk in self.blocks:
            if return_streams:
                streams.append((prompts, q))
            q = blk(q, prompts)
        tokens = torch.cat([prompts[:, 1:], q], dim=1)  # (B, N, d) in ids_shuffle order
        tokens = gather_tokens(tokens, mask.ids_restore)  # token order
        out = self.pred(self.norm(torch.cat([prompts[:, :1], tokens], dim=1)))  # (B, 1 + N, E)
        return (out, streams) if return_streams else out
