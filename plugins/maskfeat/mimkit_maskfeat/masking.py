"""The ``block`` masker: BEiT-style blockwise masking (``MaskingGenerator`` of SlowFast's
``datasets/transform.py``, as MaskFeat's ``imagenet.py`` builds it).

Random rectangles (area in [min_num_patches, remaining], log-uniform aspect ratio in
[min_aspect, 1 / min_aspect]) are placed until round(ratio * N) patches are hidden or a
placement fails ten times, with ``min_num_patches`` = num_mask // 5 (15 at 14x14 and 0.4).
Like the official generator, the count can fall short (77.56 on average for 78 at 0.4): the
samples of a batch then hide different counts. That is what a ``with_mask_token`` encoder
(MaskFeat's) reads, and the loss averages over the hidden tokens pooled across the batch, as the
official loss does. ``exact: true`` instead tops the mask up at random to exactly num_mask
patches (needed by a visible-only encoder, which batches the kept tokens).

The mask is drawn per sample in the data loader by ``sample_noise(generator)``, which
returns the (N,) boolean map itself (True = hidden); ``forward`` only stacks it into a Mask.
"""
from __future__ import annotations

from typing import Any

import attrs
import torch

from mimkit.plugin_api import BuildEnv, ConfigError, Context, Mask, Masker, beit_block_mask


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
    exact: bool = False,
) -> torch.Tensor:
    """One (height, width) boolean block mask (True = hidden) with ``num_hidden`` patches.

    Follows BEiT's ``MaskingGenerator`` (strict ``h < height``, ``w < width``; a block is only
    accepted if it adds between 1 and the remaining budget of new patches; ten attempts per
    block), with randomness from ``generator``. ``exact`` tops up / trims at random.
    """
    max_aspect = max_aspect or 1.0 / min_aspect
    mask = beit_block_mask(height, width, num_hidden, lambda a, b: _uniform(generator, a, b),
                           lambda a, b: _randint(generator, a, b), min_num_patches, max_num_patches,
                           (min_aspect, max_aspect))
    count = int(mask.sum())
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
    """Hide up to round(ratio * N) patches in BEiT-style rectangular blocks (MaskFeat: 0.4).

    ``min_num_patches`` defaults to num_mask // 5 (at least 1), as MaskFeat's loader; ``exact``
    tops the count up to num_mask (the same count in every sample).
    """

    @attrs.define(kw_only=True)
    class Config:
        ratio: float = attrs.field(default=0.4, validator=_ratio)
        min_num_patches: int | None = None
        max_num_patches: int | None = None
        min_aspect: float = 0.3
        max_aspect: float | None = None  # None: 1 / min_aspect
        exact: bool = False  # top up to exactly num_mask patches per sample

    def __init__(self, config: "BlockMasker.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        t, h, w = env.encoder.grid
        if t != 1:
            raise ConfigError("model.masker: the block masker supports image token grids only (t = 1)")
        self.height, self.width = h, w
        self.num_tokens = h * w
        self.num_hidden = int(round(config.ratio * self.num_tokens))  # imagenet.py: round(h * w * ratio)
        self.min_num_patches = (
            config.min_num_patches if config.min_num_patches is not None else max(1, self.num_hidden // 5)
        )
        mode = getattr(getattr(env.encoder, "config", None), "mode", None)
        if mode == "visible_only" and not config.exact:
            raise ConfigError(
                "model.masker.exact: block masks hide varying counts (as the official generator), which a "
                "visible_only encoder cannot batch; set exact: true or use an encoder with mode: with_mask_token"
            )

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        """One sample's mask, (N,) bool in token (row-major) order, True = hidden."""
        c = self.config
        mask = block_mask(self.height, self.width, self.num_hidden, generator, self.min_num_patches,
                          c.max_num_patches, c.min_aspect, c.max_aspect, exact=c.exact)
        return mask.view(-1)

    def forward(self, batch: dict, noise: torch.Tensor, ctx: Context | None = None) -> Mask:
        if noise.shape[1:] != (self.num_tokens,):
            raise ValueError(f"block masker expects masks (B, {self.num_tokens}), got {tuple(noise.shape)}")
        return hidden_mask(noise.bool())  # (B, N), True = hidden


def hidden_mask(hidden: torch.Tensor) -> Mask:
    """A Mask for a (B, N) bool map whose rows may hide different counts.

    Equal counts: ``Mask.from_hidden``. Unequal: ``hidden`` is exact (what a with_mask_token
    encoder and the masked losses read); ``num_keep`` is the smallest kept count.
    """
    counts = hidden.sum(1)
    if counts.numel() == 0 or bool((counts == counts[0]).all()):
        return Mask.from_hidden(hidden)
    ids_shuffle = torch.argsort(hidden.to(torch.int8), dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    return Mask(hidden=hidden, ids_shuffle=ids_shuffle, ids_restore=ids_restore,
                num_keep=hidden.shape[1] - int(counts.max()))
