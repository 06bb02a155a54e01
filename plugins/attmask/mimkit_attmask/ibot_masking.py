"""iBOT's own masks: ``ibot_block`` (``--pred_shape block``, BEiT-style blockwise masking) and
``ibot_rand`` (``--pred_shape rand``), as ``ImageFolderMask`` of bytedance/ibot's ``loader.py``
draws them for every global crop.

Per crop (the two global crops draw independently, as the official loader loops over the crops):

* the ratio r: with one ``pred_ratio`` m and ``pred_ratio_var`` v, r ~ U[m - v, m + v] when v > 0,
  else r = m. With a list of ratios (the ViT-S/16 run: ``pred_ratio [0, 0.3]``,
  ``pred_ratio_var [0, 0.2]``) one r_i is drawn per pair the same way and then one of them is
  chosen uniformly, so half the crops hide nothing and half hide U[0.1, 0.5] of the patches.
  A one-element list is a scalar; a list of ratios with one variance uses it for every ratio.
* the budget ``high = r * H * W`` (a float, not rounded);
* ``block``: blocks are added while the count is below ``high``. For each block, up to ten
  attempts: area ~ U(low, high - count) with low = (min(H, W) // 3) ** 2 (16 at 14 x 14; the
  draw is taken even when high - count < low, as Python's ``random.uniform`` allows), log-aspect
  ~ U(log 0.3, log 1/0.3), h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)); a
  block with h < H and w < W is placed at a uniform top-left corner and accepted iff the number
  of patches it newly hides is in (0, high - count]; the first accepted attempt ends the block.
  Ten failed attempts end the mask. So a mask never exceeds ``high`` and often stays short of it.
* ``rand``: exactly int(high) patches, a uniformly random subset.
* ``pred_start_epoch``: before that epoch the ratio is 0, so no patch is hidden (the iBOT loss
  then contributes no masked-patch term; the model shifts its patch-temperature warm-up to start
  there, as the official ``iBOTLoss(mim_start_epoch=...)``).

Randomness: ``sample_noise(generator)`` (run in the data loader, the generator seeded by (seed,
epoch, index)) draws one 63-bit integer s from the generator and runs the steps above on
``random.Random(s)``, calling ``uniform``/``randint``/``choice``/``sample`` in the official order,
and returns the (N,) boolean map itself (row-major, True = hidden). ``forward`` stacks the maps
into a Mask (rows hide different counts, which the ``with_mask_token`` encoder of the ``ibot``
model reads) and empties them before ``pred_start_epoch``.
"""
from __future__ import annotations

import math
import random
from typing import Any

import attrs
import torch

from mimkit.plugin_api import BuildEnv, ConfigError, Context, FieldError, Mask, Masker, beit_block_mask

from .masking import mask_from_hidden


def _as_list(value: float | list[float]) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


def _check_ratio(_inst: Any, attr: attrs.Attribute, value: float | list[float]) -> None:
    values = _as_list(value)
    if not values:
        raise FieldError(attr.name, "must be a number in [0, 1] or a non-empty list of them, got []")
    for v in values:
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise FieldError(attr.name, f"every value must be in [0, 1] (a fraction of the patches), got {value}")


def _check_var(inst: Any, attr: attrs.Attribute, value: float | list[float]) -> None:
    values = _as_list(value)
    for v in values:
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise FieldError(attr.name, f"every value must be in [0, 1], got {value}")
    ratios = _as_list(inst.pred_ratio)
    if len(values) == 1:
        values = values * len(ratios)  # official: one variance for every ratio
    if len(ratios) == 1 and len(values) > 1:
        raise FieldError(attr.name, f"one pred_ratio ({inst.pred_ratio}) takes one variance, got {value}")
    if len(values) != len(ratios):
        raise FieldError(attr.name, f"needs one value per pred_ratio ({len(ratios)}), got {len(values)}: {value}")
    for m, v in zip(ratios, values):
        if not (m - v >= 0.0 and m + v <= 1.0):
            raise FieldError(attr.name, f"each ratio m and variance v must satisfy 0 <= m - v and m + v <= 1 "
                                        f"(r is drawn from U[m - v, m + v]), got m = {m}, v = {v}")


def _check_aspect(_inst: Any, attr: attrs.Attribute, value: tuple[float, float]) -> None:
    lo, hi = value
    if not (0.0 < lo <= hi and math.isfinite(hi)):
        raise FieldError(attr.name, f"must be [min, max] with 0 < min <= max (height / width of a block), got {list(value)}")


def _check_epoch(_inst: Any, attr: attrs.Attribute, value: int) -> None:
    if value < 0:
        raise FieldError(attr.name, f"must be >= 0 (the first epoch with masks), got {value}")


