"""The ``block`` masker: BEiT-style blockwise masking (BEiT ``MaskingGenerator``), exact count.

BEiT places random rectangles (area in [min_num_patches, remaining], log-uniform aspect ratio
in [min_aspect, 1 / min_aspect]) until the wanted count is reached or a placement fails ten
times. Its count can fall short; here the mask is then topped up (or, defensively, trimmed)
at random so that every sample hides exactly int(ratio * N) patches, which lets a
visible-only encoder batch the kept tokens too.

The mask is drawn per sample in the data loader by ``sample_noise(generator)``, which
returns the (N,) boolean map itself (True = hidden); ``forward`` only stacks it into a Mask.
"""
from __future__ import annotations

import math
from typing import Any

import attrs
import torch

from mimkit.plugin_api import BuildEnv, ConfigError, Context, Mask, Masker


def _ratio(_inst: Any, _attr: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {value}")


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high], both included (Python's ``random.randint``)."""
    return int(torch.randint(low, high + 1, (), generator=g))


def block_mask(
    height: int, width: int, num_hidden: int, generator: torch.Generator, min_num_patches: int = 16,
    max_num_patches: int | None = None, min_aspect: float = 0.3, max_aspect: float | None = None,
    exact: bool = True,
) -> torch.Tensor:
    """One (height, width) boolean block mask (True = hidden) with ``num_hidden`` patches.

    Follows BEiT's ``MaskingGenerator`` (strict ``h < height``, ``w < width``; a block is only
    accepted if it adds between 1 and the remaining budget of new patches; ten attempts per
    block), with randomness from ``generator``. ``exact`` tops up / trims at random.
    """
    mask = torch.zeros(height, width, dtype=torch.bool)
    max_num_patches = num_hidden if max_num_patches is None else max_num_patches
    max_aspect = max_aspect or 1.0 / min_aspect
    log_aspect = (math.log(min_aspect), math.log(max_aspect))
    count = 0
    while count < num_hidden:
        budget = min(num_hidden - count, max_num_patches)
        delta = 0
        for _attempt in range(10):
            area = _uniform(generator, min_num_patches, budget)
            aspect = math.exp(_uniform(generator, *log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < width and h < height:
                top = _randint(generator, 0, height - h)
                left = _randint(generator, 0, width - w)
                block = mask[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= budget:
                    block.fill_(True)
                    delta += new
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    if exact:
        flat = mask.view(-1)
        if count < num_hidden:  # top up at random among the visible patches
            free = (~flat).nonzero().squeeze(1)
            flat[free[torch.randperm(free.numel(), generator=generator)[: num_hidden - count]]] = True
        elif count > num_hidden:  # cannot happen with BEiT's acceptance rule; kept as a guard
            taken = flat.nonzero().squeeze(1)
            flat[taken[torch.randperm(taken.numel(), generator=generator)[: count - num_hidden]]] = False
    return mask


class BlockMasker(Masker):
    """Hide int(ratio * N) patches in BEiT-style rectangular blocks, the same count per sample.

    ``min_num_patches`` defaults to BEiT's 16 at a 14x14 grid scaled to this grid's size
    (16 * N / 196, at least 1); MaskFeat uses ratio 0.4.
    """

    @attrs.define(kw_only=True)
    class Config:
        ratio: float = attrs.field(default=0.4, validator=_ratio)
        min_num_patches: int | None = None
        max_num_patches: int | None = None
        min_aspect: float = 0.3
        max_aspect: float | None = None  # None: 1 / min_aspect

    def __init__(self, config: "BlockMasker.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        t, h, w = env.encoder.grid
        if t != 1:
            raise ConfigError("model.masker: the block masker supports image token grids only (t = 1)")
        self.height, self.width = h, w
        self.num_tokens = h * w
        self.num_hidden = int(config.ratio * self.num_tokens)
        self.min_num_patches = (
            config.min_num_patches if config.min_num_patches is not None
            else max(1, round(16 * self.num_tokens / 196))
        )

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        """One sample's mask, (N,) bool in token (row-major) order, True = hidden."""
        c = self.config
        mask = block_mask(self.height, self.width, self.num_hidden, generator, self.min_num_patches,
                          c.max_num_patches, c.min_aspect, c.max_aspect)
        return mask.view(-1)

    def forward(self, batch: dict, noise: torch.Tensor, ctx: Context | None = None) -> Mask:
        if noise.shape[1:] != (self.num_tokens,):
            raise ValueError(f"block masker expects masks (B, {self.num_tokens}), got {tuple(noise.shape)}")
        return Mask.from_hidden(noise.bool())  # (B, N), True = hidden
