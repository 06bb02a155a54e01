"""Generic losses: ``masked_mse``, ``l1``, ``cosine``, ``cross_entropy``.

Pixel-style losses average over the values of a token first, then over the hidden tokens
only: sum(loss * hidden) / sum(hidden), as the official MAE code does.
"""
from __future__ import annotations

import attrs
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..schema import one_of
from ..types import Context, Outputs
from . import Loss, LossConfig


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather (B, D) across processes for a contrastive loss: (W*B, D) and this rank's row
    offset. Only the local slice carries a gradient (the others are constants here); one
    process: ``(x, 0)``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts), rank * x.shape[0]


def _masked_mean(per_token: torch.Tensor, outputs: Outputs, tokens: str) -> torch.Tensor:
    """(B, N) per-token losses -> scalar over hidden tokens (or all)."""
    if outputs.pred_scope == "masked" or tokens == "all" or outputs.mask is None:
        return per_token.mean()
    hidden = outputs.mask.hidden.to(per_token.dtype)
    if per_token.shape != hidden.shape:
        raise ValueError(f"loss over {tuple(per_token.shape)} tokens but the mask is {tuple(hidden.shape)}")
    return (per_token * hidden).sum() / hidden.sum().clamp_min(1)


@attrs.define(kw_only=True)
class _TokenLossConfig(LossConfig):
    pred: str = "pred"
    target: str = "target"
    tokens: str = attrs.field(default="masked", validator=one_of("masked", "all"))


class MaskedMSE(Loss):
    """Mean squared error per token, averaged over hidden tokens (MAE's ``forward_loss``)."""

    @attrs.define(kw_only=True)
    class Config(_TokenLossConfig):
        pre_layernorm: bool = False  # parameter-free LayerNorm on both sides (BootMAE features)

    def forward(self, outputs: Outputs, batch: dict, ctx: Context | None = None) -> torch.Tensor:
        pred, target = outputs.get(self.config.pred), outputs.get(self.config.target)
        if self.config.pre_layernorm:
            pred = F.layer_norm(pred, pred.shape[-1:])
            target = F.layer_norm(target, target.shape[-1:])
        per_token = ((pred.float() - target.float()) ** 2).mean(-1)  # (B, N)
        return _masked_mean(per_token, outputs, self.config.tokens)


class L1(Loss):
    """Mean absolute error per token, averaged over hidden tokens."""

    Config = _TokenLossConfig

    def forward(self, outputs: Outputs, batch: dict, ctx: Context | None = None) -> torch.Tensor:
        pred, target = outputs.get(self.config.pred), outputs.get(self.config.target)
        per_token = (pred.float() - target.float()).abs().mean(-1)
        return _masked_mean(per_token, outputs, self.config.tokens)


class Cosine(Loss):
    """Negative cosine similarity per token: ``1-cos`` (SdAE) or ``2-2cos`` (MILAN)."""

    @attrs.define(kw_only=True)
    class Config(_TokenLossConfig):
        form: str = attrs.field(default="1-cos", validator=one_of("1-cos", "2-2cos"))

    def forward(self, outputs: Outputs, batch: dict, ctx: Context | None = None) -> torch.Tensor:
        pred, target = outputs.get(self.config.pred), outputs.get(self.config.target)
        cos = F.cosine_similarity(pred.float(), target.float(), dim=-1)
        per_token = 1 - cos if self.config.form == "1-cos" else 2 - 2 * cos
        return _masked_mean(per_token, outputs, self.config.tokens)


class CrossEntropy(Loss):
    """Cross-entropy of ``logits`` against ``batch[label]``, logits divided by ``temperature``
    (SupMAE uses 10); also the rotation loss of TTT."""

    @attrs.define(kw_only=True)
    class Config(LossConfig):
        logits: str = "logits"
        label: str = "label"
        temperature: float = 1.0
        label_smoothing: float = 0.0

    def forward(self, outputs: Outputs, batch: dict, ctx: Context | None = None) -> torch.Tensor:
        logits = outputs.get(self.config.logits).float() / self.config.temperature
        labels = batch[self.config.label] if self.config.label in batch else outputs.get(self.config.label)
        return F.cross_entropy(logits, labels, label_smoothing=self.config.label_smoothing)


