"""CMAE's block-wise masker (``cmae_vit.py`` ``random_masking`` of ZhichengHuang/CMAE).

The (h, w) patch grid is grouped into (h/b, w/b) blocks of b x b patches (b = 2). One uniform
draw per block is argsorted and the first ``int(num_blocks * (1 - ratio))`` blocks are kept, so
every patch of a block shares its block's fate: at 224/16 with ratio 0.65, int(49 * 0.35) = 17
blocks, i.e. 68 of 196 patches, stay visible. Kept patches then enter the encoder in ascending
token order (the official code sorts the 0/1 map, which orders kept tokens arbitrarily; the
encoder is permutation-equivariant on them, so outputs do not depend on that order).
"""
from __future__ import annotations

from typing import Any

import attrs
import torch

from mimkit.plugin_api import BuildEnv, Context, Mask, Masker


def _ratio(_inst: Any, _attr: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {value}")


def _block(_inst: Any, _attr: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise ValueError(f"block must be >= 1 patch, got {value}")


def block_hidden(noise: torch.Tensor, grid: tuple[int, int], block: int, num_keep_blocks: int) -> torch.Tensor:
    """(B, num_blocks) uniform noise -> (B, h*w) bool map, True = hidden, constant per block."""
    b = noise.shape[0]
    gh, gw = grid[0] // block, grid[1] // block
    ids = torch.argsort(noise, dim=1)[:, :num_keep_blocks]  # kept blocks
    keep = torch.zeros(b, gh * gw, dtype=torch.bool, device=noise.device).scatter_(1, ids, True)
    keep = keep.view(b, gh, 1, gw, 1).expand(b, gh, block, gw, block).reshape(b, gh * block * gw * block)
    return ~keep


class BlockMasker(Masker):
    """``cmae_block``: hide ``ratio`` of the b x b blocks of patches, per sample (CMAE)."""

    @attrs.define(kw_only=True)
    class Config:
        ratio: float = attrs.field(default=0.65, validator=_ratio)
        block: int = attrs.field(default=2, validator=_block)

    def __init__(self, config: "BlockMasker.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        enc = env.encoder
        gh, gw = enc.grid[-2], enc.grid[-1]
        b = config.block
        if gh % b or gw % b or (len(enc.grid) == 3 and enc.grid[0] != 1):
            raise ValueError(f"cmae_block: the {gh}x{gw} patch grid must be an image grid divisible by block={b}")
        self.grid = (gh, gw)
        self.num_tokens = gh * gw
        self.num_blocks = (gh // b) * (gw // b)
        self.num_keep_blocks = int(self.num_blocks * (1 - config.ratio))  # the official int() truncation
        self.num_keep = self.num_keep_blocks * b * b

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(self.num_blocks, generator=generator)  # (num_blocks,)

    def forward(self, batch: dict, noise: torch.Tensor, ctx: Context | None = None) -> Mask:
        if noise.dtype == torch.bool:  # an explicit (B, N) map, True = hidden
            return Mask.from_hidden(noise)
        if noise.shape[1:] != (self.num_blocks,):
            raise ValueError(f"cmae_block masker expects noise (B, {self.num_blocks}), got {tuple(noise.shape)}")
        return Mask.from_hidden(block_hidden(noise, self.grid, self.config.block, self.num_keep_blocks))
