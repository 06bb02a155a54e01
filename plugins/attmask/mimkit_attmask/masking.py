"""The ``attention_guided`` masker: AttMask (high / low / hint), MILAN's semantic sampling and
MRA's keep-the-foreground rule, driven by a teacher's [CLS]->patch attention.

Vectorized over the batch (no Python loop over samples). The attention map is read from
``ctx.teacher[attention_key]`` (B, N) — the core ``ema``/``frozen`` teachers put the last-layer
head-averaged [CLS] attention there as ``teacher_cls_attn``.

Randomness. ``sample_noise`` draws one sample's uniform noise of shape (N + 3,) in the loader
(seeded by (seed, epoch, index)):
  noise[0]   the masking-probability coin: the sample is masked iff noise[0] < masking_prob;
  noise[1]   the ratio draw: AttMask draws ONE ratio per batch, r = lo + (hi - lo) * noise[0, 1],
             i.e. from the first sample's own draw, so the ratio is a pure function of the
             batch's noise (reproducible, independent of the number of workers) and every
             masked sample of the batch hides the same number of tokens; iBOT masks both
             global crops in one call, so they share it (``main_attmask.py``);
  noise[2]   the hint ratio draw r' (the official code calls ``get_pred_ratio()`` a second
             time for the hint count int(hint_ratio * r' * N)), read from the first row too;
  noise[3:]  N values for the per-token choices: the uniform hint draw, and Gumbel noise
             -log(-log u) for ``sampling: multinomial``.
"""
from __future__ import annotations

from typing import Any

import attrs
import torch

from mimkit.plugin_api import BuildEnv, ConfigError, Context, Mask, Masker, one_of


def _unit(_inst: Any, attr: attrs.Attribute, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{attr.name} must be in [0, 1], got {value}")


def _range(_inst: Any, _attr: attrs.Attribute, value: tuple[float, float]) -> None:
    lo, hi = value
    if not 0.0 <= lo <= hi < 1.0:
        raise ValueError(f"ratio_range must satisfy 0 <= lo <= hi < 1, got {list(value)}")


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N) scores -> (B, N) bool, True on each row's ``k`` largest scores."""
    sel = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        sel.scatter_(1, scores.topk(k, dim=1).indices, True)
    return sel


def mask_from_hidden(hidden: torch.Tensor) -> Mask:
    """A Mask for a (B, N) bool map; rows may hide different counts (masking_prob < 1).

    Equal counts: ``Mask.from_hidden``. Unequal counts: only ``hidden`` is exact (what a
    ``with_mask_token`` encoder reads); ``num_keep`` is the smallest kept count, so
    ``ids_keep`` lists kept tokens of every row, and ``ids_hidden`` may include kept ones.
    """
    counts = hidden.sum(1)
    if counts.numel() == 0 or bool((counts == counts[0]).all()):
        return Mask.from_hidden(hidden)
    ids_shuffle = torch.argsort(hidden.to(torch.int8), dim=1, stable=True)  # kept first
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    num_keep = hidden.shape[1] - int(counts.max())
    return Mask(hidden=hidden, ids_shuffle=ids_shuffle, ids_restore=ids_restore, num_keep=num_keep)


