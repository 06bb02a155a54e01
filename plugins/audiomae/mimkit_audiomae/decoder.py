"""The ``audiomae`` decoder: the official ``forward_decoder`` with both decoder modes.

    latent (B, 1 + K, D) -> linear to d -> un-shuffle with mask tokens, [CLS] kept in front
    -> + sin-cos positions (same table kind as the encoder's)
    mode 1 ("local", the paper's): drop [CLS] -> ``depth`` Swin blocks on the (T', F') grid
    mode 0 ("global"): ``depth`` ViT blocks over [CLS] + tokens, [CLS] dropped at the end
    -> LayerNorm -> linear: (B, N, 16*16) predictions for every token

The Swin block is the one of the official ``timm_patch`` (a Swin-V2-style block): post-norm
(x + norm(attn(x)), x + norm(mlp(x))), cosine attention divided by a per-head learned
temperature ``tau`` (clamped at 0.01), plus a relative-position bias produced by a small MLP
(2 -> 384 -> heads, ReLU, dropout 0.1) from log-spaced relative coordinates; windows of
``window`` tokens, cyclically shifted by ``shift`` on odd blocks with a -100 attention mask
between tokens that were not neighbours before the shift. The official code hard-codes the
AudioSet grid (64 x 8), 16 blocks and 16 heads; here grid, depth, heads and window follow the
configuration. Where a grid side is not larger than the window, the window shrinks to it and
that side is not shifted (as timm's ``_calc_window_shift``).
"""
from __future__ import annotations

from functools import partial

import attrs
import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.plugin_api import BuildEnv, ConfigError, Context, Mask, init_xavier_, one_of, restore_tokens, seed_for

