"""BootMAE's target-aware decoder (``modeling_pretrain_bootmae.py``: ``Decode_Block``,
``Cross_Attention``, ``PatchDeEmbed``).

    latent (B, 1 + K, D) normed encoder output       memory (B, 1 + K, D): one encoder block's
      -> linear to d                                   output (pre-norm), e.g. block 0 (pixels)
      -> append mask tokens (+ fixed sin-cos positions, mask tokens only: the visible tokens
         already carry the encoder's positions), un-shuffle -> (B, 1 + N, d)
      -> depth x [x + SelfAttn(LN x); x + CrossAttn(LN x, LN memory); x + MLP(LN x)]
      -> LN -> drop [CLS] -> head: linear (features) or ConvTranspose "de-embed" (pixels)
      -> (B, N, out_dim)

The cross-attention to an early encoder layer hands the decoder the low-level detail of the
visible patches, so the encoder need not carry it to its last layer (the paper's point).
"""
from __future__ import annotations

from typing import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mimkit.plugin_api import (
    BuildEnv, ConfigError, Context, gather_tokens, init_xavier_, Mask, one_of, patchify, sincos_2d,
)


class _Attention(nn.Module):
    """BEiT-style attention: q from ``x``, k/v from ``memory`` (self-attention when it is ``x``).

    Biases on q and v only (a k bias cancels in the softmax); ``head_dim = dim // num_heads``
    as in the official code, so 512-d with 12 heads attends in 12 x 42 = 504 dims.
    """

    def __init__(self, dim: int, mem_dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        inner = self.head_dim * num_heads
        self.q = nn.Linear(dim, inner, bias=False)
        self.kv = nn.Linear(mem_dim, 2 * inner, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(inner)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(inner)) if qkv_bias else None
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        m = memory.shape[1]
        kv_bias = None if self.v_bias is None else torch.cat([torch.zeros_like(self.v_bias), self.v_bias])
        q = F.linear(x, self.q.weight, self.q_bias).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        kv = F.linear(memory, self.kv.weight, kv_bias).reshape(b, m, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4)  # (B, H, M, hd) each
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, hd)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class DecodeBlock(nn.Module):
    """Self-attention -> cross-attention to the encoder memory -> MLP, pre-norm residuals."""

    def __init__(self, dim: int, mem_dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, dim, num_heads)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.norm4 = nn.LayerNorm(mem_dim, eps=eps)
        self.c_attn = _Attention(dim, mem_dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h)
        x = x + self.c_attn(self.norm3(x), self.norm4(memory))
        return x + self.mlp(self.norm2(x))


class TargetAwareDecoder(nn.Module):
    """BootMAE's decoder: ``depth`` self-attn / cross-attn / MLP blocks over [CLS] + all tokens.

    ``memory_layer`` picks which encoder block's output the cross-attention reads (0: the
    pixel decoder; -1: the feature decoder); the model passes it, or it is read from
    ``ctx.extra["encoder_layers"]`` (a list of every block's output). ``head``: ``linear``
    (features, out_dim = encoder width by default) or ``deembed`` (pixels: a ConvTranspose2d
    with kernel = stride = patch, read back as (B, N, p*p*C) patches).
    """

    predict = "all"

    @attrs.define(kw_only=True)
    class Config:
        embed_dim: int = 512
        depth: int = 2
        num_heads: int = 12
        mlp_ratio: float = 4.0
        memory_layer: int = -1
        head: str = attrs.field(default="linear", validator=one_of("linear", "deembed"))
        out_dim: int | None = None  # linear head: defaults to the target's width, else the encoder's
        norm_eps: float = 1e-6

    def __init__(self, config: "TargetAwareDecoder.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        enc = env.encoder
        t, gh, gw = enc.grid
        if t != 1:
            raise ConfigError("model.decoder: the target-aware decoder supports image token grids only (t = 1)")
        if enc.num_prefix_tokens > 1:
            raise ConfigError("model.decoder: the target-aware decoder supports at most one prefix token")
        d = config.embed_dim
        if d // config.num_heads == 0:
            raise ConfigError(f"model.decoder.num_heads: {config.num_heads} heads leave no width in {d} dims")
        self.grid, self.patch, self.channels = (gh, gw), enc.patch[1:], enc.in_chans
        self.num_prefix = enc.num_prefix_tokens
        self.embed = nn.Linear(enc.embed_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        table = sincos_2d(d, gh, gw, cls_token=self.num_prefix == 1)
        self.pos_embed = nn.Parameter(table.unsqueeze(0), requires_grad=False)  # (1, P + N, d), fixed
        self.blocks = nn.ModuleList(DecodeBlock(d, enc.embed_dim, config.num_heads, config.mlp_ratio, config.norm_eps)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        if config.head == "deembed":
            self.head = nn.ConvTranspose2d(d, enc.in_chans, kernel_size=self.patch, stride=self.patch)
            self.out_dim = self.patch[0] * self.patch[1] * enc.in_chans
        else:
            self.out_dim = config.out_dim or env.target_dim or enc.embed_dim
            self.head = nn.Linear(d, self.out_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """The official init: xavier-uniform linears (zero bias), unit LayerNorms, N(0, .02)
        truncated mask token; the ConvTranspose de-embedding keeps PyTorch's default (the official
        ``_init_weights`` only re-initializes nn.Conv2d)."""
        init_xavier_(self)
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

    def forward(self, latent: torch.Tensor, mask: Mask, ctx: Context | None = None,
                memory: torch.Tensor | None = None) -> torch.Tensor:
        if memory is None:
            layers: Sequence[torch.Tensor] | None = (ctx.extra.get("encoder_layers") if ctx is not None else None)
            if not layers:
                raise ValueError("target_aware decoder: pass memory= or set ctx.extra['encoder_layers']")
            memory = layers[self.config.memory_layer]
        p = self.num_prefix
        x = self.embed(latent)  # (B, P + K, d)
        b = x.shape[0]
        pos = self.pos_embed[:, p:].expand(b, -1, -1)  # (B, N, d)
        hidden_pos = gather_tokens(pos, mask.ids_hidden)  # (B, N_hidden, d)
        visible = x[:, p:]
        full = torch.cat([visible, self.mask_token.to(x.dtype) + hidden_pos.to(x.dtype)], dim=1)  # kept, then hidden
        full = gather_tokens(full, mask.ids_restore)  # (B, N, d) un-shuffled
        x = torch.cat([x[:, :p], full], dim=1)  # (B, P + N, d)
        for blk in self.blocks:
            x = blk(x, memory)
        x = self.norm(x)[:, p:]  # (B, N, d)
        if self.config.head == "linear":
            return self.head(x)  # (B, N, out_dim)
        gh, gw = self.grid
        img = self.head(x.transpose(1, 2).reshape(b, -1, gh, gw))  # (B, C, H, W)
        return patchify(img, self.patch)  # (B, N, p*p*C), channels fastest
