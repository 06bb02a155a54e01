"""The ``random`` masker: MAE's per-sample random masking, the official recipe exactly."""
from __future__ import annotations

import math
from typing import Any, Callable

import attrs
import torch

from ..geometry import num_keep_for
from ..schema import FieldError
from ..types import Context, Mask
from . import BuildEnv, Masker


def beit_block_mask(height: int, width: int, target: float, uniform: Callable[[float, float], float],
                    randint: Callable[[int, int], int], min_area: float, max_area: float | None = None,
                    aspect: tuple[float, float] = (0.3, 1 / 0.3), attempts: int = 10) -> torch.Tensor:
    """One (height, width) bool mask (True = hidden) of rectangular blocks, by BEiT's
    ``MaskingGenerator`` loop, which MaskFeat and iBOT reuse with their own random sources.

    Per block, up to ``attempts`` draws: area ~ ``uniform(min_area, budget)`` with budget the
    patches still wanted (capped by ``max_area``), log-aspect uniform in ``aspect``; a block with
    h < height and w < width goes to ``randint`` corners and is accepted if it newly hides between 1
    and ``budget`` patches (the first accepted draw ends the block). A block that finds no place ends
    the mask, so it may stay short of ``target``. ``uniform``/``randint`` (both ends included) are
    called in the official order, so a seeded source gives the official masks exactly.
    """
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    mask = torch.zeros(height, width, dtype=torch.bool)
    count = 0
    while count < target:
        budget = target - count if max_area is None else min(target - count, max_area)
        delta = 0
        for _attempt in range(attempts):
            area = uniform(min_area, budget)
            ar = math.exp(uniform(log_lo, log_hi))
            h, w = int(round(math.sqrt(area * ar))), int(round(math.sqrt(area / ar)))
            if w < width and h < height:
                top, left = randint(0, height - h), randint(0, width - w)
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
    return mask


def _ratio(_inst: Any, attr: attrs.Attribute, value: float) -> None:
    # 0 hides nothing: a masked model would reconstruct no token and train on a zero loss
    if not 0.0 < value < 1.0:
        raise FieldError(attr.name, f"must be in (0, 1) (the fraction of tokens hidden; 0 hides nothing "
                                    f"and the loss would be 0), got {value}")


class RandomMasker(Masker):
    """Hide ``ratio`` of the tokens uniformly at random, per sample.

    Argsorts uniform noise and keeps the first int(N * (1 - ratio)) indices, so a given noise
    tensor gives the official MAE mask.
    """

    @attrs.define(kw_only=True)
    class Config:
        ratio: float = attrs.field(default=0.75, validator=_ratio)

    def __init__(self, config: "RandomMasker.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        self.num_tokens = env.encoder.num_patches
        self.num_keep = num_keep_for(self.num_tokens, config.ratio)

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(self.num_tokens, generator=generator)  # (N,)

    def draw(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        return torch.rand(batch_size, self.num_tokens, generator=generator).to(device)  # (B, N)

    def forward(self, batch: dict, noise: torch.Tensor, ctx: Context | None = None) -> Mask:
        if noise.shape[1:] != (self.num_tokens,):
            raise ValueError(f"random masker expects noise (B, {self.num_tokens}), got {tuple(noise.shape)}")
        return Mask.from_noise(noise, self.num_keep)
