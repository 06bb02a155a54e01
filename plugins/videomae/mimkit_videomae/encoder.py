"""The ``video_vit`` encoder: VideoMAE's ViT with cube embedding and joint space-time attention.

    video (B, C, T, H, W) -> cubes of tubelet x patch x patch (Conv3d, stride = kernel)
    -> only the kept cubes are projected (visible-only, as MAE) -> + fixed 1-D sinusoid table
    -> ``depth`` ViT blocks over the visible tokens -> LayerNorm: (B, N_keep, D)

No [CLS] token (``num_prefix_tokens`` = 0); evaluation pools by the mean of the tokens.
Conventions from the official ``modeling_pretrain.py`` / ``modeling_finetune.py``:
the position table is ``get_sinusoid_encoding_table`` (one sinusoid over the flat token index,
sin on even and cos on odd channels), attention has learned ``q_bias`` and ``v_bias`` but no
key bias, LayerNorm eps 1e-6, xavier-uniform linears.
"""
from __future__ import annotations

from functools import partial

import attrs
import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from mimkit.plugin_api import BuildEnv, ConfigError, gather_tokens, init_xavier_, Mask, one_of

#: (embed_dim, depth, num_heads) of the official pretraining encoders.
SIZES: dict[str, tuple[int, int, int]] = {
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's ``get_sinusoid_encoding_table``: (num_positions, dim), float32.

    angle[p, j] = p / 10000^(2 * (j // 2) / dim); channel j takes sin when j is even and cos
    when j is odd (interleaved, unlike MAE's [sin | cos] halves). Computed in float64 as the
    official numpy code does.
    """
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]  # (P, 1)
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)  # (P, dim)
    table = angle.clone()
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


class QVBiasAttention(Attention):
    """timm's attention with VideoMAE's biases: learned ``q_bias`` and ``v_bias``, key bias fixed
    at zero (the key bias cancels in softmax anyway). Parameter names match the official
    checkpoints (``attn.qkv.weight``, ``attn.q_bias``, ``attn.v_bias``)."""

    def __init__(self, dim: int, num_heads: int = 8, **kwargs) -> None:
        kwargs.pop("qkv_bias", None)
        super().__init__(dim, num_heads=num_heads, qkv_bias=False, **kwargs)
        self.q_bias = nn.Parameter(torch.zeros(self.attn_dim))
        self.v_bias = nn.Parameter(torch.zeros(self.attn_dim))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])  # (3 * A,)
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0, is_causal=is_causal
        )
        x = self.norm(x.transpose(1, 2).reshape(b, n, self.attn_dim))
        return self.proj_drop(self.proj(x))


def make_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float, qkv_bias: str, norm_eps: float,
                drop_path: float = 0.0) -> nn.ModuleList:
    """``depth`` pre-norm ViT blocks; ``qkv_bias``: "qv" (VideoMAE), "qkv" (timm) or "none".
    Stochastic depth rises linearly to ``drop_path`` over the blocks (official schedule)."""
    rates = [drop_path * i / (depth - 1) for i in range(depth)] if depth > 1 else [drop_path] * depth  # linspace
    blocks = nn.ModuleList()
    for i in range(depth):
        blk = Block(dim, num_heads, mlp_ratio, qkv_bias=qkv_bias == "qkv", drop_path=rates[i],
                    norm_layer=partial(nn.LayerNorm, eps=norm_eps))
        if qkv_bias == "qv":
            blk.attn = QVBiasAttention(dim, num_heads)
        blocks.append(blk)
    return blocks


def init_videomae_(module: nn.Module) -> None:
    """The official ``_init_weights`` (the Conv3d cube projection keeps PyTorch's default
    init, as in the official code)."""
    init_xavier_(module)


def _pair(v: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class VideoViTEncoder(nn.Module):
    """VideoMAE's encoder: cube embedding, fixed 1-D sinusoid positions, ViT blocks on the
    visible cubes only. Input (B, C, T, H, W)."""

    @attrs.define(kw_only=True)
    class Config:
        size: str | None = attrs.field(default="base", validator=attrs.validators.optional(one_of(*SIZES)))
        embed_dim: int | None = None  # overrides the size's width
        depth: int | None = None
        num_heads: int | None = None
        mlp_ratio: float = 4.0
        img_size: int | list[int] = attrs.field(default=224, metadata={"follows": "img_size"})  # default: the data's
        num_frames: int = attrs.field(default=16, metadata={"follows": "num_frames"})
        tubelet_size: int = 2
        patch_size: int = 16
        in_chans: int = 3
        qkv_bias: str = attrs.field(default="qv", validator=one_of("qv", "qkv", "none"))
        norm_eps: float = 1e-6
        drop_path: float = 0.0
        grad_checkpointing: bool = False
        # visible_only: VideoMAE (hidden cubes dropped); with_mask_token: MaskFeat/SimMIM (every cube
        # is embedded and the hidden ones replaced by a learned [MASK] token before the positions)
        mode: str = attrs.field(default="visible_only", validator=one_of("visible_only", "with_mask_token"))

    def __init__(self, config: "VideoViTEncoder.Config", env: BuildEnv | None = None):
        super().__init__()
        self.config = config
        base = SIZES[config.size] if config.size is not None else (None, None, None)
        dim, depth, heads = (v if v is not None else b for v, b in
                             zip((config.embed_dim, config.depth, config.num_heads), base))
        if dim is None or depth is None or heads is None:
            raise ConfigError("model.encoder: set size, or all of embed_dim, depth and num_heads")
        if dim % heads:
            raise ConfigError(f"model.encoder: embed_dim {dim} is not divisible by num_heads {heads}")
        h, w = _pair(config.img_size)
        pt, p = config.tubelet_size, config.patch_size
        if config.num_frames % pt or h % p or w % p:
            raise ConfigError(
                f"model.encoder: input {(config.num_frames, h, w)} is not divisible by the cube {(pt, p, p)}"
            )
        self.embed_dim: int = dim
        self.num_prefix_tokens: int = 0
        self.in_chans: int = config.in_chans
        self.grid: tuple[int, int, int] = (config.num_frames // pt, h // p, w // p)
        self.patch: tuple[int, int, int] = (pt, p, p)
        self.img_size: tuple[int, int] = (h, w)
        self.num_frames: int = config.num_frames
        self.num_patches: int = self.grid[0] * self.grid[1] * self.grid[2]
        self.patch_embed = nn.Conv3d(config.in_chans, dim, kernel_size=self.patch, stride=self.patch)
        # fixed, not saved (the official encoder keeps it as a plain tensor too): (1, N, D)
        self.register_buffer("pos_embed", sinusoid_table(self.num_patches, dim).unsqueeze(0), persistent=False)
        self.blocks = make_blocks(dim, depth, heads, config.mlp_ratio, config.qkv_bias, config.norm_eps, config.drop_path)
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        init_videomae_(self)
        self.mask_token = None
        if config.mode == "with_mask_token":  # trunc-normal 0.02, as SlowFast's MaskMViT
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    # -- embed: cubes -> tokens -------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        want = (self.in_chans, self.num_frames, *self.img_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(f"video_vit encoder expects (B, {', '.join(map(str, want))}) input, got {tuple(x.shape)}")

    def _cube_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, N, C*pt*ph*pw), tokens in (t, h, w) raster order, values in the
        Conv3d weight's (c, i, j, k) order."""
        b, c = x.shape[:2]
        (gt, gh, gw), (pt, ph, pw) = self.grid, self.patch
        x = x.reshape(b, c, gt, pt, gh, ph, gw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.reshape(b, gt * gh * gw, c * pt * ph * pw)

    def embed(self, x: torch.Tensor, mask: Mask | None = None) -> torch.Tensor:
        """Cube embedding + positions: (B, N_keep, D) with a mask (only kept cubes are
        projected), else (B, N, D). In ``with_mask_token`` mode always (B, N, D), the hidden
        cubes' embeddings replaced by the [MASK] token (positions added after, as MaskFeat)."""
        self._check_input(x)
        b = x.shape[0]
        pos = self.pos_embed.to(x.dtype).expand(b, -1, -1)  # (B, N, D)
        if mask is None or self.mask_token is not None:
            tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
            if mask is not None:
                tokens = torch.where(mask.hidden.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
            return tokens + pos
        proj = self.patch_embed
        cubes = gather_tokens(self._cube_vectors(x), mask.ids_keep)  # (B, K, C*pt*ph*pw)
        tokens = cubes @ proj.weight.reshape(self.embed_dim, -1).t() + proj.bias  # (B, K, D)
        return tokens + gather_tokens(pos, mask.ids_keep)

    # -- encode: tokens -> latent ------------------------------------------------------------

    def encode(self, tokens: torch.Tensor, mask: Mask | None = None, return_layers: bool = False):
        """Blocks + final norm over the given tokens: (B, T, D) -> (B, T, D). With
        ``return_layers`` also every block's output (before the final norm)."""
        layers = []
        x = tokens
        for blk in self.blocks:
            if self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if return_layers:
                layers.append(x)
        x = self.norm(x)
        return (x, layers) if return_layers else x

    def forward(self, x: torch.Tensor, mask: Mask | None = None) -> torch.Tensor:
        return self.encode(self.embed(x, mask), mask)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token, no mask: (B, N, D)."""
        return self.encode(self.embed(x, None))

    def pool(self, latent: torch.Tensor, how: str = "mean") -> torch.Tensor:
        """(B, N, D) -> (B, D): the mean of the tokens (there is no [CLS]; ``cls`` means mean)."""
        return latent.mean(1)
