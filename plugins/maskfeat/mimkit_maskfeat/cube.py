"""The ``cube`` masker: MaskFeat's spatio-temporal cube masking for video (SlowFast
``MaskingGenerator3D`` in ``datasets/transform.py``, as ``Kinetics._gen_mask`` builds it with
the default ``AUG.MASK_TUBE: False``, ``MASK_FRAMES: False``).

The mask is drawn on a coarse *mask window* (8 x 7 x 7 for 16 x 224^2 clips: one time step per
2-frame cube, one spatial unit per 32 x 32 pixels) and upsampled to the token grid by nearest
interpolation (``MaskMViT._get_multiscale_mask``: 8 x 7 x 7 -> 8 x 14 x 14, each unit hides 2 x 2
tokens at one time step):

    num_mask = round(T_m * H_m * W_m * ratio)          (157 of 392 at 0.4)
    max_area = H_m * W_m, min_area = max_area // 5     (49 and 9)
    until num_mask units are hidden (or a block cannot be placed in 100 attempts):
        area ~ U(min_area, max_area), aspect ~ exp(U(ln 0.3, ln 1/0.3))
        h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)), t ~ U{1..T_m}
        if h < H_m and w < W_m: top ~ U{0..H_m-h}, left ~ U{0..W_m-w}, front ~ U{0..T_m-t};
            the h x w x t cube is hidden if it adds 1..(num_mask - count) new units

So blocks are spatial rectangles (the 2-D BEiT rule) extended over a random number of
consecutive time steps: a hidden region is neither a whole tube (VideoMAE) nor a single frame.
Like the official generator the count can fall short; a ``with_mask_token`` encoder (MaskFeat's)
reads the boolean map, and the loss averages over the hidden tokens pooled across the batch.
"""
from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F

from mimkit.plugin_api import BuildEnv, ConfigError, Context, Mask, Masker

from .masking import _randint, _ratio, _uniform, hidden_mask


def cube_mask(window: tuple[int, int, int], num_mask: int, generator: torch.Generator, min_area: int,
              max_area: int, min_aspect: float = 0.3, max_aspect: float | None = None,
              attempts: int = 100) -> torch.Tensor:
    """One (T_m, H_m, W_m) boolean cube mask (True = hidden) of up to ``num_mask`` units,
    SlowFast's ``MaskingGenerator3D`` with randomness from ``generator``."""
    tm, hm, wm = window
    mask = torch.zeros(tm, hm, wm, dtype=torch.bool)
    max_aspect = max_aspect or 1.0 / min_aspect
    log_aspect = (math.log(min_aspect), math.log(max_aspect))
    count = 0
    while count < num_mask:
        budget = num_mask - count
        delta = 0
        for _attempt in range(attempts):
            area = _uniform(generator, min_area, max_area)
            aspect = math.exp(_uniform(generator, *log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            t = _randint(generator, 1, tm)
            if w < wm and h < hm:
                top = _randint(generator, 0, hm - h)
                left = _randint(generator, 0, wm - w)
                front = _randint(generator, 0, tm - t)
                block = mask[front : front + t, top : top + h, left : left + w]
                new = h * w * t - int(block.sum())
                if 0 < new <= budget:
                    block.fill_(True)
                    delta += new
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask


def upsample_mask(mask: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(..., T_m, H_m, W_m) bool -> (..., t, h, w): nearest interpolation (unit i covers tokens
    j with floor(j * T_m / t) = i), as ``F.interpolate(mask, size)`` in the official code."""
    lead = mask.shape[:-3]
    x = mask.reshape(-1, 1, *mask.shape[-3:]).float()
    out = F.interpolate(x, size=grid, mode="nearest")
    return out.reshape(*lead, *grid).bool()


class CubeMasker(Masker):
    """MaskFeat's video masking: ``round(ratio * |window|)`` units of a coarse mask window hidden
    in spatio-temporal blocks (``MaskingGenerator3D``), upsampled to the token grid."""

    @attrs.define(kw_only=True)
    class Config:
        ratio: float = attrs.field(default=0.4, validator=_ratio)  # AUG.MASK_RATIO
        # AUG.MASK_WINDOW_SIZE; None: (t, h // 2, w // 2) of the token grid, the official 8 x 7 x 7
        # for 8 x 14 x 14 tokens (one unit = 2 x 2 tokens at one time step)
        window: list[int] | None = None
        min_area: int | None = None  # None: max_area // 5 (the official)
        max_area: int | None = None  # None: H_m * W_m (the official)
        min_aspect: float = 0.3
        attempts: int = 100  # placements tried per block (the official 100)

    def __init__(self, config: "CubeMasker.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        grid = tuple(int(v) for v in env.encoder.grid)
        if config.window is None:
            t, h, w = grid
            if h % 2 or w % 2:
                raise ConfigError(f"model.masker.window: the token grid {grid} has an odd side; set the mask window "
                                  "explicitly (e.g. the token grid itself)")
            window = (t, h // 2, w // 2)
        else:
            if len(config.window) != 3 or min(config.window) < 1:
                raise ConfigError(f"model.masker.window: three positive sizes (t, h, w) expected, got {config.window}")
            window = tuple(int(v) for v in config.window)
            if any(m > g for m, g in zip(window, grid)):
                raise ConfigError(f"model.masker.window {list(window)} is larger than the token grid {list(grid)}")
        self.grid = grid
        self.window = window
        self.num_tokens = grid[0] * grid[1] * grid[2]
        self.num_mask = int(round(window[0] * window[1] * window[2] * config.ratio))  # round(np.prod(win) * ratio)
        self.max_area = config.max_area if config.max_area is not None else window[1] * window[2]
        self.min_area = config.min_area if config.min_area is not None else self.max_area // 5
        mode = getattr(getattr(env.encoder, "config", None), "mode", None)
        if mode == "visible_only":
            raise ConfigError("model.encoder.mode: cube masks hide varying counts (as the official generator), which a "
                              "visible_only encoder cannot batch; use mode: with_mask_token (MaskFeat)")

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        """One clip's mask on the token grid, (N,) bool in (t, h, w) order, True = hidden."""
        c = self.config
        coarse = cube_mask(self.window, self.num_mask, generator, self.min_area, self.max_area, c.min_aspect,
                           attempts=c.attempts)
        return upsample_mask(coarse, self.grid).view(-1)

    def forward(self, batch: dict, noise: torch.Tensor, ctx: Context | None = None) -> Mask:
        if noise.shape[1:] != (self.num_tokens,):
            raise ValueError(f"cube masker expects masks (B, {self.num_tokens}), got {tuple(noise.shape)}")
        return hidden_mask(noise.bool())  # (B, N), True = hidden
