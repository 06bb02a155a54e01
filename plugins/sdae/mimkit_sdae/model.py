"""SdAE — Self-distillated Masked Autoencoder (Chen et al., ECCV 2022), one training step.

    image (B, C, H, W) -> random mask 0.75 -> visible-only ViT student (drop path 0.25)
        -> MAE decoder (8 x 512) whose head predicts encoder-width features -> pred (B, N, D)
    multi-fold: the hidden ids (B, N_h) (in the masker's order) -> the first shrink_num of them
        -> k folds of n = shrink_num // k -> (B*k, n) ids, fold g = ids[:, g*n:(g+1)*n]
    teacher (EMA of the student encoder, updated once per epoch, cosine 0.96 -> 0.99):
        each fold is its own sequence: [CLS] + the fold's patches at their original positions
        -> blocks -> final norm -> drop [CLS] -> (B*k, n, D)
        -> standardized per token over channels: (t - mean) / sqrt(var + 1e-6)  (unbiased var)
    loss = 1 - cos(pred at the same ids, target), averaged
Each teacher view then holds about as many patches as the student sees (49 of 196 in ViT-B).

An explicit mask (``forward(batch, mask=hidden)``, a boolean (B, N) map, True = hidden): the map
decides which tokens are hidden; the order of its hidden ids, hence the folds, is the order the
masker's own mask for this step's randomness gives (``noise`` when passed, else the batch's
``mask_noise`` or ``ctx.generator``): with the random masker, ascending noise, a uniformly random
partition as the official ``ids_unkeep`` slices. With the map that ``noise`` itself gives,
``forward(mask=map, noise=noise)`` is ``forward(noise=noise)`` exactly (:func:`order_like`).
"""
from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F

from mimkit.plugin_api import (BuildEnv, ConfigError, Context, explicit_mask, gather_tokens, Mask, MethodModel,
                               one_of, Outputs, require_visible_only_vit)


def multi_fold_ids(ids_hidden: torch.Tensor, folds: int, shrink_num: int | None = None) -> torch.Tensor:
    """Split each sample's hidden token ids into ``folds`` groups: (B, N_h) -> (B * folds, n).

    Takes the first ``shrink_num`` ids (all by default) and drops the remainder that does not
    divide into ``folds`` (as the official ``forward_teachers``); row ``b * folds + g`` holds
    group ``g`` of sample ``b``: ``ids[b, g*n:(g+1)*n]``."""
    b, n_h = ids_hidden.shape
    total = n_h if shrink_num is None else min(shrink_num, n_h)
    n = total // folds
    if n == 0:
        raise ValueError(f"multi-fold: {total} hidden tokens cannot make {folds} groups")
    return ids_hidden[:, : n * folds].reshape(b * folds, n)


def fold_mask(ids: torch.Tensor, num_tokens: int) -> Mask:
    """A Mask that keeps exactly ``ids`` (B', n), in that order, and hides every other token."""
    b, n = ids.shape
    rank = torch.arange(num_tokens, device=ids.device).expand(b, -1) + n  # others after, in order
    rank = rank.scatter(1, ids, torch.arange(n, device=ids.device).expand(b, -1))
    ids_shuffle = torch.argsort(rank, dim=1)
    hidden = torch.ones(b, num_tokens, dtype=torch.bool, device=ids.device).scatter(1, ids, False)
    return Mask(hidden=hidden, ids_shuffle=ids_shuffle, ids_restore=torch.argsort(ids_shuffle, dim=1), num_keep=n)


def order_like(hidden: torch.Tensor, order: Mask) -> Mask:
    """The Mask of the boolean (B, N) map ``hidden`` (same count per row) whose kept and hidden
    ids each follow ``order``'s token order (its ``ids_shuffle``): kept first, then hidden, both by
    ascending rank in ``order``. With ``hidden == order.hidden`` this is ``order`` itself, so the
    hidden ids, hence the multi-fold groups, are the ones the noise path forms."""
    n = hidden.shape[1]
    key = order.ids_restore + hidden.long() * n  # rank in order's sequence, hidden ones after all kept
    ids_shuffle = torch.argsort(key, dim=1)  # keys are distinct: a permutation, no ties
    num_keep = n - int(hidden[0].sum()) if hidden.shape[0] else n
    return Mask(hidden=hidden, ids_shuffle=ids_shuffle, ids_restore=torch.argsort(ids_shuffle, dim=1),
                num_keep=num_keep)


