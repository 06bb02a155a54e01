"""Whole-method models: CMAE (Huang et al., TPAMI 2023) and MACRL (Yao et al., 2022).

Both are compositions of registered components (the ``vit`` encoder, ``random`` masker,
``pixels`` target, MAE's ``mae`` decoder, the core ``ema`` teacher) plus the ``infonce`` loss;
they are models rather than MaskedModel recipes because their flow has two branches:

CMAE (one step):
    online:  image (B, C, H, W) -> random mask 0.65 -> visible-only encoder -> latent (B, 1+K, D)
             -> mae pixel decoder -> pred (B, N, p*p*C) ; MSE on hidden patches (norm_pix)
             -> feature decoder (mae decoder, 2 blocks, out D) -> mean over N -> projector -> predictor -> q
    target:  image_target (shifted, color-augmented) -> EMA encoder (full view)
             -> mean of patch tokens -> EMA projector -> k
    loss = w_pix * MSE + w_nce * InfoNCE(q, k) (tau 0.07, one direction, x 2 tau, gathered keys)

MACRL (one step), branches A (strong view ``image``, high ratio) and B (weak view
``image_target``, low ratio), one shared encoder, one decoder per branch:
    x_b -> random mask r_b -> encoder -> latent_b -> decoder_b -> L1 on hidden patches
    InfoNCE(projector(pool(latent_A)), projector(pool(latent_B))), symmetric, both with gradient,
    optional memory bank of past B-keys.
"""
from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from mimkit.plugin_api import (
    BuildEnv, ConfigError, Context, explicit_mask, gather_tokens, Mask, Masker, MethodModel, one_of, Outputs,
    step_noise,
)

from .infonce import MLP, MLPConfig, pool_tokens


def _hidden_mean(per_token: torch.Tensor, mask: Mask) -> torch.Tensor:
    """(B, N) per-token loss -> mean over hidden tokens (MAE's sum(l * m) / sum(m))."""
    m = mask.hidden.float()
    return (per_token * m).sum() / m.sum().clamp(min=1.0)


