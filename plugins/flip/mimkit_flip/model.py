"""FLIP (Li, Fan, Hu, Feichtenhofer, He, CVPR 2023): CLIP training with most image patches removed.

One step (``models_flip.py: FLIP.__call__``), shapes for a batch of B image-caption pairs:

    image (B, C, H, W) -> random mask, ratio 0.5 (0.75)        kept K = int(N (1 - r)) patches
      -> visible-only ViT (the core ``vit``): [CLS] + K tokens  latent (B, 1 + K, D)
      -> mean over ALL output tokens ([CLS] included: ``x_img.mean(axis=1)``, img_avg_token)
      -> linear projection, no bias -> / (norm + 1e-8)         z_img (B, E)
    captions (B strings) -> BERT WordPiece, max length 32 -> text Transformer
      -> output at position 0 (txt_avg_token False) -> linear projection, no bias -> normalize  z_txt (B, E)
    gather z_img, z_txt over processes (global batch G)
    logits = s * z_img @ z_txt^T  (G, G),  s = exp(clip(logit_scale, 0, log 100)), logit_scale0 = log(1/0.07)
    loss = (CE(logits, diag) + CE(logits^T, diag)) / 2     (``compute_contrastive_loss``)

Unmasked tuning (the paper's last phase): with ``unmasked_tuning: f`` the last f of the optimizer
steps see every patch (ratio 0), so the encoder meets whole images before it is evaluated on them.
"""
from __future__ import annotations

import math
from typing import Any

import attrs
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mimkit.plugin_api import (
    BuildEnv, ConfigError, Context, explicit_mask, gather_with_grad, Mask, MethodModel, Outputs, one_of, step_noise,
)

from mimkit_text import build_text_tower


gather_features = gather_with_grad  # the name this plugin exports


