"""BootMAE — Bootstrapped Masked Autoencoders (Dong et al., ECCV 2022), one training step.

    image (B, C, H, W) -> bootmae_block mask (147 of 196 hidden) -> visible-only ViT
        -> latent (B, 1+K, D) after the final norm, and every block's output (pre-norm)
    pixel decoder   (target_aware, 512-d, cross-attends to block 0)   -> (B, N, p*p*C)
    feature decoder (target_aware, D-d,  cross-attends to the last block) -> (B, N, D)
    targets: pixels per patch and per channel normalized (biased var, eps 1e-5);
             features = the EMA model's last-block patch tokens on the full image (no final norm)
    w  = m + m * avgpool3x3(m)   (m: the (h, w) hidden map; zero padding counted, as
                                  nn.AvgPool2d(3, 1, 1)), so a block's centre counts 2x
    pix  = sum_t w_t * mean_v (pred - target)^2 / sum_t m_t
    feat = sum_t w_t * mean_d (LN(pred) - LN(target))^2 / sum_t m_t     (LN: no affine, eps 1e-6)
    loss = pix + w_f(epoch) * feat,   w_f = feature_weight * min(1, (epoch + 1) / (ramp * epochs))
The EMA teacher (the core ``ema``: whole model, 0.999 -> 0.9999 by epoch 100 -> 0.99999 by
epoch 400, updated every optimizer step) only feeds the feature target.
"""
from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F

from mimkit.plugin_api import (BuildEnv, ConfigError, Context, Mask, MethodModel, one_of, Outputs,
                               require_visible_only_vit)


def block_center_weights(hidden: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """BootMAE's ``--weight_mask``: m + m * avgpool3x3(m) per token, (B, N) -> (B, N).

    ``avgpool3x3`` is ``nn.AvgPool2d(3, stride=1, padding=1)``: zero padding, divisor 9."""
    b = hidden.shape[0]
    m = hidden.float().reshape(b, 1, *grid)
    pooled = F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=True)
    return (m + m * pooled).reshape(b, -1)


def weighted_token_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                       hidden: torch.Tensor) -> torch.Tensor:
    """sum_t w_t * mean_v (pred - target)^2 / sum_t m_t over (B, N, V) tokens.

    The official ``mean(weight * err^2) / mean(mask)`` over pixels (or over tokens x channels
    for features) is this, since every token has the same number of values."""
    per_token = ((pred.float() - target.float()) ** 2).mean(-1)  # (B, N)
    return (per_token * weights).sum() / hidden.float().sum().clamp_min(1.0)


def feature_ramp(epoch: int, total_epochs: float, fraction: float = 0.25) -> float:
    """The feature-loss weight's linear ramp, ``min(1, (epoch + 1) / (fraction * epochs))``
    (official: ``min(4 * w * (1 + epoch) / epochs, w)``)."""
    if fraction <= 0:
        return 1.0
    return min(1.0, (epoch + 1) / (fraction * max(total_epochs, 1e-9)))


