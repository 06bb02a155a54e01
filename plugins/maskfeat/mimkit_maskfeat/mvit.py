"""The ``mvit_video`` encoder: MViTv2 for video as MaskFeat pretrains it (SlowFast ``MaskMViT``).

    video (B, C, T, H, W) -> Conv3d stem (kernel / stride / padding from the config): a stem grid
    T0 x H0 x W0 of width D0 -> hidden positions replaced by a learned [MASK] token (the mask is
    given on the prediction grid and repeated up to the stem grid, nearest) -> [CLS] prepended
    -> (absolute positions, off in the Kinetics recipe) -> multiscale blocks up to the prediction
    block -> LayerNorm (the prediction head's norm): (B, 1 + t*h*w, D) on the prediction grid.

A multiscale block (SlowFast ``MultiScaleBlock``, ``pool_first: False``, conv pooling)::

    xn = LN1(x);  q, k, v = heads of qkv(xn)
    q, k, v pooled per head by depthwise Conv3d (kernel k, stride s, padding k // 2) + LN
        ([CLS] kept out of the pooling, normed with the rest)
    attn = softmax(q k^T / sqrt(hd) + rel_h + rel_w + rel_t)   decomposed relative positions,
        computed from the pooled (unscaled) q
    o = attn v (+ q: residual pooling, on the patch tokens);  x = maxpool_skip(x) + proj(o)
    xn = LN2(x);  x = (proj(xn) if the width changes else x) + MLP(xn)

The stage schedule follows SlowFast's ``MViT.__init__``: ``dim_mul`` / ``head_mul`` entries
[block, factor] multiply the width / heads from that block on (a block's output width already
takes the next block's factor, ``round_width``), ``pool_q_stride`` entries [block, st, sh, sw]
pool the queries (and the skip path) of that block, the kv stride starts at
``pool_kv_stride_adaptive`` and is divided by every q stride met, ``pool_kvq_kernel`` is the
pooling kernel of every listed block. Parameter names are SlowFast's (``patch_embed.proj``,
``blocks.N.attn.qkv / pool_q / norm_q / rel_pos_h``, ``blocks.N.proj``, ``mask_token``, ...), so
the official files load with a near-identity key map (see ``convert.py``).
"""
from __future__ import annotations

import math
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from mimkit.plugin_api import BuildEnv, ConfigError, Mask, one_of


def round_width(width: float, multiplier: float, min_width: int = 1, divisor: int = 1) -> int:
    """SlowFast's ``round_width``: width * multiplier rounded to a multiple of ``divisor``."""
    if not multiplier:
        return int(width)
    width = width * multiplier
    min_width = min_width or divisor
    out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


@attrs.frozen
class BlockSpec:
    """One block of the schedule."""

    dim: int
    dim_out: int
    heads: int
    input_size: tuple[int, int, int]  # SlowFast's ``input_size`` (integer-divided grid) for the rel-pos tables
    kernel_q: tuple[int, ...]
    kernel_kv: tuple[int, ...]
    stride_q: tuple[int, ...]
    stride_kv: tuple[int, ...]


