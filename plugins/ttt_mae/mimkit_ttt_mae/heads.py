"""Main-task heads on a frozen MAE encoder (``models_mae_shared.py``).

* ``vit`` ("ViT probing", ``forward_vit_head``): a small ViT reads the encoder's *whole* token
  sequence (B, 1 + N, D): linear to the head width, + fixed 2D sin-cos positions, blocks,
  LayerNorm, then a linear classifier on the [CLS] output.
* ``linear`` (``forward_head``): BatchNorm1d(affine=False, eps=1e-6) + linear on the [CLS] token
  (the core's MAE linear-probe head).
Both train on the frozen encoder; at test time they get no gradient (there is no label).
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from mimkit.plugin_api import LinearProbe, cosine_lr, init_xavier_, sincos_2d


class ViTHead(nn.Module):
    """``classifier_embed`` -> + sin-cos positions -> ``depth`` blocks -> norm -> pred([CLS])."""

    def __init__(self, in_dim: int, grid: tuple[int, int], num_classes: int, dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0):
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.pos_embed = nn.Parameter(sincos_2d(dim, grid[0], grid[1], cls_token=True).unsqueeze(0),
                                      requires_grad=False)  # (1, 1 + N, dim), fixed
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias=True,
                                          norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, num_classes)
        init_xavier_(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, 1 + N, D) -> (B, classes)
        x = self.embed(tokens) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x)[:, 0])


class LinearHead(nn.Module):
    """MAE's BN + linear head on the [CLS] token of the token sequence."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.probe = LinearProbe(in_dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, 1 + N, D) -> (B, classes)
        return self.probe(tokens[:, 0])


def build_head(kind: str, encoder: nn.Module, num_classes: int, dim: int, depth: int, heads: int) -> nn.Module:
    if kind == "vit":
        _, gh, gw = encoder.grid
        return ViTHead(encoder.embed_dim, (gh, gw), num_classes, dim, depth, heads)
    return LinearHead(encoder.embed_dim, num_classes)


@torch.no_grad()
def encoder_tokens(encoder: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Frozen whole-image tokens (N, 1 + L, D) of the un-masked images (mask ratio 0)."""
    encoder.eval()
    return torch.cat([encoder.forward_features(images[i : i + batch]) for i in range(0, len(images), batch)])


def train_head(head: nn.Module, tokens: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int,
               blr: float, weight_decay: float, warmup_epochs: float, seed: int) -> dict[str, Any]:
    """Fit a head on cached frozen tokens: AdamW (ViT head; ``main_prob.py`` trains with blr 1e-3,
    wd 0.2) or SGD momentum 0.9 (linear head, MAE's probe), lr = blr * batch / 256, warmup +
    cosine per step. Returns the final training accuracy."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = len(tokens)
    batch_size = max(2, min(batch_size, n))
    lr = blr * batch_size / 256
    if isinstance(head, LinearHead):
        opt: torch.optim.Optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, n // batch_size)
    total, warmup = epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch)
    head.train()
    step, correct, seen = 0, 0, 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, lr, warmup, total)
            logits = head(tokens[idx])
            loss = nn.functional.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if epoch == epochs - 1:
                correct += int((logits.argmax(1) == labels[idx]).sum())
                seen += len(idx)
    head.eval()
    return {"train_top1": correct / max(1, seen), "steps": step, "lr": lr}