from .encoder import audio_pos_table


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (B * num_windows, wh * ww, C), windows in raster order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window[0], window[0], w // window[1], window[1], c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window[0] * window[1], c)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: -> (B, H, W, C)."""
    h, w = size
    c = windows.shape[-1]
    x = windows.view(-1, h // window[0], w // window[1], window[0], window[1], c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor | None:
    """(num_windows, A, A) additive mask (0 or -100) for windows of a grid rolled by -shift:
    the regions [0, H-wh), [H-wh, H-sh), [H-sh, H) of each shifted side (the official slices)
    may not attend to each other. None when nothing is shifted."""
    if not any(shift):
        return None
    h, w = size
    labels = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for ws in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            labels[:, hs, ws, :] = cnt  # (with shift 0 the last slice covers the side, as officially)
            cnt += 1
    lab = window_partition(labels, window).squeeze(-1)  # (num_windows, A)
    diff = lab.unsqueeze(1) - lab.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowCosineAttention(nn.Module):
    """Scaled cosine attention in a window, with learned temperature and position-bias MLP."""

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], meta_hidden: int = 384, meta_drop: float = 0.1):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.meta_mlp = Mlp(2, hidden_features=meta_hidden, out_features=num_heads, act_layer=nn.ReLU, drop=meta_drop)
        self.tau = nn.Parameter(torch.ones(num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window[0]), torch.arange(window[1]), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).reshape(-1, 2).float()  # (A*A, 2)
        self.register_buffer("rel_log", torch.sign(rel) * torch.log1p(rel.abs()), persistent=False)

    def position_bias(self) -> torch.Tensor:
        a = self.window[0] * self.window[1]
        return self.meta_mlp(self.rel_log).transpose(0, 1).reshape(1, self.num_heads, a, a)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        bw, n, c = x.shape  # (B * windows, A, C)
        q, k, v = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        denom = q.norm(dim=-1, keepdim=True) @ k.norm(dim=-1, keepdim=True).transpose(-2, -1)
        attn = q @ k.transpose(-2, -1) / denom.clamp(min=1e-6)
        attn = attn / self.tau.clamp(min=0.01).view(1, -1, 1, 1) + self.position_bias()
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(bw // nw, nw, self.num_heads, n, n) + mask.to(attn.dtype)[None, :, None]).view(-1, self.num_heads, n, n)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(x)


class SwinBlock(nn.Module):
    """Post-norm (shifted) window block of the official ``timm_patch/swin_transformer.py``."""

    def __init__(self, dim: int, num_heads: int, grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int],
                 mlp_ratio: float = 4.0, norm_eps: float = 1e-6, meta_drop: float = 0.1):
        super().__init__()
        self.grid = grid
        self.window = tuple(min(g, w) for g, w in zip(grid, window))
        self.shift = tuple(0 if g <= w else s for g, w, s in zip(grid, self.window, shift))
        self.attn = WindowCosineAttention(dim, num_heads, self.window, meta_drop=meta_drop)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), out_features=dim)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        mask = shifted_window_mask(grid, self.window, self.shift)
        self.register_buffer("attn_mask", mask, persistent=False)

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, w = self.grid
        x = x.view(b, h, w, c)
        if any(self.shift):
            x = torch.roll(x, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        x = self.attn(window_partition(x, self.window), mask=self.attn_mask)
        x = window_reverse(x, self.window, self.grid)
        if any(self.shift):
            x = torch.roll(x, shifts=self.shift, dims=(1, 2))
        return x.reshape(b, n, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.norm1(self._window_attention(x))
        return x + self.norm2(self.mlp(x))


class AudioMAEDecoder(nn.Module):
    """Audio-MAE's decoder: ``mode: local`` (decoder_mode=1, Swin) or ``global`` (decoder_mode=0)."""

    @attrs.define(kw_only=True)
    class Config:
        mode: str = attrs.field(default="local", validator=one_of("local", "global"))
        embed_dim: int = 512
        depth: int = 16  # official: 16 in mode 1 (hard-coded), decoder_depth = 8 in mode 0
        num_heads: int = 16
        mlp_ratio: float = 4.0
        window: list[int] = attrs.field(factory=lambda: [4, 4])
        shift: list[int] = attrs.field(factory=lambda: [2, 0])  # on odd blocks; [0, 0] = official no_shift
        norm_eps: float = 1e-6
        meta_dropout: float = 0.1  # the position-bias MLP's dropout (active in train mode, as officially)
        pos_table: str | None = attrs.field(default=None, validator=attrs.validators.optional(one_of("official", "correct")))
        out_dim: int | None = None

    predict = "all"

    def __init__(self, config: "AudioMAEDecoder.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        enc = env.encoder
        if getattr(enc, "num_prefix_tokens", 0) != 1:
            raise ConfigError("model.decoder: the audiomae decoder expects an encoder with one [CLS] token (audio_vit)")
        if config.embed_dim % config.num_heads:
            raise ConfigError(f"model.decoder: embed_dim {config.embed_dim} is not divisible by num_heads {config.num_heads}")
        out_dim = env.decoder_width(config.out_dim)
        _, gt, gf = enc.grid
        self.grid = (gt, gf)
        d = config.embed_dim
        self.mode = config.mode
        self.embed = nn.Linear(enc.embed_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        kind = config.pos_table or getattr(enc, "pos_table", "official")
        self.register_buffer("pos_embed", audio_pos_table(d, gt, gf, kind).unsqueeze(0), persistent=False)  # (1, 1+N, d)
        if config.mode == "local":
            window, shift = tuple(config.window), tuple(config.shift)
            if len(window) != 2 or len(shift) != 2:
                raise ConfigError(f"model.decoder.window/shift: two values each (time, frequency), got {window}, {shift}")
            eff = tuple(min(g, w) for g, w in zip(self.grid, window))
            if gt % eff[0] or gf % eff[1]:
                raise ConfigError(f"model.decoder.window: the token grid {self.grid} is not divisible by the window {eff}")
            self.blocks = nn.ModuleList(
                SwinBlock(d, config.num_heads, self.grid, window, (0, 0) if i % 2 == 0 else shift, config.mlp_ratio,
                          config.norm_eps, config.meta_dropout)
                for i in range(config.depth))
        else:
            self.blocks = nn.ModuleList(
                Block(d, config.num_heads, config.mlp_ratio, qkv_bias=True,
                      norm_layer=partial(nn.LayerNorm, eps=config.norm_eps)) for _ in range(config.depth))
        self.norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.pred = nn.Linear(d, out_dim)
        init_xavier_(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def _blocks_seeded(self, x: torch.Tensor, mask: Mask, ctx: Context | None) -> torch.Tensor:
        """The Swin blocks with the position-bias MLP's dropout drawn from a seed derived from
        this step's mask (itself a function of (seed, epoch, sample)) and the step counter, so
        that a resumed run repeats the same dropout (the global RNG is not part of a checkpoint)."""
        ids = mask.ids_shuffle[:, : min(8, mask.ids_shuffle.shape[1])]
        code = int((ids * torch.arange(1, ids.numel() + 1, device=ids.device).view_as(ids)).sum())  # one host sync
        step = ctx.step if ctx is not None else 0
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed_for(step, code, 0x5717))
            for blk in self.blocks:
                x = blk(x)
        return x

    def forward(self, latent: torch.Tensor, mask: Mask, ctx: Context | None = None) -> torch.Tensor:
        x = self.embed(latent)  # (B, 1 + K, d)
        tokens = restore_tokens(x[:, 1:], self.mask_token, mask.ids_restore)  # (B, N, d) in token order
        x = torch.cat([x[:, :1], tokens], dim=1) + self.pos_embed.to(x.dtype)
        if self.mode == "local":
            x = x[:, 1:]
            if self.training and self.config.meta_dropout > 0:
                x = self._blocks_seeded(x, mask, ctx)
            else:
                for blk in self.blocks:
                    x = blk(x)
        else:
            for blk in self.blocks:
                x = blk(x)
        x = self.pred(self.norm(x))
        return x if self.mode == "local" else x[:, 1:]  # (B, N, out)
