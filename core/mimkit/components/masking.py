"""The ``random`` masker: MAE's per-sample random masking, the official recipe exactly."""
from __future__ import annotations

from typing import Any

import attrs
import torch

from ..geometry import num_keep_for
from ..schema import FieldError
from ..types import Context, Mask
from . import BuildEnv, Masker


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
