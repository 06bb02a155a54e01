"""OmniMAE: one visible-only ViT for images and videos (omnivore ``omnimae/omni_mae_model.py``,
``omnivision/models/vision_transformer.py``).

    item: video (C, T, H, W) or image (C, H, W) -> PadIm2Video: an image becomes a 2-frame
          video (the frame repeated)
    cubes 2x16x16 (Conv3d) + fixed 1-D sinusoid positions (sin/cos interleaved, the table of the
          video layout; an image uses the entries of the first temporal slice, as the official
          ``interpolate_pos_encoding`` does for a 1-slice input)
    random masking: 90% of an image's tokens, 95% of a video's; kept tokens in position order
          (the official boolean indexing)
    encoder: ViT blocks (qkv bias, LayerNorm eps 1e-6) on the visible tokens, final norm
    decoder: mask tokens (encoder width) inserted at the hidden positions, + the encoder-width
          sinusoid table, linear to 384, 4 blocks (16 heads), norm, linear to 2*16*16*3 = 1536
    target: per-patch, per-channel normalized pixels after undoing the input normalization
          (``MAELoss(norm_pix_loss, norm_pix_per_channel)``: unbiased var, eps 1e-6 in the sqrt)
    loss: MSE per token, averaged over hidden tokens
    features: mean of the encoder's tokens, then the final norm (``classifier_feature: global_pool``)

Batches: the ``mixture`` dataset pads every item to a common ``(C, T, H, W)`` and records its
real frame count in ``frames``; one step splits the batch by frame count and runs each group
with its own mask ratio (a visible-only encoder needs the same token count within a group).
The step's loss is the sample-weighted mean of the groups' losses, so a batch of one modality
(the official per-batch alternation) gives exactly the official loss.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import attrs
import torch
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.plugin_api import (
    BuildEnv, ConfigError, Context, Mask, MethodModel, Outputs, gather_tokens, init_xavier_, normalize_patches,
    patchify,
)
from mimkit_videomae import sinusoid_table

SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16), "huge": (1280, 32, 16)}


def pad_im2video(x: torch.Tensor, ntimes: int = 2) -> torch.Tensor:
    """PadIm2Video(ntimes, repeat): (B, C, H, W) or a 1-frame (B, C, 1, H, W) -> (B, C, ntimes, H, W)."""
    if x.ndim == 4:
        x = x.unsqueeze(2)
    if x.shape[2] == 1:
        x = x.repeat(1, 1, ntimes, 1, 1)
    return x


def _ratio(_inst: Any, attr: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{attr.name} must be in [0, 1), got {value}")


class NoiseSource(nn.Module):
    """Per-sample mask randomness drawn in the loader from (seed, epoch, index): uniform noise
    over the video layout's N tokens; an image uses its first N_image values."""

    def __init__(self, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(self.num_tokens, generator=generator)


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float, eps: float) -> nn.ModuleList:
    return nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=eps))
                         for _ in range(depth))


