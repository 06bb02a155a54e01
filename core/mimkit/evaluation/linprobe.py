"""MAE's linear probe (He et al. 2022, facebookresearch/mae ``main_linprobe.py``): frozen encoder,
``BatchNorm1d(affine=False, eps=1e-6)`` then a linear layer, SGD (or LARS) with linear warmup +
cosine. The features carry no augmentation, so they are extracted once and the probe trains on
the cached tensors (fast on the CPU)."""
from __future__ import annotations

import os
import time
from typing import Any

import attrs
import torch
from torch import nn

from ..errors import ConfigError
from ..schedules import warmup_cosine as cosine_lr
from ..schema import one_of, positive
from .common import CommonConfig, common_record, features_for, finish, protocol_config, record_name, topk_accuracy


class LinearProbe(nn.Module):
    """MAE's probe head: ``BatchNorm1d(affine=False, eps=1e-6)`` then a linear classifier
    (weights N(0, 0.01) truncated, zero bias). The parameter-free BN whitens the features,
    which matters for MAE whose features are not linearly-normalized."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
        return self.fc(self.bn(x))


class LARS(torch.optim.Optimizer):
    """LARS (You et al.) as in MAE's linear probe: SGD with momentum whose update for every
    parameter with more than one dimension is scaled by ``trust * ||w|| / ||g + wd w||``;
    biases and norms take plain SGD steps without weight decay."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    pn, un = torch.norm(p), torch.norm(dp)
                    q = torch.where(pn > 0.0, torch.where(un > 0, g["trust_coefficient"] * pn / un, 1.0), 1.0)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def train_linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    epochs: int = 90,
    batch_size: int = 256,
    blr: float = 0.1,
    weight_decay: float = 0.0,
    warmup_epochs: float = 10,
    optimizer: str = "sgd",
    seed: int = 0,
) -> LinearProbe:
    """Fit :class:`LinearProbe` on cached features: (N, D), (N,) -> the trained probe (eval
    mode). lr = blr * batch / 256 (MAE's scaling rule), per-step warmup + cosine."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n, d = train_feats.shape
    batch_size = max(2, min(batch_size, n))  # BatchNorm needs > 1 sample per batch
    probe = LinearProbe(d, num_classes)
    lr = blr * batch_size / 256
    if optimizer == "lars":
        opt: torch.optim.Optimizer = LARS(probe.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        raise ConfigError(f"linear probe optimizer must be 'sgd' or 'lars', got {optimizer!r}")
    steps_per_epoch = max(1, n // batch_size)
    total, warmup = epochs * steps_per_epoch, int(round(warmup_epochs * steps_per_epoch))
    loss_fn = nn.CrossEntropyLoss()
    probe.train()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, lr, warmup, total)
            loss = loss_fn(probe(train_feats[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return probe.eval()


def linprobe(source: str | os.PathLike, *, out: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """MAE linear-probe accuracy (features extracted once, without augmentation); returns (and
    writes to ``out``) the record. ``options`` are the fields of :class:`LinProbe.Config`
    (``pool``, ``n_last_blocks``, ``epochs``, ``batch_size``, ``blr``, ... and the common ones),
    with its defaults: the same as ``mim eval linprobe --help`` lists."""
    return LinProbe(protocol_config(LinProbe, options, "linprobe"))([source], out=out)


class LinProbe:
    """MAE's linear probe on frozen features (BatchNorm without affine + linear, SGD or LARS).
    Reads ``model.eval_encoder`` when the model defines one (iBOT/AttMask: the teacher);
    ``n_last_blocks`` K > 1 concatenates the final-normed [CLS] (or ``pool: mean``, the mean
    patch token) of the last K blocks (DINO/iBOT's ``--n_last_blocks``, 4 for ViT-S)."""

    @attrs.define(kw_only=True)
    class Config(CommonConfig):
        pool: str = attrs.field(default="cls", validator=one_of("cls", "mean"))
        n_last_blocks: int = attrs.field(default=1, validator=positive)  # concatenate the last K blocks' pooled outputs
        epochs: int = 90
        batch_size: int = 256
        blr: float = 0.1  # lr = blr * batch / 256
        weight_decay: float = 0.0
        warmup_epochs: float = 10.0
        optimizer: str = attrs.field(default="sgd", validator=one_of("sgd", "lars"))

    def __init__(self, config: "LinProbe.Config"):
        self.config = config

    def record_name(self) -> str:
        return record_name("linprobe", self.config)

    def __call__(self, sources: list[str], out: str | os.PathLike | None = None) -> dict[str, Any]:
        c, source = self.config, sources[0]
        t0 = time.perf_counter()
        model, acc, split, n_cls, (tr_f, tr_y, te_f, te_y) = features_for(
            source, c, c.pool, c.batch_size, c.n_last_blocks)
        probe = train_linear_probe(tr_f, tr_y, n_cls, epochs=c.epochs, batch_size=c.batch_size, blr=c.blr,
                                   weight_decay=c.weight_decay, warmup_epochs=min(c.warmup_epochs, c.epochs),
                                   optimizer=c.optimizer, seed=c.seed)
        with torch.no_grad():
            scores = probe(te_f)
            train_top1 = topk_accuracy(probe(tr_f), tr_y, (1,))["top1"]
        record = common_record("linprobe", source, c.init, c.seed, model, split, len(te_y))
        record.update({"pool": c.pool, "n_last_blocks": c.n_last_blocks, "feature_dim": int(tr_f.shape[1]),
                       "epochs": c.epochs, "batch_size": c.batch_size, "blr": c.blr, "optimizer": c.optimizer,
                       "weight_decay": c.weight_decay, "train_top1": train_top1, **topk_accuracy(scores, te_y),
                       "seconds": round(time.perf_counter() - t0, 2)})
        record["summary"] = f"linprobe: top-1 {record['top1']:.4f}  top-5 {record['top5']:.4f}"
        return finish(record, out, acc)
