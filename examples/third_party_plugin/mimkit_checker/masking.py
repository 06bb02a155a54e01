"""The ``checker`` masker: hide every other token in a checkerboard, phase random per sample."""
from __future__ import annotations

import attrs
import torch

from mimkit.plugin_api import BuildEnv, Context, Mask, Masker


class CheckerMasker(Masker):
    """Hide every other token in a checkerboard, shifted at random per sample.

    Every sample hides the same count (N/2 for an even grid), so visible-only encoders work.
    """

    @attrs.define(kw_only=True)
    class Config:
        pass

    def __init__(self, config: "CheckerMasker.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        self.grid = env.encoder.grid[1:]  # (h, w)
        self.num_tokens = env.encoder.num_patches

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 2, (1,), generator=generator).float()  # (1,) phase

    def forward(self, batch: dict, noise: torch.Tensor, ctx: Context | None = None) -> Mask:
        h, w = self.grid
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        board = ((rows + cols) % 2).flatten().to(noise.device)  # (N,)
        hidden = (board[None] + noise.long()) % 2 == 1  # (B, N)
        return Mask.from_hidden(hidden)
