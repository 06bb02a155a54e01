"""The siamese view of MIM (Kong & Zhang, "Understanding Masked Image Modeling via Learning
Occlusion Invariant Feature", CVPR 2023), one training step.

MIM's loss D(g(f(x * M)), x * (1 - M)) is relaxed into a siamese form
D(g(f(x * M)), h(x * (1 - M))): two complementary occluded views of one image,

    online:  x -> random mask M (hidden = 1 - M) -> visible-only encoder f -> decoder g (the
             MAE decoder, playing the projector) -> pred (B, N, D_t)
    target:  the complementary content x * (1 - M), embedded by h:
             ``pixels``   h = patchify (+ per-patch norm): MAE itself
             ``stopgrad`` h = the online encoder f on the complementary view, no gradient
             ``ema``      h = an EMA of f (the core ``ema`` teacher) on the complementary view
             -> target (B, N_h, D_t), one per hidden token, in ascending token order
    loss = D(pred at the hidden tokens, target) with a pluggable similarity D:
             ``mse``      mean over hidden tokens of mean_d (p - t)^2      (MAE with h = pixels)
             ``cosine``   1 - cos(p, t) per hidden token
             ``infonce``  per hidden token: the target at its own position against the targets at
                          the other hidden positions of the same image (``negatives: image``) or of
                          the batch (``batch``), logits = cos / temperature
No official code was found (METHODS.md section 10): the choices above are this plugin's reading of
the relaxed form, made so that the paper's swap-the-similarity comparison is a recipe sweep.
"""
from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F

from mimkit.plugin_api import (BuildEnv, ConfigError, Context, explicit_mask, gather_tokens, Mask, MethodModel, one_of,
                               Outputs, require_visible_only_vit)


def complementary_mask(mask: Mask) -> Mask:
    """The view of what ``mask`` hides: keeps exactly the hidden tokens (ascending order)."""
    return Mask.from_hidden(~mask.hidden)


def token_infonce(pred: torch.Tensor, target: torch.Tensor, temperature: float = 0.1,
                  negatives: str = "image") -> torch.Tensor:
    """InfoNCE over tokens: (B, T, D) predictions vs targets at the same positions.

    Each prediction's positive is the target at its own position; negatives are the targets at
    the other positions of the same image (``image``: logits (B, T, T)) or of every image in the
    batch (``batch``: logits (B*T, B*T)). Cosine similarities divided by ``temperature``."""
    q = F.normalize(pred.float(), dim=-1)
    k = F.normalize(target.float(), dim=-1)
    b, t, _ = q.shape
    if negatives == "batch":
        logits = q.reshape(b * t, -1) @ k.reshape(b * t, -1).t() / temperature  # (BT, BT)
        return F.cross_entropy(logits, torch.arange(b * t, device=q.device))
    logits = q @ k.transpose(1, 2) / temperature  # (B, T, T)
    labels = torch.arange(t, device=q.device).expand(b, -1)
    return F.cross_entropy(logits.reshape(b * t, t), labels.reshape(-1))