class OmniMAE(MethodModel):
    """The OmniMAE model (registered as ``omnimae`` in ``mimkit_models``)."""

    visualizer = None

    @attrs.define(kw_only=True)
    class Config:
        size: str | None = "base"
        embed_dim: int | None = None
        depth: int | None = None
        num_heads: int | None = None
        mlp_ratio: float = 4.0
        img_size: int = 224
        num_frames: int = 16  # the video layout: 16 frames -> 8 temporal slices
        tubelet_size: int = 2
        patch_size: int = 16
        in_chans: int = 3
        image_frames: int = 2  # PadIm2Video(ntimes=2, repeat)
        image_ratio: float = attrs.field(default=0.9, validator=_ratio)
        video_ratio: float = attrs.field(default=0.95, validator=_ratio)
        decoder_embed_dim: int = 384
        decoder_depth: int = 4
        decoder_num_heads: int = 16
        norm_eps: float = 1e-6
        input_mean: list[float] = attrs.field(factory=lambda: [0.485, 0.456, 0.406])
        input_std: list[float] = attrs.field(factory=lambda: [0.229, 0.224, 0.225])
        input_key: str = "video"

    def __init__(self, config: "OmniMAE.Config", env: BuildEnv | None = None):
        super().__init__()
        self.config = config
        base = SIZES.get(config.size, (None, None, None)) if config.size else (None, None, None)
        if config.size is not None and config.size not in SIZES:
            raise ConfigError(f"model.size: must be one of {list(SIZES)} or null, got {config.size!r}")
        dim, depth, heads = (v if v is not None else b for v, b in zip((config.embed_dim, config.depth, config.num_heads), base))
        if dim is None or depth is None or heads is None:
            raise ConfigError("model: set size, or all of embed_dim, depth and num_heads")
        pt, p = config.tubelet_size, config.patch_size
        if config.num_frames % pt or config.img_size % p or config.image_frames % pt:
            raise ConfigError(f"model: frames {config.num_frames} / image_frames {config.image_frames} / img_size "
                              f"{config.img_size} are not divisible by the cube {(pt, p, p)}")
        if len(config.input_mean) != config.in_chans or len(config.input_std) != config.in_chans:
            raise ConfigError(f"model.input_mean/input_std: {config.in_chans} values each")
        self.input_key = config.input_key
        self.embed_dim = dim
        self.patch = (pt, p, p)
        self.spatial = (config.img_size // p) ** 2
        self.num_patches = (config.num_frames // pt) * self.spatial
        self.grid = (config.num_frames // pt, config.img_size // p, config.img_size // p)
        self.in_chans = config.in_chans
        self.patch_embed = nn.Conv3d(config.in_chans, dim, kernel_size=self.patch, stride=self.patch)
        self.register_buffer("pos_embed", sinusoid_table(self.num_patches, dim).unsqueeze(0), persistent=False)  # (1, N, D)
        self.blocks = _blocks(dim, depth, heads, config.mlp_ratio, config.norm_eps)
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # encoder width, as officially
        d = config.decoder_embed_dim
        self.decoder_embed = nn.Linear(dim, d)
        self.decoder_blocks = _blocks(d, config.decoder_depth, config.decoder_num_heads, config.mlp_ratio, config.norm_eps)
        self.decoder_norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.head = nn.Linear(d, pt * p * p * config.in_chans)
        init_xavier_(self)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.masker = NoiseSource(self.num_patches)

    # -- pieces -----------------------------------------------------------------------------

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, N, D) cube embeddings + positions (N = T/2 * H/16 * W/16)."""
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        n = t.shape[1]
        if n > self.num_patches or n % self.spatial:
            raise ValueError(f"omnimae: input {tuple(x.shape)} gives {n} tokens; the layout has {self.num_patches}")
        return t + self.pos_embed[:, :n].to(t.dtype)  # first n/spatial temporal slices of the table

    def mask_for(self, noise: torch.Tensor, ratio: float) -> Mask:
        """Hide the int(N * ratio) largest-noise tokens; kept and hidden stay in position order."""
        n = noise.shape[1]
        hide = int(n * ratio)
        rank = torch.argsort(torch.argsort(noise, dim=1), dim=1)
        return Mask.from_hidden(rank >= n - hide)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        shape = (1, -1, 1, 1, 1)
        raw = x.float() * torch.tensor(c.input_std, device=x.device).view(shape) + torch.tensor(c.input_mean, device=x.device).view(shape)
        return normalize_patches(patchify(raw, self.patch), channels=self.in_chans, per_channel=True, unbiased=True,
                                 eps=1e-6, eps_inside_sqrt=True)

    def decode(self, latent: torch.Tensor, mask: Mask) -> torch.Tensor:
        b, n = mask.hidden.shape
        full = torch.cat([latent, self.mask_token.to(latent.dtype).expand(b, n - mask.num_keep, -1)], dim=1)
        x = gather_tokens(full, mask.ids_restore) + self.pos_embed[:, :n].to(latent.dtype)  # insert_masks + pos
        x = self.decoder_embed(x)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.head(self.decoder_norm(x))  # (B, N, 1536)

    def forward_group(self, x: torch.Tensor, noise: torch.Tensor | None, ratio: float,
                      hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, Outputs]:
        """One modality group (same frame count): its mask from ``noise`` and ``ratio``, or the
        explicit (B_g, N_g) map ``hidden`` (True = hidden, the same count in every row)."""
        tokens = self.tokens(x)
        if hidden is not None:
            mask = Mask.from_hidden(hidden[:, : tokens.shape[1]])
        else:
            mask = self.mask_for(noise[:, : tokens.shape[1]], ratio)
        h = gather_tokens(tokens, mask.ids_keep)
        for blk in self.blocks:
            h = blk(h)
        latent = self.norm(h)
        pred = self.decode(latent, mask)
        target = self.target(x)
        per_token = ((pred.float() - target) ** 2).mean(-1)
        hidden = mask.hidden.float()
        loss = (per_token * hidden).sum() / hidden.sum().clamp(min=1)
        return loss, Outputs(loss=loss, pred=pred, target=target, mask=mask, latent=latent)

    # -- the step -------------------------------------------------------------------------------

    def check_mask(self, hidden: torch.Tensor, frames: torch.Tensor, n_batch: int) -> torch.Tensor:
        """An explicit mask: a boolean (B, N) map, True = hidden, over the batch's token layout
        (N = the tokens of the batch's input, or the model's video layout ``num_patches``, as the
        noise); a sample uses its first T_i/2 * (H/p)(W/p) entries (an image: the first temporal
        slice) and must hide nothing past them. Rows of one frame count (one group of the
        visible-only encoder) hide the same number of tokens."""
        b = frames.shape[0]
        widths = sorted({n_batch, self.num_patches})
        if not isinstance(hidden, torch.Tensor) or hidden.dtype != torch.bool or hidden.ndim != 2 \
                or hidden.shape[0] != b or hidden.shape[1] not in widths:
            got = f"{hidden.dtype} {tuple(hidden.shape)}" if isinstance(hidden, torch.Tensor) else type(hidden).__name__
            raise ConfigError(f"mask must be a boolean (B, N) map (True = hidden) with B = {b} and N in {widths} "
                              f"(the batch's tokens or the video layout's), got {got}")
        own = (frames.to(hidden.device) // self.patch[0]) * self.spatial  # (B,) each sample's token count
        beyond = torch.arange(hidden.shape[1], device=hidden.device) >= own[:, None]
        if bool((hidden & beyond).any()):
            rows = (hidden & beyond).any(1).nonzero().flatten().tolist()
            raise ConfigError(f"mask: rows {rows} hide tokens past their sample's own (frames {frames[rows].tolist()} "
                              f"-> {own[rows].tolist()} tokens)")
        for f in sorted(set(frames.tolist())):
            counts = hidden[frames.to(hidden.device) == f].sum(1)
            if bool((counts != counts[0]).any()):
                raise ConfigError(f"mask: the visible-only encoder needs the same number of hidden tokens in every row "
                                  f"of a modality group; the {f}-frame samples hide {counts.tolist()}")
        return hidden

    def forward(self, batch: dict, ctx: Context | None = None, noise: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> Outputs:
        """One step. ``mask``: an explicit boolean (B, N) map (True = hidden) over the batch's
        tokens, overriding ``noise`` and the ratios (see :meth:`check_mask`); ``out.extra["hidden"]``
        is the step's map in that form, over the batch's tokens."""
        x = batch[self.input_key]
        if x.ndim == 4:  # a plain image batch
            x = pad_im2video(x, self.config.image_frames)
        b = x.shape[0]
        frames = batch.get("frames")
        if frames is None:
            frames = torch.full((b,), x.shape[2], dtype=torch.long)
        frames = torch.as_tensor(frames)
        n_batch = (x.shape[2] // self.patch[0]) * self.spatial
        if mask is not None:
            if noise is not None:
                raise ConfigError("OmniMAE: pass either noise or mask, not both (the noise only draws the mask)")
            mask = self.check_mask(mask.to(x.device) if isinstance(mask, torch.Tensor) else mask, frames, n_batch)
        if noise is None and mask is None:
            noise = batch.get("mask_noise")
        if noise is None and mask is None:
            g = ctx.generator if ctx is not None else None
            noise = torch.stack([self.masker.sample_noise(g) if g is not None else torch.rand(self.num_patches)
                                 for _ in range(b)]).to(x.device)
        total, out = None, Outputs(losses={})
        step_hidden = torch.zeros(b, n_batch, dtype=torch.bool, device=x.device)
        for f in sorted(set(frames.tolist())):
            idx = (frames == f).nonzero().flatten().to(x.device)
            xg = x[idx, :, :f]
            ratio = self.config.image_ratio if f <= self.config.image_frames else self.config.video_ratio
            loss, sub = self.forward_group(xg, None if noise is None else noise[idx], ratio,
                                           None if mask is None else mask[idx])
            term = loss * (len(idx) / b)
            total = term if total is None else total + term
            kind = "image" if f <= self.config.image_frames else "video"
            out.extra[kind] = sub
            step_hidden[idx, : sub.mask.num_tokens] = sub.mask.hidden
        out.extra["hidden"] = step_hidden
        out.loss = total
        out.losses["rec"] = total
        return out

    @torch.no_grad()
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token, no mask, after the blocks (before the final norm): (B, N, D)."""
        if x.ndim == 4 or x.shape[2] == 1:
            x = pad_im2video(x, self.config.image_frames)
        h = self.tokens(x)
        for blk in self.blocks:
            h = blk(h)
        return h

    def pool(self, latent: torch.Tensor, how: str = "mean") -> torch.Tensor:
        return self.norm(latent.mean(1))  # global_pool: mean of the tokens, then the final norm

    @torch.no_grad()
    def features(self, x: torch.Tensor, pool: str = "mean") -> torch.Tensor:
        return self.pool(self.forward_features(x))

    def extra_repr(self) -> str:
        return f"grid={self.grid}, patch={self.patch}, ratios=(image {self.config.image_ratio}, video {self.config.video_ratio})"


__all__ = ["OmniMAE", "pad_im2video", "NoiseSource"]
