"""SupMAE's supervised branch (models_supmae.py: ``forward_classification``, ``cls_head``).

    latent (B, 1 + N_keep, D)  -- the MAE encoder's output on the VISIBLE tokens only
      -> global average of the visible patch tokens (or the [CLS] token)          (B, D)
      -> Linear(D, 4D) -> BatchNorm1d -> ReLU -> Linear(4D, classes)              (B, classes)
      -> cross-entropy(logits / temperature, label)                               temperature 10
The term enters the total with weight 0.01 (``cls_loss_ratio``); MAE's reconstruction stays 1.
The head's Linear layers are initialized as the rest of the official model (``_init_weights``
applied to the whole module): xavier-uniform weights, zero biases; BatchNorm keeps its defaults.
"""
from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mimkit.plugin_api import BuildEnv, Context, init_xavier_, Loss, LossConfig, one_of, Outputs


class VisibleTokenClassification(Loss):
    """Cross-entropy of an MLP-BN head on pooled visible tokens; owns the head's parameters."""

    @attrs.define(kw_only=True)
    class Config(LossConfig):
        weight: float = 0.01
        num_classes: int = 1000
        hidden_ratio: float = 4.0  # 768 -> 3072 for ViT-B
        pool: str = attrs.field(default="mean", validator=one_of("mean", "cls"))  # --global_pool is the default
        temperature: float = 10.0
        latent: str = "latent"
        label: str = "label"

    def __init__(self, config: "VisibleTokenClassification.Config", env: BuildEnv):
        super().__init__(config, env)
        d = env.encoder.embed_dim
        hidden = int(d * config.hidden_ratio)
        self.num_prefix = env.encoder.num_prefix_tokens
        self.head = nn.Sequential(nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, config.num_classes))
        init_xavier_(self.head)  # official: self.apply(self._init_weights) covers cls_head

    def logits(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, P + N_keep, D) -> (B, classes), from visible tokens only."""
        if self.config.pool == "cls" and self.num_prefix:
            feat = latent[:, 0]
        else:
            feat = latent[:, self.num_prefix :].mean(1)  # average of the visible patch tokens
        return self.head(feat)

    def forward(self, outputs: Outputs, batch: dict, ctx: Context | None = None) -> torch.Tensor:
        logits = self.logits(outputs.get(self.config.latent))
        outputs.extra["logits"] = logits
        return F.cross_entropy(logits.float() / self.config.temperature, batch[self.config.label])
