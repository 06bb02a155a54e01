"""Base pieces every component shares: the build environment and the small base classes."""
from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn


@attrs.define(kw_only=True)
class BuildEnv:
    """What a component may know about the components built before it.

    Order: encoder -> target -> decoder -> masker -> losses -> teacher.
    """

    registry: Any
    encoder: Any = None  # the built encoder module
    target_dim: int | None = None  # values per token the decoder must predict
    input_key: str = "image"
    extra: dict[str, Any] = attrs.field(factory=dict)


class Masker(nn.Module):
    """Base for maskers: per-sample randomness in the loader, vectorized masking on the device."""

    num_tokens: int

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        """One sample's randomness (drawn in the data loader)."""
        raise NotImplementedError

    def draw(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """A batch of randomness when the loader did not provide it (Python API, TTT)."""
        g = generator if generator is not None else torch.Generator().manual_seed(torch.seed() % 2**63)
        return torch.stack([self.sample_noise(g) for _ in range(batch_size)]).to(device)


def init_xavier_(module: nn.Module) -> None:
    """The MAE family's weight init: xavier-uniform linears with zero bias, unit LayerNorms
    (``_init_weights`` of the official MAE and VideoMAE code)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@attrs.define(kw_only=True)
class LossConfig:
    """Options every loss has: its weight in the total."""

    weight: float = 1.0


class Loss(nn.Module):
    """Base for losses: ``forward(outputs, batch, ctx) -> scalar``; the model applies ``weight``."""

    Config = LossConfig

    def __init__(self, config: Any, env: BuildEnv | None = None):
        super().__init__()
        self.config = config
        self.weight = config.weight