def draw_pred_ratio(rng: random.Random, ratios: list[float], variances: list[float]) -> float:
    """One crop's ratio (``get_pred_ratio`` after ``pred_start_epoch``): per (m, v) pair
    U[m - v, m + v] if v > 0 else m; with several pairs, one of the draws chosen uniformly."""
    if len(ratios) > 1:
        drawn = [rng.uniform(m - v, m + v) if v > 0 else m for m, v in zip(ratios, variances)]
        return rng.choice(drawn)
    m, v = ratios[0], variances[0]
    return rng.uniform(m - v, m + v) if v > 0 else m


def ibot_block_mask(height: int, width: int, high: float, rng: random.Random,
                    aspect: tuple[float, float] = (0.3, 1 / 0.3)) -> torch.Tensor:
    """One (height, width) bool block mask (True = hidden) of at most ``high`` patches, by iBOT's
    loop (see the module docstring)."""
    return beit_block_mask(height, width, high, rng.uniform, rng.randint, (min(height, width) // 3) ** 2,
                           aspect=aspect)


def ibot_rand_mask(num_tokens: int, high: float, rng: random.Random) -> torch.Tensor:
    """(num_tokens,) bool: exactly int(high) patches hidden, a uniformly random subset."""
    mask = torch.zeros(num_tokens, dtype=torch.bool)
    k = int(high)
    if k > 0:
        mask[rng.sample(range(num_tokens), k)] = True
    return mask


class _IBOTMasker(Masker):
    """Shared by ``ibot_block`` / ``ibot_rand``: ratio draw, seeding, stacking, start epoch."""

    shape = ""

    @attrs.define(kw_only=True)
    class Config:
        pred_ratio: float | list[float] = attrs.field(default=0.3, validator=_check_ratio)
        pred_ratio_var: float | list[float] = attrs.field(default=0.0, validator=_check_var)
        pred_start_epoch: int = attrs.field(default=0, validator=_check_epoch)

    def __init__(self, config: Any, env: BuildEnv):
        super().__init__()
        self.config = config
        t, h, w = env.encoder.grid
        if t != 1:
            raise ConfigError(f"model.masker: ibot_{self.shape} masks image token grids only (t = 1), got grid {tuple(env.encoder.grid)}")
        self.height, self.width, self.num_tokens = int(h), int(w), int(h) * int(w)
        self.ratios = _as_list(config.pred_ratio)
        variances = _as_list(config.pred_ratio_var)
        self.variances = variances * len(self.ratios) if len(variances) == 1 else variances
        mode = getattr(getattr(env.encoder, "config", None), "mode", None)
        if mode == "visible_only":
            raise ConfigError(
                f"model.encoder.mode: ibot_{self.shape} masks hide a different number of patches per image (as "
                "iBOT's), which a visible_only encoder cannot batch; use mode: with_mask_token")

    def rng(self, generator: torch.Generator) -> random.Random:
        """The sample's Python RNG, seeded by one 63-bit draw from the loader's generator."""
        return random.Random(int(torch.randint(0, 2**63 - 1, (), generator=generator)))

    def pred_ratio(self, rng: random.Random) -> float:
        return draw_pred_ratio(rng, self.ratios, self.variances)

    def mask_for(self, rng: random.Random) -> torch.Tensor:
        raise NotImplementedError

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        """One crop's mask, (N,) bool in row-major token order, True = hidden."""
        return self.mask_for(self.rng(generator))

    def forward(self, batch: dict, noise: torch.Tensor, ctx: Context | None = None) -> Mask:
        if noise.shape[1:] != (self.num_tokens,):
            raise ValueError(f"ibot_{self.shape} masker expects (B, {self.num_tokens}) bool maps, got {tuple(noise.shape)}")
        hidden = noise.bool()
        if ctx is not None and ctx.epoch < self.config.pred_start_epoch:
            hidden = torch.zeros_like(hidden)  # official: ratio 0 before pred_start_epoch
        return mask_from_hidden(hidden)


class IBOTBlockMasker(_IBOTMasker):
    """iBOT's ``pred_shape: block``: BEiT-style blocks up to r * N patches per crop (official
    defaults: ``pred_ratio`` 0.3, ``pred_ratio_var`` 0, ``pred_aspect_ratio`` (0.3, 1/0.3))."""

    shape = "block"

    @attrs.define(kw_only=True)
    class Config(_IBOTMasker.Config):
        pred_aspect_ratio: tuple[float, float] = attrs.field(default=(0.3, 1 / 0.3), validator=_check_aspect)

    def mask_for(self, rng: random.Random) -> torch.Tensor:
        high = self.pred_ratio(rng) * self.height * self.width
        return ibot_block_mask(self.height, self.width, high, rng, self.config.pred_aspect_ratio).view(-1)


class IBOTRandMasker(_IBOTMasker):
    """iBOT's ``pred_shape: rand``: exactly int(r * N) patches per crop, uniformly at random."""

    shape = "rand"

    def mask_for(self, rng: random.Random) -> torch.Tensor:
        return ibot_rand_mask(self.num_tokens, self.pred_ratio(rng) * self.num_tokens, rng)