def standardize_tokens(t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(t - mean) / sqrt(var + eps) over the last dim, unbiased var (``torch.var``'s default,
    as the official ``train_one_epoch_ema``)."""
    mean = t.mean(-1, keepdim=True)
    var = t.var(-1, keepdim=True)
    return (t - mean) / (var + eps).sqrt()


def sdae_cosine_loss(pred: torch.Tensor, target: torch.Tensor, over: str = "channels") -> torch.Tensor:
    """1 - cos(pred, target), averaged. ``over="channels"``: per token (the paper);
    ``"tokens"``: along dim 1 of the (B*k, n, D) fold tensors, per channel, which is what the
    official ``F.cosine_similarity(output_teacher, outputs)`` (default dim=1) computes."""
    dim = -1 if over == "channels" else 1
    return 1 - F.cosine_similarity(target.float(), pred.float(), dim=dim).mean()


class SdAE(MethodModel):
    """A student MAE regressing the features its EMA teacher gives to multi-fold masked views."""

    @attrs.define(kw_only=True)
    class Config:
        encoder: dict[str, Any] = attrs.field(factory=lambda: {"name": "vit", "mode": "visible_only", "drop_path": 0.25})
        masker: dict[str, Any] = attrs.field(factory=lambda: {"name": "random", "ratio": 0.75})
        decoder: dict[str, Any] = attrs.field(factory=lambda: {"name": "mae", "embed_dim": 512, "depth": 8, "num_heads": 16})
        teacher: dict[str, Any] = attrs.field(factory=lambda: {
            "name": "ema", "copy": ["encoder"], "schedule": "cosine", "momentum": 0.96, "momentum_end": 0.99,
            "every": "epoch", "attention": False})
        folds: int = 3  # official --ncrop_loss
        shrink_num: int | None = None  # hidden tokens sent to the teacher (official 147); None: all
        eps: float = 1e-6
        cosine_over: str = attrs.field(default="channels", validator=one_of("channels", "tokens"))
        input_key: str = "image"

    def __init__(self, config: "SdAE.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        self.input_key = env.input_key = config.input_key
        if config.folds < 1:
            raise ConfigError(f"model.folds: {config.folds}; allowed: an integer >= 1")
        self.encoder = env.encoder = env.build("encoders", config.encoder, "model.encoder")
        require_visible_only_vit(self.encoder, "SdAE")
        env.target_dim = self.encoder.embed_dim  # the decoder predicts encoder-width features
        self.decoder = env.build("decoders", {"out_dim": self.encoder.embed_dim, **config.decoder}, "model.decoder")
        if getattr(self.decoder, "predict", "all") != "all":
            raise ConfigError("model.decoder.predict: SdAE's decoder predicts all tokens")
        self.masker = env.build("maskers", config.masker, "model.masker")
        self.teacher = env.build("teachers", config.teacher, "model.teacher", student=self)
        if self.teacher.paths[0] != "encoder":
            raise ConfigError("model.teacher.copy: SdAE's teacher is an EMA of the student encoder: [encoder]")

    @torch.no_grad()
    def teacher_targets(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The teacher's standardized tokens for fold ids (B*k, n): (B*k, n, D)."""
        enc = self.teacher.encoder
        enc.eval()
        k = ids.shape[0] // x.shape[0]
        xs = x.repeat_interleave(k, dim=0)  # (B*k, C, H, W): row b*k + g is sample b
        mask = fold_mask(ids, self.encoder.num_patches)
        tokens = enc.encode(enc.embed(xs, mask), mask)  # (B*k, 1 + n, D) after the final norm
        return standardize_tokens(tokens[:, enc.num_prefix_tokens:].float(), self.config.eps)

    def forward(self, batch: dict, ctx: Context | None = None, noise: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> Outputs:
        """One step. ``mask`` (a boolean (B, N) map, True = hidden, the same count per row) replaces
        the masker's hidden set; its hidden ids are split into folds in the order of the masker's
        mask for ``noise`` (or the batch's ``mask_noise``, or ``ctx.generator``'s draw), so a seeded
        generator or the noise decides the folds, and the noise's own map reproduces the noise path."""
        ctx = ctx if ctx is not None else Context()
        c = self.config
        x = batch[self.input_key]  # (B, C, H, W)
        if mask is None:
            mask = self.make_mask(batch, ctx, noise)
        else:
            given = explicit_mask(mask.to(x.device), self.encoder, self.masker, x.shape[0])  # checks shape/counts
            mask = order_like(given.hidden, self.make_mask(batch, ctx, noise))
        latent = self.encoder.encode(self.encoder.embed(x, mask), mask)  # (B, 1+K, D)
        pred = self.decoder(latent, mask, ctx)  # (B, N, D)
        ids = multi_fold_ids(mask.ids_hidden, c.folds, c.shrink_num)  # (B*k, n)
        target = self.teacher_targets(x, ids)  # (B*k, n, D)
        b, d = pred.shape[0], pred.shape[-1]
        pred_f = gather_tokens(pred, ids.reshape(b, -1)).reshape(ids.shape[0], ids.shape[1], d)  # (B*k, n, D)
        loss = sdae_cosine_loss(pred_f, target, c.cosine_over)
        out = Outputs(mask=mask, latent=latent, pred=pred_f, target=target, pred_scope="masked",
                      losses={"cos": loss}, loss=loss)
        out.extra["fold_ids"] = ids
        return out