class _PairMasker(Masker):
    """Two maskers whose per-sample noise is drawn together in the loader: (M_a + M_b,)."""

    def __init__(self, a: nn.Module, b: nn.Module):
        super().__init__()
        self.a, self.b = a, b
        self.num_tokens = a.num_tokens

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        return torch.cat([self.a.sample_noise(generator), self.b.sample_noise(generator)])

    def split(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_a = self.a.sample_noise(torch.Generator().manual_seed(0)).numel()
        return noise[:, :n_a], noise[:, n_a:]


def _build_autoencoder(config: Any, env: BuildEnv, all_tokens: str = "") -> tuple[nn.Module, nn.Module, nn.Module]:
    """The encoder, pixel target and decoder both methods start from, in this order (published
    in ``env`` for the components built after them); ``all_tokens``: who needs a decoder that
    predicts every token."""
    encoder = env.encoder = env.build("encoders", config.encoder, "model.encoder")
    target = env.build("targets", config.target, "model.target")
    env.target_dim = getattr(target, "dim", None)
    decoder = env.build("decoders", config.decoder, "model.decoder")
    if all_tokens and getattr(decoder, "predict", "all") != "all":
        raise ConfigError(f"model.decoder.predict: {all_tokens} predicts all tokens")
    return encoder, target, decoder


class CMAE(MethodModel):
    """Contrastive Masked Autoencoder: MAE + a feature decoder contrasted with an EMA target."""

    @attrs.define(kw_only=True)
    class Config:
        encoder: dict[str, Any] = attrs.field(metadata={"component": "encoders"}, factory=lambda: {"name": "vit", "mode": "visible_only"})
        masker: dict[str, Any] = attrs.field(metadata={"component": "maskers"}, factory=lambda: {"name": "cmae_block", "ratio": 0.65, "block": 2})
        target: dict[str, Any] = attrs.field(metadata={"component": "targets"}, factory=lambda: {"name": "pixels", "norm": "patch"})
        decoder: dict[str, Any] = attrs.field(metadata={"component": "decoders"}, factory=lambda: {"name": "mae", "embed_dim": 512, "depth": 8, "num_heads": 16})
        feature_decoder: dict[str, Any] = attrs.field(metadata={"component": "decoders"}, factory=lambda: {"name": "mae", "embed_dim": 512, "depth": 2, "num_heads": 16})
        projector: MLPConfig = attrs.field(factory=lambda: MLPConfig(hidden_dim=1536, out_dim=256, layers=2,
                                                                       last_bias=False, bn_eps=1e-6))
        predictor: MLPConfig = attrs.field(factory=lambda: MLPConfig(hidden_dim=1536, out_dim=256, layers=2,
                                                                       last_bias=False, bn_eps=1e-6))
        teacher: dict[str, Any] = attrs.field(metadata={"component": "teachers"}, factory=lambda: {
            "name": "ema", "copy": ["encoder", "projector"], "input_key": "image_target",
            "momentum": 0.996, "momentum_end": 0.996, "schedule": "constant", "attention": False,
            "final_norm": False})
        infonce: dict[str, Any] = attrs.field(metadata={"component": "losses", "default_name": "infonce"}, factory=lambda: {
            "temperature": 0.07, "symmetric": False, "scale_2tau": True, "gather": True})
        pix_weight: float = 1.0
        nce_weight: float = 1.0
        input_key: str = "image"

    def __init__(self, config: "CMAE.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        self.input_key = config.input_key
        self.encoder, self.target, self.decoder = _build_autoencoder(config, env, "CMAE's pixel decoder")
        fd = {"out_dim": self.encoder.embed_dim, **config.feature_decoder}
        self.feature_decoder = env.build("decoders", fd, "model.feature_decoder")
        self.masker = env.build("maskers", config.masker, "model.masker")
        d = self.encoder.embed_dim
        p, q = config.projector, config.predictor
        self.projector = MLP(d, p.hidden_dim, p.out_dim, p.layers, p.norm, p.last_bias, p.bn_eps)
        self.predictor = MLP(p.out_dim, q.hidden_dim, q.out_dim, q.layers, q.norm, q.last_bias, q.bn_eps)
        self.nce = BuildEnv(registry=env.registry).build("losses", {"name": "infonce", **config.infonce}, "model.infonce")
        self.teacher = env.build("teachers", config.teacher, "model.teacher", student=self)
        if "projector" not in self.teacher.paths:
            raise ConfigError("model.teacher.copy: CMAE's target branch needs [encoder, projector]")

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The optimizer groups of the official config (``paramwise_cfg.custom_keys`` ``ln``,
        ``bias``, ``pos_embed``, ``mask_token``, ``cls_token`` at decay 0, matched as substrings
        of the mmcv names): every LayerNorm (mmcv names them ``ln1``/``ln2``, the decoders' final
        norm included), biases and tokens are not decayed; BatchNorm weights of the projector and
        predictor *are* (their names ``bn0`` match none of the keys)."""
        no_decay_ids = {id(p) for m in self.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            leaf = name.rsplit(".", 1)[-1]
            exempt = id(p) in no_decay_ids or leaf == "bias" or any(
                t in leaf for t in ("pos_embed", "mask_token", "cls_token"))
            (no_decay if exempt else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay, "apply_wd": True},
                {"params": no_decay, "weight_decay": 0.0, "apply_wd": False}]

    def forward(self, batch: dict, ctx: Context | None = None, noise: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> Outputs:
        """One step; ``mask`` (B, N) bool (True = hidden) overrides the masker and ``noise``."""
        ctx = ctx if ctx is not None else Context()
        x = batch[self.config.input_key]  # (B, C, H, W) online view
        with torch.no_grad():
            ctx.teacher = self.teacher(batch, ctx)  # teacher_latent (B, 1+N, D) on image_target
            t = ctx.teacher["teacher_latent"]
            k = self.teacher.copies["projector"](pool_tokens(t, "mean", self.encoder.num_prefix_tokens))  # (B, 256)
        if mask is not None:
            if noise is not None:
                raise ConfigError("CMAE: pass either noise or mask, not both (the noise only draws the mask)")
            mask = explicit_mask(mask.to(x.device), self.encoder, self.masker, x.shape[0])  # checks shape/counts
        else:
            mask = self.make_mask(batch, ctx, noise)
        latent = self.encoder.encode(self.encoder.embed(x, mask), mask)  # (B, 1+K, D)
        pred = self.decoder(latent, mask, ctx)  # (B, N, p*p*C)
        target = self.target(batch, mask, ctx)  # (B, N, p*p*C)
        feats = self.feature_decoder(latent, mask, ctx)  # (B, N, D)
        z = self.projector(feats.mean(1))  # (B, 256)
        q = self.predictor(z)  # (B, 256)
        pix = _hidden_mean(((pred - target) ** 2).mean(-1), mask)
        nce = self.nce.contrast(q, k)
        out = Outputs(mask=mask, latent=latent, pred=pred, target=target, losses={"pix": pix, "nce": nce})
        out.loss = self.config.pix_weight * pix + self.config.nce_weight * nce
        out.extra.update(ctx.teacher)
        out.extra.update({"features": feats, "projection": z, "query": q, "key": k})
        return out



class MACRL(MethodModel):
    """Masked Contrastive Representation Learning: two masked encoder-decoder branches."""

    @attrs.define(kw_only=True)
    class Config:
        encoder: dict[str, Any] = attrs.field(metadata={"component": "encoders"}, factory=lambda: {"name": "vit", "mode": "visible_only"})
        masker_high: dict[str, Any] = attrs.field(metadata={"component": "maskers"}, factory=lambda: {"name": "random", "ratio": 0.75})
        masker_low: dict[str, Any] = attrs.field(metadata={"component": "maskers"}, factory=lambda: {"name": "random", "ratio": 0.5})
        target: dict[str, Any] = attrs.field(metadata={"component": "targets"}, factory=lambda: {"name": "pixels", "norm": "patch"})
        decoder: dict[str, Any] = attrs.field(metadata={"component": "decoders"}, factory=lambda: {"name": "mae", "embed_dim": 512, "depth": 8, "num_heads": 16})
        share_decoder: bool = False
        pool: str = attrs.field(default="cls", validator=one_of("cls", "mean"))
        projector: MLPConfig = attrs.field(factory=lambda: MLPConfig(hidden_dim=2048, out_dim=256, layers=2))
        infonce: dict[str, Any] = attrs.field(metadata={"component": "losses", "default_name": "infonce"}, factory=lambda: {
            "temperature": 0.1, "symmetric": True, "scale_2tau": False, "gather": True, "queue": 0, "key_grad": True})
        rec_weight: float = 1.0
        nce_weight: float = 1.0
        strong_key: str = "image"  # branch A: stronger augmentation, higher ratio
        weak_key: str = "image_target"  # branch B: weaker augmentation, lower ratio

    def __init__(self, config: "MACRL.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        self.encoder, self.target, self.decoder = _build_autoencoder(config, env)
        self.decoder_low = self.decoder if config.share_decoder else env.build("decoders", config.decoder, "model.decoder")
        self.masker = _PairMasker(env.build("maskers", config.masker_high, "model.masker_high"),
                                  env.build("maskers", config.masker_low, "model.masker_low"))
        p = config.projector
        self.projector = MLP(self.encoder.embed_dim, p.hidden_dim, p.out_dim, p.layers, p.norm)
        spec = {"name": "infonce", "dim": p.out_dim, **config.infonce}
        self.nce = BuildEnv(registry=env.registry).build("losses", spec, "model.infonce")

    def _branch(self, x: torch.Tensor, mask: Mask, decoder: nn.Module,
                ctx: Context) -> tuple[Mask, torch.Tensor, torch.Tensor]:
        latent = self.encoder.encode(self.encoder.embed(x, mask), mask)  # (B, 1+K, D)
        pred = decoder(latent, mask, ctx)  # (B, N, p*p*C) or (B, N_hidden, ...)
        target = self.target({self.target.input_key: x}, mask, ctx)  # (B, N, p*p*C)
        if getattr(decoder, "predict", "all") == "masked":
            target = gather_tokens(target, mask.ids_hidden)
            rec = (pred - target).abs().mean()
        else:
            rec = _hidden_mean((pred - target).abs().mean(-1), mask)
        return mask, latent, rec

    def explicit_masks(self, mask: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...], batch_size: int,
                       device: torch.device) -> tuple[Mask, Mask]:
        """The two branches' Masks of an explicit ``mask``: a pair ``[hidden_high, hidden_low]`` of
        boolean (B, N) maps (True = hidden), one per view as the two maskers draw them, or one
        (B, N) map for both views. Each map needs the same hidden count in every row (the
        encoder is visible-only); the two maps may hide different counts."""
        if isinstance(mask, (list, tuple)):
            if len(mask) != 2:
                raise ConfigError(f"mask: MACRL takes one (B, N) map for both views or a pair [high-ratio view "
                                  f"({self.config.strong_key}), low-ratio view ({self.config.weak_key})]; "
                                  f"got a list of {len(mask)}")
            maps = list(mask)
        else:
            maps = [mask, mask]
        masks = []
        for i, (m, masker, what) in enumerate(zip(maps, (self.masker.a, self.masker.b), ("high", "low"))):
            if not isinstance(m, torch.Tensor):
                raise ConfigError(f"mask[{i}] ({what}-ratio view): a boolean (B, N) tensor, got {type(m).__name__}")
            try:
                masks.append(explicit_mask(m.to(device), self.encoder, masker, batch_size))
            except ValueError as e:
                raise ConfigError(f"mask[{i}] ({what}-ratio view): {e}") from None
        return masks[0], masks[1]

    def forward(self, batch: dict, ctx: Context | None = None, noise: torch.Tensor | None = None,
                mask: torch.Tensor | list[torch.Tensor] | None = None) -> Outputs:
        """One step. ``mask``: explicit masks (True = hidden) overriding the maskers and ``noise``:
        ``[hidden_high, hidden_low]``, one (B, N) map per view, or one (B, N) map for both."""
        ctx = ctx if ctx is not None else Context()
        c = self.config
        xa = batch[c.strong_key]
        xb = batch[c.weak_key] if c.weak_key in batch else xa
        if mask is not None:
            if noise is not None:
                raise ConfigError("MACRL: pass either noise or mask, not both (the noise only draws the masks)")
            mask_a, mask_b = self.explicit_masks(mask, xa.shape[0], xa.device)
        else:
            na, nb = self.masker.split(step_noise(self.masker, batch, ctx, noise, xa.shape[0], xa.device))
            mask_a = self.masker.a({c.strong_key: xa}, na, ctx)
            mask_b = self.masker.b({c.strong_key: xb}, nb, ctx)
        mask_a, lat_a, rec_a = self._branch(xa, mask_a, self.decoder, ctx)
        mask_b, lat_b, rec_b = self._branch(xb, mask_b, self.decoder_low, ctx)
        npfx = self.encoder.num_prefix_tokens
        za = self.projector(pool_tokens(lat_a, c.pool, npfx))  # (B, 256)
        zb = self.projector(pool_tokens(lat_b, c.pool, npfx))
        if not self.nce.config.key_grad:
            zb = zb.detach()
        nce = self.nce.contrast(za, zb)
        losses = {"rec_high": rec_a, "rec_low": rec_b, "nce": nce}
        out = Outputs(mask=mask_a, latent=lat_a, losses=losses)
        out.loss = c.rec_weight * (rec_a + rec_b) + c.nce_weight * nce
        out.extra.update({"latent_low": lat_b, "mask_low": mask_b})
        return out

