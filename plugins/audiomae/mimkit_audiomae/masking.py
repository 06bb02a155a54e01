"""The ``time_freq`` masker: Audio-MAE's ``random_masking_2d`` (fine-tuning, or ``mask_2d``).

Per sample, int(T' * (1 - t_ratio)) time columns and int(F' * (1 - f_ratio)) frequency rows
are kept (argsort of uniform noise, as the official code); a token is hidden when its time
column or its frequency row is hidden, so every sample hides T'F' - keep_t * keep_f tokens.
Kept tokens stay in position order (the official ``id2res + 999 * mask`` sort).
"""
from __future__ import annotations

from typing import Any

import attrs
import torch

from mimkit.plugin_api import BuildEnv, Context, Mask, Masker


def _ratio(_inst: Any, attr: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{attr.name} must be in [0, 1), got {value}")


class TimeFrequencyMasker(Masker):
    @attrs.define(kw_only=True)
    class Config:
        t_ratio: float = attrs.field(default=0.2, validator=_ratio)  # README fine-tuning: mask_t_prob 0.2
        f_ratio: float = attrs.field(default=0.2, validator=_ratio)  # mask_f_prob 0.2

    def __init__(self, config: "TimeFrequencyMasker.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        _, self.grid_t, self.grid_f = env.encoder.grid
        self.num_tokens = self.grid_t * self.grid_f
        self.keep_t = int(self.grid_t * (1 - config.t_ratio))
        self.keep_f = int(self.grid_f * (1 - config.f_ratio))
        self.num_keep = self.keep_t * self.keep_f

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(self.grid_t + self.grid_f, generator=generator)  # [noise_t | noise_f]

    def draw(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        t = torch.rand(batch_size, self.grid_t, generator=generator)
        f = torch.rand(batch_size, self.grid_f, generator=generator)
        return torch.cat([t, f], dim=1).to(device)

    @staticmethod
    def _hidden(noise: torch.Tensor, keep: int) -> torch.Tensor:
        rank = torch.argsort(torch.argsort(noise, dim=1), dim=1)
        return rank >= keep  # (B, L): the smallest ``keep`` noise values are kept

    def forward(self, batch: dict, noise: torch.Tensor, ctx: Context | None = None) -> Mask:
        if noise.ndim != 2 or noise.shape[1] != self.grid_t + self.grid_f:
            raise ValueError(f"time_freq masker expects noise (B, {self.grid_t + self.grid_f}), got {tuple(noise.shape)}")
        hid_t = self._hidden(noise[:, : self.grid_t], self.keep_t)  # (B, T')
        hid_f = self._hidden(noise[:, self.grid_t :], self.keep_f)  # (B, F')
        hidden = hid_t[:, :, None] | hid_f[:, None, :]  # (B, T', F')
        return Mask.from_hidden(hidden.flatten(1))
