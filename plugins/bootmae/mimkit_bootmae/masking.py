"""BootMAE's mask (``datasets.py`` + ``run_pretraining.py`` + ``utils.mask_to_index``).

The official loader draws a BEiT block mask of ``--num_mask_patches`` = 120 patches (its
default: 16 to 60 patches per block); the training step then sorts the tokens visible first
(ties broken at random) and treats the last ``--mask_num`` = 147 as hidden, so the 120-patch
block mask is topped up with 27 random patches. ``bootmae_block`` draws the same: MaskFeat's
BEiT generator (``mimkit_maskfeat.masking.block_mask``, which it extends) for ``block_num``
patches, then a uniformly random top-up to ``num``. At another grid size the counts default to
the official ones scaled by N / 196.
"""
from __future__ import annotations

import attrs
import torch

from mimkit.plugin_api import BuildEnv, ConfigError, Context, Mask, Masker
from mimkit_maskfeat.masking import block_mask


def _scaled(value: int | None, official: int, n: int, low: int = 1) -> int:
    return value if value is not None else max(low, round(official * n / 196))


class BootMAEBlockMasker(Masker):
    """``block_num`` patches in BEiT blocks, topped up at random to ``num`` hidden patches."""

    @attrs.define(kw_only=True)
    class Config:
        num: int | None = None  # hidden patches in all (official 147 of 196)
        block_num: int | None = None  # of which drawn as blocks (official 120 of 196)
        min_num_patches: int | None = None  # per block (official 16)
        max_num_patches: int | None = None  # per block (official 60)
        min_aspect: float = 0.3

    def __init__(self, config: "BootMAEBlockMasker.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        t, h, w = env.encoder.grid
        if t != 1:
            raise ConfigError("model.masker: bootmae_block supports image token grids only (t = 1)")
        n = h * w
        self.height, self.width, self.num_tokens = h, w, n
        self.num = _scaled(config.num, 147, n)
        self.block_num = min(self.num, _scaled(config.block_num, 120, n))
        self.min_num_patches = _scaled(config.min_num_patches, 16, n)
        self.max_num_patches = _scaled(config.max_num_patches, 60, n)
        if not 0 < self.num < n:
            raise ConfigError(f"model.masker.num: {self.num} hidden patches of {n}; allowed 1 .. {n - 1}")

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        """One sample's mask, (N,) bool in token order, True = hidden."""
        blocks = block_mask(self.height, self.width, self.block_num, generator, self.min_num_patches,
                            self.max_num_patches, self.config.min_aspect, exact=False).view(-1)
        count = int(blocks.sum())
        if count < self.num:  # the official top-up: random visible patches become hidden
            free = (~blocks).nonzero().squeeze(1)
            blocks[free[torch.randperm(free.numel(), generator=generator)[: self.num - count]]] = True
        elif count > self.num:  # cannot happen (block_num <= num); kept as a guard
            taken = blocks.nonzero().squeeze(1)
            blocks[taken[torch.randperm(taken.numel(), generator=generator)[: count - self.num]]] = False
        return blocks

    def forward(self, batch: dict, noise: torch.Tensor, ctx: Context | None = None) -> Mask:
        if noise.shape[1:] != (self.num_tokens,):
            raise ValueError(f"bootmae_block masker expects masks (B, {self.num_tokens}), got {tuple(noise.shape)}")
        return Mask.from_hidden(noise.bool())