class SiameseMIM(MethodModel):
    """Siamese MIM: a masked view and its complement, with a pluggable target map and similarity."""

    @attrs.define(kw_only=True)
    class Config:
        encoder: dict[str, Any] = attrs.field(factory=lambda: {"name": "vit", "mode": "visible_only"})
        masker: dict[str, Any] = attrs.field(factory=lambda: {"name": "random", "ratio": 0.75})
        decoder: dict[str, Any] = attrs.field(factory=lambda: {"name": "mae", "embed_dim": 512, "depth": 8, "num_heads": 16})
        target_branch: str = attrs.field(default="pixels", validator=one_of("pixels", "stopgrad", "ema"))
        target: dict[str, Any] = attrs.field(factory=lambda: {"name": "pixels", "norm": "patch"})  # target_branch pixels
        teacher: dict[str, Any] | None = None  # target_branch ema: the core `ema` teacher (copy [encoder])
        target_norm: str = attrs.field(default="none", validator=one_of("none", "layernorm"))  # feature targets
        similarity: str = attrs.field(default="mse", validator=one_of("mse", "cosine", "infonce"))
        temperature: float = 0.1
        negatives: str = attrs.field(default="image", validator=one_of("image", "batch"))
        input_key: str = "image"

    def __init__(self, config: "SiameseMIM.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        self.input_key = env.input_key = config.input_key
        self.encoder = env.encoder = env.build("encoders", config.encoder, "model.encoder")
        require_visible_only_vit(self.encoder, "siamese MIM")
        self.target = None
        if config.target_branch == "pixels":
            self.target = env.build("targets", config.target, "model.target")
            env.target_dim = getattr(self.target, "dim", None)
        else:
            env.target_dim = self.encoder.embed_dim
        self.decoder = env.build("decoders", {"out_dim": env.target_dim, **config.decoder}, "model.decoder")
        if getattr(self.decoder, "predict", "all") != "all":
            raise ConfigError("model.decoder.predict: the online branch predicts all tokens")
        self.masker = env.build("maskers", config.masker, "model.masker")
        self.teacher = None
        if config.target_branch == "ema":
            spec = config.teacher or {"name": "ema", "copy": ["encoder"], "momentum": 0.996, "momentum_end": 1.0,
                                      "schedule": "cosine", "every": "step", "attention": False}
            self.teacher = env.build("teachers", spec, "model.teacher", student=self)
        elif config.teacher is not None:
            raise ConfigError(f"model.teacher: only used with target_branch: ema (got {config.target_branch!r})")

    @torch.no_grad()
    def target_features(self, x: torch.Tensor, comp: Mask) -> torch.Tensor:
        """h(x * (1 - M)): the target encoder on the complementary view -> (B, N_h, D)."""
        enc = self.encoder if self.teacher is None else self.teacher.encoder
        was_training = enc.training
        if self.teacher is not None:
            enc.eval()
        tokens = enc.encode(enc.embed(x, comp), comp)[:, enc.num_prefix_tokens:]  # (B, N_h, D)
        enc.train(was_training)
        if self.config.target_norm == "layernorm":
            tokens = F.layer_norm(tokens.float(), tokens.shape[-1:])
        return tokens

    def forward(self, batch: dict, ctx: Context | None = None, noise: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> Outputs:
        """One step; ``mask`` (a (B, N) bool map, True = hidden) replaces the masker's."""
        ctx = ctx if ctx is not None else Context()
        c = self.config
        x = batch[self.input_key]  # (B, C, H, W)
        if mask is not None:
            mask = explicit_mask(mask.to(x.device), self.encoder, self.masker, x.shape[0])
        else:
            mask = self.make_mask(batch, ctx, noise)
        latent = self.encoder.encode(self.encoder.embed(x, mask), mask)  # (B, 1+K, D) online view x * M
        pred = self.decoder(latent, mask, ctx)  # (B, N, D_t)
        comp = complementary_mask(mask)  # keeps the hidden tokens, ascending
        ids = comp.ids_keep  # (B, N_h)
        if c.target_branch == "pixels":
            target = gather_tokens(self.target(batch, mask, ctx), ids)  # (B, N_h, p*p*C)
        else:
            target = self.target_features(x, comp).detach()  # (B, N_h, D)
        pred_h = gather_tokens(pred, ids)  # (B, N_h, D_t)
        if c.similarity == "mse":
            loss = ((pred_h.float() - target.float()) ** 2).mean()
        elif c.similarity == "cosine":
            loss = (1 - F.cosine_similarity(pred_h.float(), target.float(), dim=-1)).mean()
        else:
            loss = token_infonce(pred_h, target, c.temperature, c.negatives)
        out = Outputs(mask=mask, latent=latent, pred=pred_h, target=target, pred_scope="masked",
                      losses={c.similarity: loss}, loss=loss)
        out.extra["target_ids"] = ids
        return out
