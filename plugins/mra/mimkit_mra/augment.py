"""MRA (Xu et al., 2022): a frozen MAE as a data augmentation.

For each training image (after the usual augmentation), with probability ``p``:
    attention = CLS attention of the MAE encoder's last block on the whole image   (B, N)
    keep      = the top int(N * (1 - ratio)) patches by attention (the foreground)
    latent    = encoder(visible patches);  pred = decoder(latent)                  (B, N, p*p*C)
    output    = visible patches as they were, hidden patches from the reconstruction
The label is unchanged. With a norm-pix MAE the prediction of a hidden patch is in per-patch
normalized units; it is mapped back to pixels with that patch's own mean and std (as MAE's
reconstruction pictures do), so only the patch's texture is invented by the MAE.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mimkit.plugin_api import Mask, cls_attention, load_source, num_keep_for, patch_stats, patchify, unpatchify


def attention_mask(encoder: nn.Module, x: torch.Tensor, ratio: float) -> Mask:
    """Keep the ``1 - ratio`` most-attended patches (last block's CLS attention, heads averaged)."""
    tokens = encoder.embed(x, None)
    blocks = encoder.vit.blocks
    for blk in blocks[:-1]:
        tokens = blk(tokens)
    attn = cls_attention(blocks[-1], tokens, encoder.num_prefix_tokens)  # (B, N)
    num_keep = num_keep_for(attn.shape[1], ratio)
    # from_noise keeps the smallest noise first: use -attention (ties broken by position)
    return Mask.from_noise(-attn, num_keep)


@torch.no_grad()
def mask_reconstruct_batch(mae: nn.Module, x: torch.Tensor, ratio: float = 0.5, p: float = 1.0,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """The batched transform: x (B, C, H, W) normalized as the MAE's data -> augmented batch; each
    image is replaced by its attention-masked reconstruction with probability ``p``."""
    enc, dec = mae.encoder, mae.decoder
    was = enc.training, dec.training
    enc.eval()
    dec.eval()
    patch = enc.patch[1:]
    mask = attention_mask(enc, x, ratio)
    pred = dec(enc.encode(enc.embed(x, mask), mask), mask)  # (B, N, p*p*C)
    patches = patchify(x, patch)  # (B, N, p*p*C)
    norm = getattr(getattr(mae, "target", None), "config", None)
    if getattr(norm, "norm", None) not in (None, "none", "raw", False):
        mean, scale = patch_stats(patches)
        pred = pred * scale + mean
    mixed = torch.where(mask.hidden[..., None], pred, patches)
    out = unpatchify(mixed, patch, (x.shape[2] // patch[0], x.shape[3] // patch[1]), x.shape[1])  # (B, C, H, W)
    if p < 1.0:
        use = torch.rand(x.shape[0], generator=generator) < p
        out = torch.where(use.view(-1, 1, 1, 1).to(x.device), out, x)
    enc.train(was[0])
    dec.train(was[1])
    return out


class MaskReconstruct:
    """A torchvision-style transform: ``MaskReconstruct(run, ratio, p)(img)`` on one normalized
    (C, H, W) tensor (or a batch); the frozen MAE is loaded once from ``run`` (any mimkit MAE run,
    checkpoint or official file that ``mim`` loads)."""

    def __init__(self, run: Any, ratio: float = 0.5, p: float = 0.5, seed: int | None = None):
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {ratio}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.mae = load_source(run) if not isinstance(run, nn.Module) else run
        for q in self.mae.parameters():
            q.requires_grad_(False)
        self.ratio, self.p = ratio, p
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        single = img.ndim == 3
        x = img[None] if single else img
        out = mask_reconstruct_batch(self.mae, x, self.ratio, self.p, self.generator)
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ratio={self.ratio}, p={self.p})"
