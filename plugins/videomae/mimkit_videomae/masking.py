"""The ``tube`` masker: VideoMAE's ``TubeMaskingGenerator``.

One random spatial mask hiding int(ratio * h * w) patches is drawn per video and repeated on
every one of the t temporal slices, so a hidden cube is hidden at all times (no leak through
the near-identical neighbouring frames).
"""
from __future__ import annotations

from typing import Any

import attrs
import torch

from mimkit.plugin_api import BuildEnv, Context, Mask, Masker


def _ratio(_inst: Any, _attr: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {value}")


class TubeMasker(Masker):
    """Hide the same int(ratio * h*w) spatial positions in every temporal slice.

    Randomness: ``sample_noise`` draws a (h*w,) uniform vector per video; its argsort plays the
    role of the official ``np.random.shuffle`` of [0]*keep + [1]*hide: the positions with the
    ``hide`` largest noise values are hidden. Tokens are in (t, h, w) raster order.
    """

    @attrs.define(kw_only=True)
    class Config:
        ratio: float = attrs.field(default=0.9, validator=_ratio)

    def __init__(self, config: "TubeMasker.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        t, h, w = env.encoder.grid
        self.frames = t
        self.per_frame = h * w
        self.num_tokens = t * h * w
        self.hidden_per_frame = int(config.ratio * self.per_frame)  # official: int(mask_ratio * h*w)
        self.num_hidden = self.hidden_per_frame * t

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(self.per_frame, generator=generator)  # (h*w,)

    def draw(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        if generator is None:
            return super().draw(batch_size, generator, device)
        return torch.rand(batch_size, self.per_frame, generator=generator).to(device)  # (B, h*w)

    def spatial_hidden(self, noise: torch.Tensor) -> torch.Tensor:
        """(B, h*w) noise -> (B, h*w) bool, True at the ``hidden_per_frame`` largest values."""
        rank = torch.argsort(torch.argsort(noise, dim=1), dim=1)  # rank of each position
        return rank >= self.per_frame - self.hidden_per_frame

    def forward(self, batch: dict, noise: torch.Tensor, ctx: Context | None = None) -> Mask:
        if noise.dtype == torch.bool:  # an explicit (B, N) map, True = hidden (HF's bool_masked_pos)
            if noise.shape[1:] != (self.num_tokens,):
                raise ValueError(f"tube masker: an explicit mask must be (B, {self.num_tokens}), got {tuple(noise.shape)}")
            return Mask.from_hidden(noise)
        if noise.ndim != 2 or noise.shape[1] != self.per_frame:
            raise ValueError(f"tube masker expects noise (B, {self.per_frame}), got {tuple(noise.shape)}")
        hidden = self.spatial_hidden(noise).repeat(1, self.frames)  # (B, t*h*w), token = ti*h*w + s
        return Mask.from_hidden(hidden)
