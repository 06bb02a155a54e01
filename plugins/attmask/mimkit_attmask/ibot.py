"""The distillation objective AttMask was published with: iBOT (Zhou et al., ICLR 2022).

    views v in {global crop 1, global crop 2}  (B, C, H, W) each
    teacher (EMA of encoder + head, core ``ema`` teacher) on every unmasked view
        -> teacher_cls_attn (B, N) -> attention_guided masker -> mask_v (B, N)
           (or iBOT's own ibot_block / ibot_rand masks, drawn per crop in the loader)
        -> head(teacher_latent) -> CLS logits (B, K), patch logits (B, N, K)
    student: encoder (mode with_mask_token) on the masked view -> head -> same shapes
    loss = l1 * mean_{q != v} CE(teacher_cls[q], student_cls[v])          (DINO [CLS] term)
         + l2 * mean_v  masked-mean_tokens CE(teacher_patch[v], student_patch[v])  (MIM term)
    teacher distributions are centered (EMA center, momentum 0.9) and sharpened (temperature
    warmed up 0.04 -> 0.07 over 30 epochs); the student temperature is 0.1.

Multi-crop (``main_attmask.py``): the two global crops are masked together (one ratio per
batch, shared) and seen by the teacher and the student; the local crops (``image_local``,
(B, L, C, s, s), 96 px at 224) are seen by the student only, never masked, and add [CLS] terms
against both teacher global crops. With a single view (no ``image_target``) the [CLS] term
compares the view with itself. Evaluation (k-NN, linear probe) reads the **teacher** encoder
(``eval_encoder``), as the official evaluation scripts load ``teacher`` weights.
"""
from __future__ import annotations

import math
from typing import Any

import attrs
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mimkit.plugin_api import BuildEnv, ConfigError, Context, Mask, Masker, MethodModel, Outputs, step_noise

from .masking import mask_from_hidden