def schedule(c: "MViTVideoEncoder.Config", stem: tuple[int, int, int]) -> list[BlockSpec]:
    """The per-block widths, heads, pooling kernels/strides of SlowFast's ``MViT.__init__``
    (all ``depth`` blocks; the encoder keeps the first ``pred_depth + 1``)."""
    depth = c.depth
    dim_mul, head_mul = [1.0] * (depth + 1), [1.0] * (depth + 1)
    for i, m in c.dim_mul:
        dim_mul[int(i)] = float(m)
    for i, m in c.head_mul:
        head_mul[int(i)] = float(m)
    stride_q: list[tuple[int, ...]] = [()] * depth
    kernel_q: list[tuple[int, ...]] = [()] * depth
    for entry in c.pool_q_stride:
        i, st = int(entry[0]), tuple(int(v) for v in entry[1:])
        stride_q[i] = st
        kernel_q[i] = tuple(c.pool_kvq_kernel) if c.pool_kvq_kernel is not None else tuple(
            s + 1 if s > 1 else s for s in st)
    kv_entries = [list(e) for e in c.pool_kv_stride]
    if c.pool_kv_stride_adaptive is not None:
        kv = [int(v) for v in c.pool_kv_stride_adaptive]
        kv_entries = []
        for i in range(depth):
            if stride_q[i]:
                kv = [max(kv[d] // stride_q[i][d], 1) for d in range(len(kv))]
            kv_entries.append([i] + kv)
    stride_kv: list[tuple[int, ...]] = [()] * depth
    kernel_kv: list[tuple[int, ...]] = [()] * depth
    for entry in kv_entries:
        i, st = int(entry[0]), tuple(int(v) for v in entry[1:])
        stride_kv[i] = st
        kernel_kv[i] = tuple(c.pool_kvq_kernel) if c.pool_kvq_kernel is not None else tuple(
            s + 1 if s > 1 else s for s in st)
    specs = []
    dim, heads, size = c.embed_dim, c.num_heads, tuple(stem)
    for i in range(depth):
        heads = round_width(heads, head_mul[i])
        if c.dim_mul_in_att:
            dim_out = round_width(dim, dim_mul[i], divisor=round_width(heads, head_mul[i]))
        else:
            dim_out = round_width(dim, dim_mul[i + 1], divisor=round_width(heads, head_mul[i + 1]))
        specs.append(BlockSpec(dim, dim_out, heads, size, kernel_q[i], kernel_kv[i], stride_q[i], stride_kv[i]))
        if stride_q[i]:
            size = tuple(s // st for s, st in zip(size, stride_q[i]))
        dim = dim_out
    return specs


def attention_pool(t: torch.Tensor, pool: nn.Module | None, thw: tuple[int, int, int], has_cls: bool,
                   norm: nn.Module | None) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(B, heads, L, hd) -> pooled per head over the (t, h, w) grid, [CLS] kept out, then ``norm``."""
    if pool is None:
        return t, thw
    if has_cls:
        cls, t = t[:, :, :1], t[:, :, 1:]
    b, nh, _, hd = t.shape
    grid = t.reshape(b * nh, *thw, hd).permute(0, 4, 1, 2, 3)  # (B*heads, hd, T, H, W)
    grid = pool(grid)
    thw = tuple(grid.shape[2:])
    t = grid.reshape(b, nh, hd, -1).transpose(2, 3)
    if has_cls:
        t = torch.cat((cls, t), dim=2)
    if norm is not None:
        t = norm(t)
    return t, thw


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """A (L, hd) relative-position table linearly resized to ``length`` rows (SlowFast ``get_rel_pos``)."""
    if table.shape[0] == length:
        return table
    out = F.interpolate(table.reshape(1, table.shape[0], -1).permute(0, 2, 1), size=length, mode="linear")
    return out.reshape(-1, length).permute(1, 0)


def rel_index(q: int, k: int) -> torch.Tensor:
    """(q, k) indices into a table of 2 max(q, k) - 1 distances, scaled when the sizes differ."""
    q_ratio, k_ratio = max(k / q, 1.0), max(q / k, 1.0)
    dist = torch.arange(q)[:, None] * q_ratio - torch.arange(k)[None, :] * k_ratio + (k - 1) * k_ratio
    return dist.long()


class MultiScaleAttention3d(nn.Module):
    """Pooling attention (conv pooling after the projection, ``pool_first: False``)."""

    def __init__(self, dim: int, dim_out: int, spec: BlockSpec, qkv_bias: bool, has_cls: bool,
                 rel_pos_spatial: bool, rel_pos_temporal: bool, residual_pooling: bool, norm_eps: float):
        super().__init__()
        self.num_heads = spec.heads
        self.dim_out = dim_out
        head_dim = dim_out // spec.heads
        self.scale = head_dim ** -0.5
        self.has_cls = has_cls
        self.qkv = nn.Linear(dim, dim_out * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)
        kq = spec.kernel_q if not (math.prod(spec.kernel_q) == 1 and math.prod(spec.stride_q) == 1) else ()
        kkv = spec.kernel_kv if not (math.prod(spec.kernel_kv) == 1 and math.prod(spec.stride_kv) == 1) else ()

        def pool(kernel, stride):
            if not kernel:
                return None, None
            conv = nn.Conv3d(head_dim, head_dim, kernel, stride=stride, padding=[k // 2 for k in kernel],
                             groups=head_dim, bias=False)
            return conv, nn.LayerNorm(head_dim, eps=norm_eps)

        self.pool_q, self.norm_q = pool(kq, spec.stride_q)
        self.pool_k, self.norm_k = pool(kkv, spec.stride_kv)
        self.pool_v, self.norm_v = pool(kkv, spec.stride_kv)
        self.rel_pos_spatial, self.rel_pos_temporal = rel_pos_spatial, rel_pos_temporal
        t, h, w = spec.input_size
        if rel_pos_spatial:
            if h != w:
                raise ConfigError(f"model.encoder.rel_pos_spatial: needs a square grid, got {h}x{w}")
            q_size = h // spec.stride_q[1] if spec.stride_q else h
            kv_size = h // spec.stride_kv[1] if spec.stride_kv else h
            length = 2 * max(q_size, kv_size) - 1
            self.rel_pos_h = nn.Parameter(torch.zeros(length, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(length, head_dim))
        if rel_pos_temporal:
            self.rel_pos_t = nn.Parameter(torch.zeros(2 * t - 1, head_dim))
        self.residual_pooling = residual_pooling

    def add_rel_pos(self, attn: torch.Tensor, q: torch.Tensor, q_thw: tuple[int, int, int],
                    k_thw: tuple[int, int, int]) -> torch.Tensor:
        """attn + decomposed relative positions on the patch-token block, (B, heads, Nq, Nk): the
        spatial terms (h, then w) first, then the temporal one, as SlowFast adds them."""
        (qt, qh, qw), (kt, kh, kw) = q_thw, k_thw
        b, nh, _, hd = q.shape
        sp = int(self.has_cls)
        r_q = q[:, :, sp:].reshape(b, nh, qt, qh, qw, hd)
        patch = attn[:, :, sp:, sp:].reshape(b, nh, qt, qh, qw, kt, kh, kw)
        if self.rel_pos_spatial:
            rh = resize_rel_pos(self.rel_pos_h, 2 * max(qh, kh) - 1)[rel_index(qh, kh).to(q.device)]  # (qh, kh, hd)
            rw = resize_rel_pos(self.rel_pos_w, 2 * max(qw, kw) - 1)[rel_index(qw, kw).to(q.device)]
            patch = (patch + torch.einsum("bnthwc,hkc->bnthwk", r_q, rh)[:, :, :, :, :, None, :, None]
                     + torch.einsum("bnthwc,wkc->bnthwk", r_q, rw)[:, :, :, :, :, None, None, :])
        if self.rel_pos_temporal:
            rt = resize_rel_pos(self.rel_pos_t, 2 * max(qt, kt) - 1)[rel_index(qt, kt).to(q.device)]  # (qt, kt, hd)
            # per query time step: (qt, B*heads*qh*qw, hd) @ (qt, hd, kt)
            rel = torch.matmul(r_q.permute(2, 0, 1, 3, 4, 5).reshape(qt, -1, hd), rt.transpose(1, 2))
            rel = rel.reshape(qt, b, nh, qh, qw, kt).permute(1, 2, 0, 3, 4, 5)  # (B, heads, qt, qh, qw, kt)
            patch = patch + rel[:, :, :, :, :, :, None, None]
        patch = patch.reshape(b, nh, qt * qh * qw, kt * kh * kw)
        if not sp:
            return patch
        top = attn[:, :, :sp]  # the [CLS] query row and the [CLS] key column keep no relative term
        return torch.cat((top, torch.cat((attn[:, :, sp:, :sp], patch), dim=3)), dim=2)

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, q_thw = attention_pool(q, self.pool_q, thw, self.has_cls, self.norm_q)
        k, k_thw = attention_pool(k, self.pool_k, thw, self.has_cls, self.norm_k)
        v, _ = attention_pool(v, self.pool_v, thw, self.has_cls, self.norm_v)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.rel_pos_spatial or self.rel_pos_temporal:
            attn = self.add_rel_pos(attn, q, q_thw, k_thw)
        out = attn.softmax(dim=-1) @ v
        if self.residual_pooling:
            if self.has_cls:
                out = torch.cat((out[:, :, :1], out[:, :, 1:] + q[:, :, 1:]), dim=2)
            else:
                out = out + q
        out = out.transpose(1, 2).reshape(b, -1, self.dim_out)
        return self.proj(out), q_thw


class MultiScaleBlock3d(nn.Module):
    """Pre-norm block with pooling attention, a max-pooled skip path and, when the width changes,
    a linear ``proj`` of the normed tokens (after the attention, or before it with ``dim_mul_in_att``)."""

    def __init__(self, spec: BlockSpec, c: "MViTVideoEncoder.Config", drop_path: float):
        super().__init__()
        dim, dim_out = spec.dim, spec.dim_out
        self.dim, self.dim_out, self.dim_mul_in_att = dim, dim_out, c.dim_mul_in_att
        self.has_cls = c.cls_embed
        att_dim = dim_out if c.dim_mul_in_att else dim
        self.norm1 = nn.LayerNorm(dim, eps=c.norm_eps)
        self.attn = MultiScaleAttention3d(dim, att_dim, spec, c.qkv_bias, c.cls_embed, c.rel_pos_spatial,
                                          c.rel_pos_temporal, c.residual_pooling, c.norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(att_dim, eps=c.norm_eps)
        self.mlp = Mlp(att_dim, int(att_dim * c.mlp_ratio), dim_out, act_layer=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)
        skip = spec.stride_q
        self.pool_skip = None
        if skip and math.prod(skip) > 1:
            kernel = [s + 1 if s > 1 else s for s in skip]
            self.pool_skip = nn.MaxPool3d(kernel, skip, [k // 2 for k in kernel], ceil_mode=False)

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        xn = self.norm1(x)
        out, thw_new = self.attn(xn, thw)
        if self.dim_mul_in_att and self.dim != self.dim_out:
            x = self.proj(xn)
        res, _ = attention_pool(x.unsqueeze(1), self.pool_skip, thw, self.has_cls, None)
        x = res.squeeze(1) + self.drop_path(out)
        xn = self.norm2(x)
        mlp = self.mlp(xn)
        if not self.dim_mul_in_att and self.dim != self.dim_out:
            x = self.proj(xn)
        return x + self.drop_path(mlp), thw_new


class PatchEmbed3d(nn.Module):
    def __init__(self, in_chans: int, dim: int, kernel, stride, padding):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=tuple(kernel), stride=tuple(stride), padding=tuple(padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, T0*H0*W0, D0)


def _triple(name: str):
    def check(_inst: Any, _attr: attrs.Attribute, value: list[int]) -> None:
        if len(value) != 3 or min(int(v) for v in value) < 0:
            raise ValueError(f"{name} needs three non-negative sizes (t, h, w), got {value}")
    return check


#: The K400 MaskFeat MViTv2-S schedule (configs/masked_ssl/k400_MVITv2_S_16x4_MaskFeat_PT.yaml): q pooled
#: at blocks 1 and 3 only (block 14 keeps 14x14, the config's "highlight").
_S_Q_STRIDE = [[i, 1, 2, 2] if i in (1, 3) else [i, 1, 1, 1] for i in range(16)]


class MViTVideoEncoder(nn.Module):
    """``mvit_video``: MViTv2 (SlowFast ``MViT`` + ``MaskMViT``'s [MASK] token) up to the
    prediction block; defaults = the Kinetics-400 MaskFeat MViTv2-S."""

    @attrs.define(kw_only=True)
    class Config:
        embed_dim: int = 96  # MVIT.EMBED_DIM (stem width)
        num_heads: int = 1  # MVIT.NUM_HEADS (first stage)
        depth: int = 16  # MVIT.DEPTH (the schedule's length)
        pred_depth: int | None = None  # MASK.PRETRAIN_DEPTH: the block predicted from (None: depth - 1); later ones dropped
        mlp_ratio: float = 4.0
        qkv_bias: bool = True
        patch_kernel: list[int] = attrs.field(factory=lambda: [3, 7, 7], validator=_triple("model.encoder.patch_kernel"))
        patch_stride: list[int] = attrs.field(factory=lambda: [2, 4, 4], validator=_triple("model.encoder.patch_stride"))
        patch_padding: list[int] = attrs.field(factory=lambda: [1, 3, 3], validator=_triple("model.encoder.patch_padding"))
        dim_mul: list[list[float]] = attrs.field(factory=lambda: [[1, 2.0], [3, 2.0], [14, 2.0]])
        head_mul: list[list[float]] = attrs.field(factory=lambda: [[1, 2.0], [3, 2.0], [14, 2.0]])
        pool_q_stride: list[list[int]] = attrs.field(factory=lambda: [list(e) for e in _S_Q_STRIDE])
        pool_kvq_kernel: list[int] | None = attrs.field(factory=lambda: [3, 3, 3])
        pool_kv_stride: list[list[int]] = attrs.field(factory=list)  # used when pool_kv_stride_adaptive is None
        pool_kv_stride_adaptive: list[int] | None = attrs.field(factory=lambda: [1, 8, 8])
        dim_mul_in_att: bool = False
        cls_embed: bool = True  # MVIT.CLS_EMBED_ON
        use_abs_pos: bool = False  # MVIT.USE_ABS_POS (off in the K400 MaskFeat config)
        sep_pos_embed: bool = True  # MVIT.SEP_POS_EMBED (only read with use_abs_pos)
        rel_pos_spatial: bool = True
        rel_pos_temporal: bool = True
        rel_pos_zero_init: bool = False
        residual_pooling: bool = True
        drop_path: float = 0.0  # MVIT.DROPPATH_RATE (linear over the full depth)
        norm_eps: float = 1e-6
        img_size: int = attrs.field(default=224, metadata={"follows": "img_size"})
        num_frames: int = attrs.field(default=16, metadata={"follows": "num_frames"})
        in_chans: int = 3
        grad_checkpointing: bool = False  # MODEL.ACT_CHECKPOINT: recompute each block in the backward pass
        # every position goes through the encoder, hidden ones as the [MASK] token (MaskFeat)
        mode: str = attrs.field(default="with_mask_token", validator=one_of("with_mask_token"))

    def __init__(self, config: "MViTVideoEncoder.Config", env: BuildEnv | None = None):
        super().__init__()
        c = self.config = config
        if c.depth < 1:
            raise ConfigError(f"model.encoder.depth: at least 1 block, got {c.depth}")
        pred = c.depth - 1 if c.pred_depth is None else c.pred_depth
        if not 0 <= pred < c.depth:
            raise ConfigError(f"model.encoder.pred_depth: a block index in [0, {c.depth - 1}], got {c.pred_depth}")
        for key in ("dim_mul", "head_mul", "pool_q_stride", "pool_kv_stride"):
            for entry in getattr(c, key):
                if not entry or not 0 <= int(entry[0]) <= c.depth or (key.startswith("pool") and len(entry) != 4):
                    raise ConfigError(f"model.encoder.{key}: entries are [block, ...] with a block in [0, {c.depth}] "
                                      f"(pool strides: [block, st, sh, sw]); got {entry}")
        k, s, p = c.patch_kernel, c.patch_stride, c.patch_padding
        size = (c.num_frames, c.img_size, c.img_size)
        stem = tuple(_conv_out(n, ki, si, pi) for n, ki, si, pi in zip(size, k, s, p))
        if stem != tuple(n // si for n, si in zip(size, s)):
            raise ConfigError(f"model.encoder: the stem (kernel {k}, stride {s}, padding {p}) maps the input "
                              f"{list(size)} to {list(stem)}, not input // stride (as SlowFast assumes)")
        specs = schedule(c, stem)[: pred + 1]
        grid, stride = list(stem), list(s)
        for spec in specs:
            if spec.stride_q:
                grid = [_conv_out(n, kk, st, kk // 2) for n, kk, st in
                        zip(grid, [st + 1 if st > 1 else st for st in spec.stride_q], spec.stride_q)]
                stride = [a * b for a, b in zip(stride, spec.stride_q)]
        if grid[0] != stem[0]:
            raise ConfigError(f"model.encoder.pool_q_stride: time is pooled before the prediction block "
                              f"({stem[0]} -> {grid[0]}): the [MASK] map and the HOG frames need the stem's time steps")
        if any(n // st != g for n, st, g in zip(size, stride, grid)):
            raise ConfigError(f"model.encoder: the prediction grid {grid} is not input {list(size)} // stride {stride}")
        if any(a % b for a, b in zip(stem, grid)):
            raise ConfigError(f"model.encoder: the prediction grid {grid} does not divide the stem grid {list(stem)}")
        for spec in specs:
            att = spec.dim_out if c.dim_mul_in_att else spec.dim
            if att % spec.heads:
                raise ConfigError(f"model.encoder: the attention width {att} is not divisible by {spec.heads} heads")
        d0 = c.embed_dim
        self.stem_grid: tuple[int, int, int] = stem
        self.grid: tuple[int, int, int] = tuple(grid)
        self.patch: tuple[int, int, int] = tuple(stride)  # input pixels per prediction token (HOG cells / frames)
        self.embed_dim: int = specs[-1].dim_out
        self.in_chans: int = c.in_chans
        self.num_frames: int = c.num_frames
        self.img_size: tuple[int, int] = (c.img_size, c.img_size)
        self.num_prefix_tokens: int = int(c.cls_embed)
        self.num_patches: int = math.prod(self.grid)
        self.patch_embed = PatchEmbed3d(c.in_chans, d0, k, s, p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d0)) if c.cls_embed else None
        if c.use_abs_pos and c.sep_pos_embed:
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, stem[1] * stem[2], d0))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, stem[0], d0))
            self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, d0)) if c.cls_embed else None
        elif c.use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(stem) + int(c.cls_embed), d0))
        rates = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]  # torch.linspace(0, rate, depth)
        self.blocks = nn.ModuleList(MultiScaleBlock3d(spec, c, rates[i]) for i, spec in enumerate(specs))
        self.norm = nn.LayerNorm(self.embed_dim, eps=c.norm_eps)  # MSSeparateHead's LayerNorm (pred_head.transforms.0.0)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d0))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SlowFast's init: trunc-normal 0.02 for linears/convs, linear and LayerNorm biases 0.02
        (``MViT._init_weights``); [CLS], [MASK], position tables, relative positions trunc-normal
        0.02 (zero with ``rel_pos_zero_init``); the head's LayerNorm 1 / 0 (``MSSeparateHead``)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv3d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.constant_(m.bias, 0.02)
            elif isinstance(m, nn.LayerNorm):
                nn.init.constant_(m.bias, 0.02)
                nn.init.constant_(m.weight, 1.0)
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("cls_token", "mask_token") or leaf.startswith("pos_embed") or (
                    leaf.startswith("rel_pos_") and not self.config.rel_pos_zero_init):
                nn.init.trunc_normal_(p, std=0.02)
            elif leaf.startswith("rel_pos_"):
                nn.init.zeros_(p)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    # -- embed -------------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        want = (self.in_chans, self.num_frames, *self.img_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(f"mvit_video encoder expects (B, {', '.join(map(str, want))}) input, got {tuple(x.shape)}")

    def stem_mask(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, t*h*w) bool on the prediction grid -> (B, T0*H0*W0) on the stem grid (nearest,
        as ``F.interpolate`` of the loader's mask to the stem's H0 x W0)."""
        b = hidden.shape[0]
        (t, h, w), (t0, h0, w0) = self.grid, self.stem_grid
        m = hidden.reshape(b, t, h, w)
        m = m.repeat_interleave(t0 // t, 1).repeat_interleave(h0 // h, 2).repeat_interleave(w0 // w, 3)
        return m.reshape(b, t0 * h0 * w0)

    def pos_embed_all(self) -> torch.Tensor | None:
        c = self.config
        if not c.use_abs_pos:
            return None
        if not c.sep_pos_embed:
            return self.pos_embed
        t0, h0, w0 = self.stem_grid
        pos = self.pos_embed_spatial.repeat(1, t0, 1) + torch.repeat_interleave(self.pos_embed_temporal, h0 * w0, dim=1)
        return torch.cat([self.pos_embed_class, pos], 1) if c.cls_embed else pos

    def embed(self, x: torch.Tensor, mask: Mask | None = None) -> torch.Tensor:
        """Stem tokens, hidden ones replaced by [MASK], [CLS] first, + positions: (B, 1 + N0, D0)."""
        self._check_input(x)
        tokens = self.patch_embed(x)
        b = tokens.shape[0]
        if mask is not None:
            hidden = mask.hidden
            if tuple(hidden.shape) != (b, self.num_patches):
                raise ValueError(f"mvit_video: the mask must cover the prediction grid {self.grid} "
                                 f"({self.num_patches} tokens), got {tuple(hidden.shape)}")
            m = self.stem_mask(hidden).unsqueeze(-1).to(tokens.dtype)
            tokens = tokens * (1 - m) + self.mask_token.to(tokens.dtype) * m
        if self.cls_token is not None:
            tokens = torch.cat((self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens), dim=1)
        pos = self.pos_embed_all()
        return tokens if pos is None else tokens + pos.to(tokens.dtype)

    # -- encode ------------------------------------------------------------------------------

    def encode(self, tokens: torch.Tensor, mask: Mask | None = None, return_layers: bool = False):
        """The blocks up to the prediction block, then the head's LayerNorm: (B, 1 + t*h*w, D)."""
        thw = self.stem_grid
        layers = []
        x = tokens
        for blk in self.blocks:
            if self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
                x, thw = checkpoint(blk, x, thw, use_reentrant=False)
            else:
                x, thw = blk(x, thw)
            if return_layers:
                layers.append(x)
        x = self.norm(x)
        return (x, layers) if return_layers else x

    def forward(self, x: torch.Tensor, mask: Mask | None = None) -> torch.Tensor:
        return self.encode(self.embed(x, mask), mask)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token, no mask: (B, 1 + t*h*w, D)."""
        return self.encode(self.embed(x, None))

    def pool(self, latent: torch.Tensor, how: str = "mean") -> torch.Tensor:
        """(B, T, D) -> (B, D): the [CLS] token (``cls``), else the mean of the patch tokens
        (MViT's fine-tuning pools by the mean, ``USE_MEAN_POOLING``, or [CLS])."""
        if how == "cls" and self.num_prefix_tokens:
            return latent[:, 0]
        return latent[:, self.num_prefix_tokens:].mean(1)
