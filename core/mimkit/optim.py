"""The optimizer of a pretraining run: parameter groups (which weights decay) and AdamW/SGD.

Kept apart from the loop: the benchmarks and the fidelity tests build the same groups and
optimizer without training.
"""
from __future__ import annotations

import torch

from .config import OptimConfig
from .errors import ConfigError


def param_groups(model: torch.nn.Module, weight_decay: float, decay_tokens: bool = True) -> list[dict]:
    """Two groups: decayed weights, and 1-D params and biases without decay (the official MAE
    rule). With ``decay_tokens=False`` cls/mask tokens and position tables are exempt too."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        token = any(t in name.split(".")[-1] for t in ("cls_token", "mask_token", "pos_embed", "dist_token"))
        if p.ndim <= 1 or name.endswith(".bias") or (token and not decay_tokens):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "apply_wd": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_wd": False},
    ]


def model_param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    """The optimizer groups: ``model.param_groups(weight_decay)`` when the model defines it (a
    method's own weight-decay exemptions, e.g. CMAE's by name), else :func:`param_groups`.
    A group without ``apply_wd`` follows the weight-decay schedule when its decay is non-zero;
    every trainable parameter must be in exactly one group."""
    own = getattr(model, "param_groups", None)
    if not callable(own):
        return param_groups(model, cfg.weight_decay, cfg.decay_tokens)
    groups = [dict(g) for g in own(cfg.weight_decay)]
    seen: dict[int, int] = {}
    for g in groups:
        g["params"] = list(g["params"])
        g.setdefault("weight_decay", cfg.weight_decay)
        g.setdefault("apply_wd", g["weight_decay"] > 0)
        for p in g["params"]:
            seen[id(p)] = seen.get(id(p), 0) + 1
    names = {id(p): n for n, p in model.named_parameters()}
    twice = [names.get(i, "?") for i, c in seen.items() if c > 1]
    left = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if twice or left:
        raise ConfigError(f"{type(model).__name__}.param_groups: every trainable parameter must be in exactly one "
                          f"group; in several: {twice[:5]}, in none: {left[:5]}")
    return groups


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW or SGD over :func:`model_param_groups`, fused where every parameter's device has the kernel."""
    groups = model_param_groups(model, cfg)
    # One fused kernel per step (about 10% of a bf16 ViT-B step on the CPU, benchmarks/README.md)
    # when every parameter lives on a device that has it; ``auto`` falls back to foreach.
    devices = {p.device.type for g in groups for p in g["params"]}
    fused_ok = devices <= {"cpu", "cuda"}
    impl = cfg.impl if cfg.impl != "auto" else ("fused" if fused_ok else "foreach")
    kwargs = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), **kwargs)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, **kwargs)

