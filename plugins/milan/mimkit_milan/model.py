"""MILAN (Hou et al., 2022): masked image pretraining on language-assisted representation.

One step (``models_milan.py: MaskedAutoencoderViT.forward`` with ``use_clip``, ``attn_mask``,
``change_decoder``), shapes for B images of N patches:

    image -> frozen teacher -> t (B, 1 + N, E) per-token language-aligned features,
                               a (B, N) last-layer [CLS]->patch attention
    a -> semantic-aware masker: keep 25% sampled WITHOUT replacement with probability ∝ a
         (``torch.multinomial(importance, N)``; here the attmask plugin's ``attention_guided``
         masker, ``keep: high, sampling: multinomial`` = Gumbel top-k, the same distribution)
    image -> visible-only ViT -> latent (B, 1 + K, D)
    latent -> prompting decoder (visible tokens are frozen prompts) -> p (B, 1 + N, E)
    loss = mean over ALL tokens ([CLS], visible, hidden) of 2 - 2 cos(p, t)   (``forward_loss``)
"""
from __future__ import annotations

from typing import Any

import attrs
import torch

from mimkit.plugin_api import BuildEnv, ConfigError, Context, explicit_mask, MethodModel, Outputs


def milan_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean(2 - 2 cos) over every token: pred, target (B, T, E), both L2-normalized here."""
    pred = pred / pred.norm(dim=-1, keepdim=True)
    target = target / target.norm(dim=-1, keepdim=True)
    return (2 - 2 * (pred * target).sum(-1)).mean()


class MILAN(MethodModel):
    """Teacher -> attention-driven masker -> visible-only encoder -> prompting decoder -> 2 - 2 cos."""

    @attrs.define(kw_only=True)
    class Config:
        encoder: dict[str, Any] = attrs.field(metadata={"component": "encoders"},
                                              factory=lambda: {"name": "vit", "mode": "visible_only"})
        teacher: dict[str, Any] = attrs.field(metadata={"component": "teachers"}, factory=lambda: {"name": "flip_image"})
        masker: dict[str, Any] = attrs.field(metadata={"component": "maskers"}, factory=lambda: {
            "name": "attention_guided", "keep": "high", "sampling": "multinomial", "ratio": 0.75, "masking_prob": 1.0})
        decoder: dict[str, Any] = attrs.field(metadata={"component": "decoders"}, factory=lambda: {"name": "prompting", "embed_dim": 512, "depth": 8,
                                                                "num_heads": 16})
        input_key: str = "image"

    def __init__(self, config: "MILAN.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        self.input_key = env.input_key = config.input_key
        self.encoder = env.encoder = env.build("encoders", config.encoder, "model.encoder")
        self.teacher = env.build("teachers", config.teacher, "model.teacher", student=self)
        grid = tuple(getattr(self.teacher, "grid", self.encoder.grid[1:]))[-2:]
        if grid != tuple(self.encoder.grid[1:]):
            raise ConfigError(f"model.teacher: its patch grid {grid} differs from the encoder's {self.encoder.grid[1:]}")
        env.target_dim = self.teacher.dim  # the decoder predicts the teacher's width (CLIP B/16: 512)
        self.decoder = env.build("decoders", config.decoder, "model.decoder")
        self.masker = env.build("maskers", config.masker, "model.masker")

    def forward(self, batch: dict, ctx: Context | None = None, noise: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> Outputs:
        """One step; ``mask`` (a (B, N) bool map, True = hidden) replaces the attention-guided one."""
        ctx = ctx if ctx is not None else Context()
        x = batch[self.input_key]  # (B, C, H, W)
        with torch.no_grad():
            ctx.teacher = self.teacher(batch, ctx)  # teacher_tokens (B, 1+N, E), teacher_cls_attn (B, N)
        if mask is not None:
            mask = explicit_mask(mask.to(x.device), self.encoder, self.masker, x.shape[0])
        else:
            mask = self.make_mask(batch, ctx, noise)  # keeps 25%, ∝ attention
        latent = self.encoder.encode(self.encoder.embed(x, mask), mask)  # (B, 1 + K, D)
        pred = self.decoder(latent, mask, ctx)  # (B, 1 + N, E)
        target = ctx.teacher["teacher_tokens"].float()
        target = target / target.norm(dim=-1, keepdim=True)  # L2-normalized teacher features
        loss = milan_loss(pred.float(), target)
        out = Outputs(loss=loss, losses={"cos": loss}, pred=pred, target=target, mask=mask, latent=latent)
        out.extra.update(ctx.teacher)
        return out
