"""The composed masked model (registered as ``masked``): one training step of any masked-modeling recipe.

    batch -> teacher(x)            [optional]  outputs stored in ctx.teacher
          -> masker(batch, noise)              Mask (before any embedding)
          -> encoder.embed / encode            latent of what the encoder may see
          -> decoder(latent, mask)             predictions (all tokens or hidden only)
          -> target(batch, mask)               what to predict
          -> losses(outputs)                   named terms; loss = sum(weight * term)
"""
from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import nn

from ..errors import ConfigError
from ..geometry import gather_tokens
from ..model import MethodModel
from ..types import Context, Mask, Outputs
from . import BuildEnv


def explicit_mask(hidden: torch.Tensor, encoder: nn.Module, masker: nn.Module | None, batch_size: int) -> Mask:
    """The Mask of an explicit (B, N) boolean map over the encoder's tokens (True = hidden, as
    Hugging Face's ``bool_masked_pos``), for a model's ``forward(batch, mask=...)``. A
    visible-only encoder needs the same hidden count in every row (it batches the kept tokens);
    a ``with_mask_token`` encoder takes rows that differ. A masker whose masks are not token maps
    (``token_masks = False``) refuses it. Errors are ``ConfigError`` (a ``ValueError``)."""
    if masker is not None and not getattr(masker, "token_masks", True):
        raise ConfigError(f"the masker ({type(masker).__name__}) corrupts the input instead of hiding tokens: an "
                         "explicit token mask does not apply (pass noise)")
    n = getattr(masker, "num_tokens", None) or math.prod(encoder.grid)
    if hidden.dtype != torch.bool or tuple(hidden.shape) != (batch_size, n):
        raise ConfigError(f"mask must be a boolean (B, N) = ({batch_size}, {n}) map (True = hidden), "
                         f"got {hidden.dtype} {tuple(hidden.shape)}")
    mode = getattr(getattr(encoder, "config", None), "mode", "visible_only")
    if mode == "visible_only":
        counts = hidden.sum(1)
        if bool((counts != counts[0]).any()):
            raise ConfigError(f"mask: the visible-only encoder needs the same number of hidden tokens in every "
                             f"row (it batches the kept ones); got {counts.tolist()}")
    return Mask.from_hidden(hidden, equal_counts=mode == "visible_only")


class MaskedModel(MethodModel):
    """Masker + encoder + decoder + target + losses (+ teacher), each chosen by name."""

    @attrs.define(kw_only=True)
    class Config:
        encoder: dict[str, Any] = attrs.field(metadata={"component": "encoders"}, factory=lambda: {"name": "vit"})
        masker: dict[str, Any] = attrs.field(metadata={"component": "maskers"}, factory=lambda: {"name": "random"})
        target: dict[str, Any] | None = attrs.field(metadata={"component": "targets"}, factory=lambda: {"name": "pixels"})
        decoder: dict[str, Any] | None = attrs.field(default=None, metadata={"component": "decoders"})
        losses: dict[str, dict[str, Any]] = attrs.field(metadata={"components": "losses"}, factory=lambda: {"rec": {"name": "masked_mse"}})
        teacher: dict[str, Any] | None = attrs.field(default=None, metadata={"component": "teachers"})
        input_key: str = "image"

    def __init__(self, config: "MaskedModel.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        self.input_key = env.input_key = config.input_key
        self.encoder = env.encoder = env.build("encoders", config.encoder, "model.encoder")
        self.target = None
        if config.target is not None:
            self.target = env.build("targets", config.target, "model.target")
            env.target_dim = getattr(self.target, "dim", None)
        self.decoder = None if config.decoder is None else env.build("decoders", config.decoder, "model.decoder")
        self.masker = env.build("maskers", config.masker, "model.masker")
        if not config.losses:
            raise ConfigError("model.losses: at least one loss is needed")
        self.losses = nn.ModuleDict({name: env.build("losses", spec, f"model.losses.{name}")
                                     for name, spec in config.losses.items()})
        self.teacher = None
        if config.teacher is not None:
            self.teacher = env.build("teachers", config.teacher, "model.teacher", student=self)

    # -- the step -------------------------------------------------------------------------

    def make_mask(self, batch: dict, ctx: Context, noise: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None) -> Mask:
        """The mask for this batch: the explicit boolean (B, N) map ``mask`` (True = hidden, as
        Hugging Face's ``bool_masked_pos``), else from ``noise`` (or ``batch['mask_noise']``,
        drawn in the loader from (seed, epoch, index)), else from ``ctx.generator``."""
        if mask is None:
            return super().make_mask(batch, ctx, noise)
        if noise is not None:
            raise ConfigError("pass either noise or mask, not both")
        x = batch[self.input_key]
        return explicit_mask(mask.to(x.device), self.encoder, self.masker, x.shape[0])

    def forward(self, batch: dict, ctx: Context | None = None, noise: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> Outputs:
        """One step on ``batch``. The mask comes from ``mask`` (a boolean (B, N) map, True =
        hidden), else ``noise`` (the masker's randomness), else the batch or ``ctx.generator``."""
        ctx = ctx if ctx is not None else Context()
        x = batch[self.input_key]
        if self.teacher is not None:
            with torch.no_grad():
                ctx.teacher = self.teacher(batch, ctx)
        mask = self.make_mask(batch, ctx, noise, mask)
        x_in = mask.corrupted if mask.corrupted is not None else x
        latent = self.encoder.encode(self.encoder.embed(x_in, mask), mask)
        out = Outputs(mask=mask, latent=latent)
        if self.decoder is not None:
            out.pred = self.decoder(latent, mask, ctx)  # (B, N | N_hidden, D_t)
            out.pred_scope = getattr(self.decoder, "predict", "all")
        if self.target is not None:
            target = self.target(batch, mask, ctx)
            if out.pred_scope == "masked" and target.ndim == 3 and target.shape[1] == mask.num_tokens:
                target = gather_tokens(target, mask.ids_hidden)
            out.target = target
        out.extra.update(ctx.teacher)
        total = None
        for name, loss_fn in self.losses.items():
            term = loss_fn(out, batch, ctx)
            out.losses[name] = term
            total = term * loss_fn.weight if total is None else total + term * loss_fn.weight
        out.loss = total
        return out