class BootMAE(MethodModel):
    """Masked pixel regression + bootstrapped feature prediction with two target-aware decoders."""

    @attrs.define(kw_only=True)
    class Config:
        encoder: dict[str, Any] = attrs.field(factory=lambda: {"name": "vit", "mode": "visible_only"})
        masker: dict[str, Any] = attrs.field(factory=lambda: {"name": "bootmae_block"})
        target: dict[str, Any] = attrs.field(factory=lambda: {
            "name": "pixels", "norm": "patch_channel", "unbiased": False, "eps": 1.0e-5})
        pixel_decoder: dict[str, Any] = attrs.field(factory=lambda: {
            "name": "target_aware", "embed_dim": 512, "depth": 2, "num_heads": 12, "memory_layer": 0,
            "head": "deembed"})
        feature_decoder: dict[str, Any] = attrs.field(factory=lambda: {
            "name": "target_aware", "embed_dim": 768, "depth": 2, "num_heads": 12, "memory_layer": -1,
            "head": "linear"})
        teacher: dict[str, Any] = attrs.field(factory=lambda: {
            "name": "ema", "copy": ["encoder", "pixel_decoder", "feature_decoder"], "schedule": "piecewise",
            "momentum": 0.999, "points": [[0, 0.999], [100, 0.9999], [400, 0.99999]], "every": "step",
            "attention": False, "final_norm": False})
        weight_mask: bool = True  # block-centre weights on both losses (official --weight_mask)
        feature_weight: float = 1.0
        ramp_fraction: float = 0.25  # of training over which the feature weight ramps up
        ramp_every: str = attrs.field(default="epoch", validator=one_of("epoch", "step"))
        ln_eps: float = 1e-6
        input_key: str = "image"

    def __init__(self, config: "BootMAE.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        self.input_key = env.input_key = config.input_key
        self.encoder = env.encoder = env.build("encoders", config.encoder, "model.encoder")
        require_visible_only_vit(self.encoder, "BootMAE")
        self.target = env.build("targets", config.target, "model.target")
        env.target_dim = getattr(self.target, "dim", None)
        self.pixel_decoder = env.build("decoders", config.pixel_decoder, "model.pixel_decoder")
        fd = {"out_dim": self.encoder.embed_dim, **config.feature_decoder}
        self.feature_decoder = env.build("decoders", fd, "model.feature_decoder")
        if getattr(self.feature_decoder, "out_dim", self.encoder.embed_dim) != self.encoder.embed_dim:
            raise ConfigError(f"model.feature_decoder.out_dim: must be the encoder width {self.encoder.embed_dim}")
        self.masker = env.build("maskers", config.masker, "model.masker")
        self.teacher = env.build("teachers", config.teacher, "model.teacher", student=self)
        self.grid = tuple(self.encoder.grid[1:])
        self.total_steps, self.steps_per_epoch = 1, 1

    def set_schedule(self, total_steps: int, steps_per_epoch: int) -> None:
        super().set_schedule(total_steps, steps_per_epoch)
        self.total_steps, self.steps_per_epoch = max(1, total_steps), max(1, steps_per_epoch)

    def feature_weight_at(self, step: int, epoch: int) -> float:
        c = self.config
        if c.ramp_every == "epoch":
            return c.feature_weight * feature_ramp(epoch, self.total_steps / self.steps_per_epoch, c.ramp_fraction)
        return c.feature_weight * feature_ramp(step, self.total_steps, c.ramp_fraction)

    def forward(self, batch: dict, ctx: Context | None = None, noise: torch.Tensor | None = None,
                mask: Mask | None = None) -> Outputs:
        ctx = ctx if ctx is not None else Context()
        c = self.config
        x = batch[self.input_key]  # (B, C, H, W)
        with torch.no_grad():
            ctx.teacher = self.teacher(batch, ctx)  # teacher_latent (B, 1+N, D), last block, no final norm
            feat_target = ctx.teacher["teacher_latent"][:, self.encoder.num_prefix_tokens:]  # (B, N, D)
        if mask is None:
            mask = self.make_mask(batch, ctx, noise)
        latent, layers = self.encoder.encode(self.encoder.embed(x, mask), mask, return_layers=True)  # (B, 1+K, D)
        pix_pred = self.pixel_decoder(latent, mask, ctx, memory=layers[self.pixel_decoder.config.memory_layer])
        feat_pred = self.feature_decoder(latent, mask, ctx, memory=layers[self.feature_decoder.config.memory_layer])
        pix_target = self.target(batch, mask, ctx)  # (B, N, p*p*C)
        hidden = mask.hidden
        weights = block_center_weights(hidden, self.grid) if c.weight_mask else hidden.float()
        pix = weighted_token_mse(pix_pred, pix_target, weights, hidden)
        d = feat_pred.shape[-1]
        feat = weighted_token_mse(F.layer_norm(feat_pred.float(), (d,), eps=c.ln_eps),
                                  F.layer_norm(feat_target.float(), (d,), eps=c.ln_eps), weights, hidden)
        w_f = self.feature_weight_at(ctx.step, ctx.epoch)
        out = Outputs(mask=mask, latent=latent, pred=pix_pred, target=pix_target, losses={"pix": pix, "feat": feat})
        out.loss = pix + w_f * feat
        out.extra.update({"feat_pred": feat_pred, "feat_target": feat_target, "feature_weight": w_f,
                          "loss_weights": weights})
        return out