class IBOTHead(nn.Module):
    """iBOT's projection head.

    (…, D) -> MLP (``nlayers`` linear layers, GELU) -> (…, bottleneck) -> L2-normalize
    -> weight-normalized linear (no bias) -> (…, K) prototypes logits. With
    ``norm_last_layer`` the weight-norm gain is fixed to 1 (the official default).

    ``shared=True`` (official ``--shared_head true``, every published run command): one
    prototype layer scores the [CLS] and the patch tokens. ``shared=False`` (the official
    argument default): a second weight-normalized layer (``last_v2``/``last_g2``, official
    ``last_layer2``) scores the patch tokens of a (B, 1+N, D) input; a (B, D) input only meets
    the first (official ``iBOTHead.forward`` on 2-d input). ``forward(x, shared=True)`` forces
    the single layer, as the official teacher head is always shared (``--shared_head_teacher``).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True, shared: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (max(1, nlayers) - 1) + [bottleneck_dim]
        for i, (a, b) in enumerate(zip(dims, dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # weight norm written out: W = g * V / ||V|| per prototype (row); V keeps nn.Linear's
        # default init (kaiming-uniform, a = sqrt(5)), as the official weight_norm(nn.Linear) layer
        self.last_v, self.last_g = self._prototypes(out_dim, bottleneck_dim, norm_last_layer)  # (K, bottleneck), (K, 1)
        self.last_v2 = self.last_g2 = None
        if not shared:
            self.last_v2, self.last_g2 = self._prototypes(out_dim, bottleneck_dim, norm_last_layer)
        self.freeze_last = False  # set by the model during the first epoch(s)

    @staticmethod
    def _prototypes(out_dim: int, bottleneck_dim: int, norm_last_layer: bool) -> tuple[nn.Parameter, nn.Parameter]:
        v = torch.empty(out_dim, bottleneck_dim)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))
        return nn.Parameter(v), nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)

    def _weight(self, v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.freeze_last:  # no gradient at all: the optimizer skips it (official: grad = None)
            v, g = v.detach(), g.detach()
        return g * F.normalize(v, dim=-1)  # (K, bottleneck)

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, eps=1e-12)  # (…, bottleneck)
        w = self._weight(self.last_v, self.last_g)
        if self.last_v2 is None or shared or x.ndim < 3:
            return x @ w.t()  # (…, K)
        w2 = self._weight(self.last_v2, self.last_g2)
        return torch.cat([x[:, :1] @ w.t(), x[:, 1:] @ w2.t()], dim=1)  # (B, 1+N, K): [CLS], patches


def teacher_temp_at(epoch: float, start: float, end: float, warmup_epochs: float) -> float:
    """The official per-epoch schedule: ``np.linspace(start, end, warmup_epochs)`` indexed by
    the integer epoch (so the end value is reached at epoch warmup_epochs - 1), then constant."""
    e, w = int(epoch), int(warmup_epochs)
    if w <= 0 or e >= w:
        return end
    if w == 1:
        return start  # linspace(start, end, 1) == [start]
    return start + (end - start) * e / (w - 1)


class IBOTLoss(nn.Module):
    """iBOT's loss with its two EMA centers (buffers, so they are checkpointed)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, teacher_temp: float = 0.07,
                 warmup_teacher_temp: float = 0.04, warmup_epochs: float = 30.0,
                 patch_teacher_temp: float = 0.07, warmup_patch_teacher_temp: float = 0.04,
                 center_momentum: float = 0.9, lambda1: float = 1.0, lambda2: float = 1.0,
                 mim_start_epoch: int = 0):
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.mim_start_epoch = int(mim_start_epoch)
        self.cls_temp = (warmup_teacher_temp, teacher_temp)
        self.patch_temp = (warmup_patch_teacher_temp, patch_teacher_temp)
        self.warmup_epochs, self.lambda1, self.lambda2 = warmup_epochs, lambda1, lambda2
        self.register_buffer("center", torch.zeros(1, out_dim))  # (1, K) [CLS]
        self.register_buffer("center2", torch.zeros(1, 1, out_dim))  # (1, 1, K) patches

    def temperatures(self, epoch: float) -> tuple[float, float]:
        """The [CLS] and patch teacher temperatures. With ``mim_start_epoch`` s > 0 the patch
        table is the official shifted one: the warm-up value before s, then the warm-up from s."""
        s = self.mim_start_epoch
        patch = (self.patch_temp[0] if int(epoch) < s else
                 teacher_temp_at(epoch - s, *self.patch_temp, self.warmup_epochs))
        return teacher_temp_at(epoch, *self.cls_temp, self.warmup_epochs), patch

    def teacher_probs(self, t_cls: torch.Tensor, t_patch: torch.Tensor, epoch: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Center and sharpen: softmax((logits - center) / T_teacher)."""
        tc, tp = self.temperatures(epoch)
        return F.softmax((t_cls - self.center) / tc, dim=-1), F.softmax((t_patch - self.center2) / tp, dim=-1)

    def forward(self, s_cls: list[torch.Tensor], s_patch: list[torch.Tensor], t_cls: list[torch.Tensor],
                t_patch: list[torch.Tensor], hidden: list[torch.Tensor], epoch: float,
                s_local: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Per global view: s_cls/t_cls (B, K), s_patch/t_patch (B, N, K), hidden (B, N) bool;
        ``s_local``: the student's [CLS] logits (B, K) of each local crop ([CLS] terms only)."""
        probs = [self.teacher_probs(c, p, epoch) for c, p in zip(t_cls, t_patch)]
        total1 = total2 = None
        n1 = n2 = 0
        views = len(s_cls)
        for q in range(views):
            tq_cls, tq_patch = probs[q]
            for v in range(views):
                if v == q:  # masked-token (MIM) term on the same view
                    ce = torch.sum(-tq_patch * F.log_softmax(s_patch[v] / self.student_temp, dim=-1), dim=-1)  # (B, N)
                    m = hidden[v].float()
                    term = (torch.sum(ce * m, dim=-1) / m.sum(-1).clamp(min=1.0)).mean()
                    total2 = term if total2 is None else total2 + term
                    n2 += 1
                if v != q or views == 1:  # [CLS] term across views
                    ce = torch.sum(-tq_cls * F.log_softmax(s_cls[v] / self.student_temp, dim=-1), dim=-1)  # (B,)
                    total1 = ce.mean() if total1 is None else total1 + ce.mean()
                    n1 += 1
            for s_l in s_local or []:
                ce = torch.sum(-tq_cls * F.log_softmax(s_l / self.student_temp, dim=-1), dim=-1)  # (B,)
                total1 = ce.mean() if total1 is None else total1 + ce.mean()
                n1 += 1
        self.update_center(torch.cat(t_cls), torch.cat(t_patch))
        return {"cls": total1 / n1 * self.lambda1, "patch": total2 / n2 * self.lambda2}

    @torch.no_grad()
    def update_center(self, t_cls: torch.Tensor, t_patch: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * batch mean of the teacher logits (all processes)."""
        cls_sum = t_cls.float().sum(0, keepdim=True)  # (1, K)
        patch_sum = t_patch.float().mean(1).sum(0, keepdim=True).unsqueeze(1)  # (1, 1, K)
        count = torch.tensor(float(t_cls.shape[0]), device=t_cls.device)
        if dist.is_available() and dist.is_initialized():
            for t in (cls_sum, patch_sum, count):
                dist.all_reduce(t)
        m = self.center_momentum
        self.center.mul_(m).add_(cls_sum / count, alpha=1 - m)
        self.center2.mul_(m).add_(patch_sum / count, alpha=1 - m)


def _split_mask(mask: Mask, i: int, b: int) -> Mask:
    """View i's rows of a mask made on all views at once."""
    return mask_from_hidden(mask.hidden[i * b : (i + 1) * b])


def local_cls(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The [CLS] latent (B, D) of crops of another size than the encoder's (iBOT's local crops):
    patch embedding, the patch position table resized bicubically to the crop's grid (DINO's
    ``interpolate_pos_encoding``), no mask, the blocks and the final norm."""
    vit = encoder.vit
    proj = vit.patch_embed.proj
    t = F.conv2d(x, proj.weight, proj.bias, stride=proj.stride).flatten(2).transpose(1, 2)  # (B, n, D)
    npfx = encoder.num_prefix_tokens
    pos = vit.pos_embed[:, npfx:]
    gh, gw = encoder.grid[-2], encoder.grid[-1]
    h, w = x.shape[-2] // proj.stride[0], x.shape[-1] // proj.stride[1]
    if (h, w) != (gh, gw):
        d = pos.shape[-1]
        pos = F.interpolate(pos.reshape(1, gh, gw, d).permute(0, 3, 1, 2), size=(h, w), mode="bicubic",
                            align_corners=False).permute(0, 2, 3, 1).reshape(1, h * w, d)
    t = t + pos
    if npfx:
        t = torch.cat([(vit.cls_token + vit.pos_embed[:, :1]).expand(t.shape[0], -1, -1), t], 1)
    return encoder.encode(vit.norm_pre(t))[:, 0]


def last_blocks_cls(encoder: nn.Module, x: torch.Tensor, n: int = 4) -> torch.Tensor:
    """(B, n*D): the final-normed [CLS] of each of the last ``n`` blocks, concatenated."""
    _, layers = encoder.encode(encoder.embed(x), None, return_layers=True)
    return torch.cat([encoder.vit.norm(h)[:, 0] for h in layers[-n:]], dim=-1)


class _ViewMasker(Masker):
    """The masker, with noise for every view drawn at once in the loader: (V * M,)."""

    def __init__(self, masker: nn.Module, views: int):
        super().__init__()
        self.inner, self.views = masker, views
        self.num_tokens = masker.num_tokens

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        return torch.cat([self.inner.sample_noise(generator) for _ in range(self.views)])  # (V * M,)

    def split(self, noise: torch.Tensor) -> list[torch.Tensor]:
        return list(noise.chunk(self.views, dim=1))  # V x (B, M)


class IBOTModel(MethodModel):
    """iBOT self-distillation with a pluggable masker (iBOT: ``ibot_block`` / ``ibot_rand``;
    AttMask: ``attention_guided``).

    Built from the registry: ``encoder`` (mode with_mask_token), ``masker``, and the core
    ``ema`` teacher copying the encoder and the head (``copy: [encoder, head]``).
    """

    @attrs.define(kw_only=True)
    class Config:
        encoder: dict[str, Any] = attrs.field(metadata={"component": "encoders"}, factory=lambda: {"name": "vit", "mode": "with_mask_token"})
        masker: dict[str, Any] = attrs.field(metadata={"component": "maskers"}, factory=lambda: {"name": "attention_guided"})
        teacher: dict[str, Any] = attrs.field(metadata={"component": "teachers"}, factory=lambda: {
            "name": "ema", "copy": ["encoder", "head"], "momentum": 0.996, "momentum_end": 1.0,
            "schedule": "cosine", "every": "step"})
        views: list[str] = attrs.field(factory=lambda: ["image", "image_target"])
        local_key: str = "image_local"  # (B, L, C, s, s) local crops: student only, never masked
        out_dim: int = 8192
        hidden_dim: int = 2048
        bottleneck_dim: int = 256
        head_layers: int = 3
        norm_last_layer: bool = True
        shared_head: bool = True  # official --shared_head (the teacher's head is always shared)
        freeze_last_layer_epochs: float = 1.0
        student_temp: float = 0.1
        teacher_temp: float = 0.07
        warmup_teacher_temp: float = 0.04
        patch_teacher_temp: float = 0.07
        warmup_patch_teacher_temp: float = 0.04
        warmup_teacher_temp_epochs: float = 30.0
        center_momentum: float = 0.9
        lambda1: float = 1.0
        lambda2: float = 1.0
        # official iBOTLoss(mim_start_epoch=pred_start_epoch): the patch temperature warm-up starts
        # there; None = the masker's pred_start_epoch (ibot_block/ibot_rand), else 0
        mim_start_epoch: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(0)))

    def __init__(self, config: "IBOTModel.Config", env: BuildEnv):
        super().__init__()
        self.config = config
        self.encoder = env.encoder = env.build("encoders", config.encoder, "model.encoder")
        if getattr(getattr(self.encoder, "config", None), "mode", "with_mask_token") != "with_mask_token":
            raise ConfigError("model.encoder.mode: iBOT/AttMask replaces hidden tokens by a mask token; use with_mask_token")
        self.head = IBOTHead(self.encoder.embed_dim, config.out_dim, config.hidden_dim, config.bottleneck_dim,
                             config.head_layers, config.norm_last_layer, config.shared_head)
        self.masker = _ViewMasker(env.build("maskers", config.masker, "model.masker"), len(config.views))
        mim_start = config.mim_start_epoch
        if mim_start is None:
            mim_start = getattr(getattr(self.masker.inner, "config", None), "pred_start_epoch", 0)
        self.ibot_loss = IBOTLoss(config.out_dim, config.student_temp, config.teacher_temp, config.warmup_teacher_temp,
                                  config.warmup_teacher_temp_epochs, config.patch_teacher_temp,
                                  config.warmup_patch_teacher_temp, config.center_momentum, config.lambda1, config.lambda2,
                                  mim_start)
        self.teacher = env.build("teachers", config.teacher, "model.teacher", student=self)
        if "head" not in getattr(self.teacher, "paths", ["head"]):
            raise ConfigError("model.teacher.copy: the iBOT teacher must copy the head too: [encoder, head]")
        self.steps_per_epoch = 1

    def _teacher_head(self) -> nn.Module:
        return self.teacher.copies["head"]

    def forward(self, batch: dict, ctx: Context | None = None, noise: torch.Tensor | None = None,
                mask: torch.Tensor | list[torch.Tensor] | None = None) -> Outputs:
        """One step. ``mask``: explicit masks of the global views, a list of (B, N) bool maps or
        one (V*B, N) map (True = hidden), overriding the masker and ``noise``."""
        ctx = ctx if ctx is not None else Context()
        views = [batch[k] for k in self.config.views if k in batch]  # V x (B, C, H, W)
        if not views:
            raise KeyError(f"iBOT needs at least one of the views {self.config.views} in the batch")
        b, nv = views[0].shape[0], len(views)
        epoch = ctx.epoch + (ctx.step % self.steps_per_epoch) / self.steps_per_epoch if self.steps_per_epoch > 1 else float(ctx.epoch)
        self.head.freeze_last = self.training and epoch < self.config.freeze_last_layer_epochs
        in_key = getattr(self.teacher.config, "input_key", "image")
        x_all = torch.cat(views)  # (V*B, C, H, W): the global crops, as one batch (official)
        with torch.no_grad():
            t_out = self.teacher({in_key: x_all}, ctx)  # teacher_latent (V*B, 1+N, D), teacher_cls_attn (V*B, N)
            t_logits = self._teacher_head()(t_out["teacher_latent"], shared=True)  # (V*B, 1+N, K)
        ctx.teacher = t_out
        if mask is not None:
            hidden_all = torch.cat(list(mask)) if isinstance(mask, (list, tuple)) else mask
            masks_all = mask_from_hidden(hidden_all.to(x_all.device).bool())  # as given, whatever the masker
        else:
            noises = self.masker.split(step_noise(self.masker, batch, ctx, noise, b, x_all.device))[:nv]
            # one call on all global crops: one ratio (and hint count) per batch, shared by the crops
            masks_all = self.masker.inner(batch, torch.cat(noises), ctx)
        hidden = list(masks_all.hidden.chunk(nv))
        latent_all = self.encoder.encode(self.encoder.embed(x_all, masks_all), masks_all)  # (V*B, 1+N, D)
        logits = self.head(latent_all)  # (V*B, 1+N, K)
        s_cls, s_patch = list(logits[:, 0].chunk(nv)), list(logits[:, 1:].chunk(nv))
        t_cls, t_patch = list(t_logits[:, 0].chunk(nv)), list(t_logits[:, 1:].chunk(nv))
        s_local = []
        local = batch.get(self.config.local_key)
        if local is not None and local.numel():
            xl = local.flatten(0, 1)  # (B*L, C, s, s), sample-major
            cls_l = self.head(local_cls(self.encoder, xl))  # (B*L, K): never masked
            s_local = list(cls_l.view(b, local.shape[1], -1).unbind(1))  # L x (B, K)
        terms = self.ibot_loss(s_cls, s_patch, t_cls, t_patch, hidden, epoch, s_local)
        masks = [_split_mask(masks_all, i, b) for i in range(nv)]
        out = Outputs(mask=masks[0], latent=latent_all[:b], losses=terms)
        out.loss = terms["cls"] + terms["patch"]
        out.extra.update(ctx.teacher)
        out.extra["masks"] = masks
        return out

    @property
    def eval_encoder(self) -> nn.Module:
        """The encoder evaluation reads: the teacher's (official k-NN / linear scripts load the
        ``teacher`` weights)."""
        return self.teacher.copies["encoder"]

    @torch.no_grad()
    def features(self, x: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """Frozen teacher features: ``cls``/``mean`` as the core, or ``last4`` (DINO/iBOT linear
        protocol, ``--n_last_blocks 4``): the final-normed [CLS] of the last 4 blocks, concatenated."""
        enc = self.eval_encoder
        if pool.startswith("last"):
            return last_blocks_cls(enc, x, int(pool[4:] or 4))
        return enc.pool(enc.forward_features(x), pool)

    def set_schedule(self, total_steps: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch = max(1, steps_per_epoch)
        super().set_schedule(total_steps, steps_per_epoch)