def clip_loss(z_img: torch.Tensor, z_txt: torch.Tensor, scale: torch.Tensor | float, gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch, for normalized z_img, z_txt (B, E).

    Every process computes the same (G, G) loss from the gathered features; its gradient reaches
    only the local features, so the backward is scaled by the world size W: the data-parallel
    average of the W partial gradients is then exactly the gradient of the global-batch loss.
    The value returned is the global loss itself (identical on every rank).
    """
    world = dist.get_world_size() if gather and dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        img, _ = gather_features(z_img)  # (G, E)
        txt, _ = gather_features(z_txt)
    else:
        img, txt = z_img, z_txt
    logits = scale * img @ txt.t()  # (G, G): image i vs caption j
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    if world > 1:
        loss = world * loss - (world - 1) * loss.detach()  # value: loss; gradient: W x (local part)
    return loss


class FLIP(MethodModel):
    """Image tower (visible-only ViT) + text tower, bias-free projections, CLIP loss."""

    @attrs.define(kw_only=True)
    class Config:
        encoder: dict[str, Any] = attrs.field(metadata={"component": "encoders"},
                                              factory=lambda: {"name": "vit", "mode": "visible_only"})
        masker: dict[str, Any] = attrs.field(metadata={"component": "maskers"}, factory=lambda: {"name": "random", "ratio": 0.5})
        text: dict[str, Any] = attrs.field(factory=lambda: {"name": "transformer"})
        embed_dim: int = 768  # proj_dim_out (ViT-B preset: 512)
        image_pool: str = attrs.field(default="all_mean", validator=one_of("all_mean", "patch_mean", "cls"))
        temperature: float = 0.07  # logit scale init log(1 / 0.07)
        learnable_scale: bool = True
        scale_max: float = 100.0
        gather: bool = True
        unmasked_tuning: float = 0.0  # the last fraction of steps at ratio 0
        input_key: str = "image"
        text_key: str = "text"

    def __init__(self, config: "FLIP.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        if not 0.0 <= config.unmasked_tuning <= 1.0:
            raise ConfigError(f"invalid value {config.unmasked_tuning!r} for 'model.unmasked_tuning': a fraction in [0, 1]")
        self.encoder = env.encoder = env.build("encoders", config.encoder, "model.encoder")
        if getattr(getattr(self.encoder, "config", None), "mode", "visible_only") != "visible_only":
            raise ConfigError("model.encoder.mode: FLIP removes the masked patches: use mode: visible_only")
        self.masker = env.build("maskers", config.masker, "model.masker")
        self.text = build_text_tower(config.text, "model.text")
        self.img_proj = nn.Linear(self.encoder.embed_dim, config.embed_dim, bias=False)
        self.txt_proj = nn.Linear(self.text.width, config.embed_dim, bias=False)
        for proj in (self.img_proj, self.txt_proj):
            nn.init.xavier_uniform_(proj.weight)
        init = torch.full((), math.log(1.0 / config.temperature))
        self.logit_scale = nn.Parameter(init, requires_grad=config.learnable_scale)
        self.input_key = config.input_key
        self.tune_from = math.inf  # first step of unmasked tuning (set_schedule)

    def set_schedule(self, total_steps: int, steps_per_epoch: int) -> None:
        super().set_schedule(total_steps, steps_per_epoch)
        f = self.config.unmasked_tuning
        self.tune_from = total_steps - int(round(f * total_steps)) if f > 0 else math.inf

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) with logit_scale clipped to [0, log scale_max] (as FLIP's jnp.clip)."""
        return self.logit_scale.clamp(0.0, math.log(self.config.scale_max)).exp()

    # -- towers ---------------------------------------------------------------------------------

    def pool_image(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, P + K, D) -> (B, D)."""
        p = self.encoder.num_prefix_tokens
        if self.config.image_pool == "cls" and p:
            return latent[:, 0]
        if self.config.image_pool == "patch_mean":
            return latent[:, p:].mean(1)
        return latent.mean(1)  # FLIP: all output tokens, [CLS] included

    @staticmethod
    def _normalize(z: torch.Tensor) -> torch.Tensor:
        return z / (z.norm(dim=-1, keepdim=True) + 1e-8)

    def encode_image(self, x: torch.Tensor, mask: Mask | None = None) -> torch.Tensor:
        """Images (B, C, H, W) -> normalized embeddings (B, E); no mask = every patch (evaluation)."""
        latent = self.encoder.encode(self.encoder.embed(x, mask), mask)
        return self._normalize(self.img_proj(self.pool_image(latent)))

    def encode_text(self, texts: list[str] | tuple[str, ...]) -> torch.Tensor:
        """Captions -> normalized embeddings (B, E)."""
        return self._normalize(self.txt_proj(self.text(list(texts))))

    # -- the step -------------------------------------------------------------------------------

    def make_mask(self, batch: dict, ctx: Context, noise: torch.Tensor | None = None) -> Mask:
        x = batch[self.input_key]
        noise = step_noise(self.masker, batch, ctx, noise, x.shape[0], x.device)
        if self.training and ctx.step >= self.tune_from:
            return Mask.from_noise(noise, noise.shape[1])  # unmasked tuning: keep every patch
        return self.masker(batch, noise, ctx)

    def forward(self, batch: dict, ctx: Context | None = None, noise: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> Outputs:
        """One step; ``mask`` (a (B, N) bool map, True = hidden) replaces the masker's."""
        ctx = ctx if ctx is not None else Context()
        x = batch[self.input_key]  # (B, C, H, W)
        texts = batch[self.config.text_key]  # B captions
        if mask is not None:
            mask = explicit_mask(mask.to(x.device), self.encoder, self.masker, x.shape[0])
        else:
            mask = self.make_mask(batch, ctx, noise)
        latent = self.encoder.encode(self.encoder.embed(x, mask), mask)  # (B, 1 + K, D)
        z_img = self._normalize(self.img_proj(self.pool_image(latent)))  # (B, E)
        z_txt = self.encode_text(texts)  # (B, E)
        scale = self.scale()
        loss = clip_loss(z_img, z_txt, scale, self.config.gather)
        out = Outputs(loss=loss, losses={"clip": loss}, mask=mask, latent=latent)
        out.extra.update({"z_img": z_img, "z_txt": z_txt, "logit_scale": scale.detach()})
        return out