class AttentionGuidedMasker(Masker):
    """Hide tokens chosen by a teacher's attention (AttMask, ECCV 2022; MILAN; MRA).

    * ``mode: high`` hides the r*N most attended tokens, ``low`` the r*N least attended,
      ``hint`` hides like ``high`` then reveals int(hint_ratio * r' * N) tokens (r' a second,
      independent ratio draw) chosen uniformly without replacement from the int(show_max * N)
      most attended tokens (``attmask.py``: ``show_hints`` over ``get_mask(attn, 1, .., show_max)``).
    * ``keep: high`` (MRA, MILAN) instead picks the *visible* set: the N - r*N most attended
      tokens stay visible (``mode`` is then ignored).
    * ``sampling: multinomial`` replaces top-k by sampling without replacement with
      probability proportional to the attention (Gumbel top-k on log-attention + Gumbel noise):
      MILAN's semantic masking is ``keep: high, sampling: multinomial``.
    * r is fixed (``ratio``) or drawn per batch from U(ratio_range) (AttMask: 0.3 +- 0.2).
    * Only a ``masking_prob`` fraction of the images is masked; the others hide nothing. Then
      samples hide different counts, which only a ``with_mask_token`` encoder accepts (a
      visible-only encoder batches the kept tokens): the masker refuses masking_prob < 1 with a
      visible-only encoder.
    """

    @attrs.define(kw_only=True)
    class Config:
        mode: str = attrs.field(default="high", validator=one_of("high", "low", "hint"))
        keep: str | None = attrs.field(default=None, validator=attrs.validators.optional(one_of("high")))
        sampling: str = attrs.field(default="topk", validator=one_of("topk", "multinomial"))
        ratio: float | None = attrs.field(default=None, validator=_unit)  # fixed ratio; else sampled
        ratio_range: tuple[float, float] = attrs.field(default=(0.1, 0.5), validator=_range)
        masking_prob: float = attrs.field(default=0.5, validator=_unit)
        hint_ratio: float = attrs.field(default=0.1, validator=_unit)  # revealed / hidden (hint)
        show_max: float = attrs.field(default=0.1, validator=_unit)  # hint pool: top fraction
        attention_key: str = "teacher_cls_attn"

    def __init__(self, config: "AttentionGuidedMasker.Config", env: BuildEnv | None = None):
        super().__init__()
        self.config = config
        enc = env.encoder if env is not None else None
        self.num_tokens = enc.num_patches if enc is not None else 0
        mode = getattr(getattr(enc, "config", None), "mode", None)
        if config.masking_prob < 1.0 and mode == "visible_only":
            raise ConfigError(
                "model.masker.masking_prob: values below 1 leave some images unmasked, so samples hide "
                "different numbers of tokens, which a visible_only encoder cannot batch; use "
                "masking_prob: 1 or an encoder with mode: with_mask_token"
            )
        if config.keep == "high" and config.mode == "hint":
            raise ConfigError("model.masker: keep: high picks the visible set; mode: hint does not apply")

    # -- randomness ---------------------------------------------------------------------------

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(self.num_tokens + 3, generator=generator)  # (N + 3,)

    def draw(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        if generator is None:
            generator = torch.Generator().manual_seed(torch.seed() % 2**63)
        return torch.rand(batch_size, self.num_tokens + 3, generator=generator).to(device)  # (B, N + 3)

    def batch_ratio(self, noise: torch.Tensor, column: int = 1) -> float:
        """The batch's ratio: fixed, or lo + (hi - lo) * noise[0, column] (one host read per
        batch); column 2 is the independent draw for the hint count."""
        if self.config.ratio is not None:
            return self.config.ratio
        lo, hi = self.config.ratio_range
        return lo + (hi - lo) * float(noise[0, column])

    # -- masking ------------------------------------------------------------------------------

    def hidden_map(self, attn: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(B, N) attention, (B, N + 3) noise -> (B, N) bool, True = hidden."""
        c = self.config
        b, n = attn.shape
        r = self.batch_ratio(noise)
        n_hide = int(r * n)  # the r*N tokens (truncated, as the official int(N * r))
        u = noise[:, 3:].clamp(1e-6, 1.0 - 1e-6)  # (B, N)
        attn = attn.float()
        log_a = attn.clamp_min(1e-12).log()
        if c.keep == "high" or c.mode in ("high", "hint"):
            score = log_a  # select the most attended (to hide, or with keep: high to keep)
        else:  # low
            score = -log_a
        if c.sampling == "multinomial":
            score = score - torch.log(-torch.log(u))  # Gumbel top-k = sampling without replacement
        if c.keep == "high":
            hidden = ~topk_mask(score, n - n_hide)  # keep the (sampled) most attended
        else:
            hidden = topk_mask(score, n_hide)
            if c.mode == "hint":
                n_hint = int(c.hint_ratio * self.batch_ratio(noise, 2) * n)
                pool_size = int(c.show_max * n)  # the official int(N * show_max) top tokens
                n_hint = min(n_hint, pool_size)
                if n_hint > 0:
                    pool = topk_mask(attn, pool_size)  # the most attended tokens
                    pick = torch.where(pool, u, torch.full_like(u, 2.0))  # uniform order in the pool
                    reveal = topk_mask(-pick, n_hint)  # (B, N): n_hint random pool members
                    hidden = hidden & ~reveal
        masked = noise[:, 0] < c.masking_prob  # (B,) which images get a mask at all
        return hidden & masked[:, None]

    def forward(self, batch: dict, noise: torch.Tensor, ctx: Context | None = None) -> Mask:
        key = self.config.attention_key
        if ctx is None or key not in ctx.teacher:
            raise ValueError(
                f"attention_guided masker needs ctx.teacher[{key!r}] (B, N): add a teacher "
                "(model.teacher: {name: ema} or {name: frozen, path: ...}) with attention: true"
            )
        attn = ctx.teacher[key]  # (B, N)
        if noise.dtype == torch.bool:  # an explicit (B, N) map, True = hidden
            return mask_from_hidden(noise.to(attn.device))
        if noise.shape[1:] != (attn.shape[1] + 3,):
            raise ValueError(f"attention_guided masker expects noise (B, {attn.shape[1] + 3}), got {tuple(noise.shape)}")
        return mask_from_hidden(self.hidden_map(attn, noise.to(attn.device)))
