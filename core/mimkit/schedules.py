"""Schedules as pure functions of the optimizer step: linear warmup + half-cycle cosine for the
learning rate (pretraining, linear probe, fine-tuning) and a cosine weight decay.

Per step, as the official MAE code adjusts per iteration (``util/lr_sched.py``). Two cosines
(``optim.schedule``):

* ``cosine`` (MAE, VideoMAE, iBOT, ...): the cosine starts after the warm-up,
  lr = min + (peak - min) * (1 + cos(pi * (t - W) / (T - W))) / 2;
* ``timm_cosine`` (MFM, SimMIM and the Swin-code family): timm's ``CosineLRScheduler(t_initial=T,
  warmup_t=W, warmup_prefix=False, t_in_epochs=False)`` - the warm-up steps are counted inside
  the cosine, lr = min + (peak - min) * (1 + cos(pi * t / T)) / 2 from t = W on (a lr a few %
  lower right after the warm-up than ``cosine``).
"""
from __future__ import annotations

import math
from typing import Any


def cosine(progress: float, start: float, end: float) -> float:
    """Half a cosine from ``start`` (progress 0) to ``end`` (progress >= 1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine(step: int, peak: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0,
                  start: float = 0.0) -> float:
    """Linear warmup from ``start`` to ``peak`` over ``warmup_steps``, then cosine to ``min_lr``
    at ``total_steps``."""
    if step < warmup_steps:
        return start + (peak - start) * step / max(1, warmup_steps)
    return cosine((step - warmup_steps) / max(1, total_steps - warmup_steps), peak, min_lr)


def timm_cosine(step: int, peak: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0,
                start: float = 0.0) -> float:
    """timm's ``CosineLRScheduler`` with ``warmup_prefix=False`` (one cycle, per step): linear
    warmup from ``start`` to ``peak`` over ``warmup_steps``, then the cosine phase of step
    ``t`` over the whole run, ``t / total_steps`` (the warm-up counted inside), ``min_lr`` from
    ``total_steps`` on."""
    if step < warmup_steps:
        return start + step * (peak - start) / warmup_steps
    return cosine(step / max(1, total_steps), peak, min_lr)


SCHEDULES = {"cosine": warmup_cosine, "timm_cosine": timm_cosine}


def lr_at(step: int, peak: float, cfg: Any, warmup_steps: int, total_steps: int) -> float:
    """The pretraining lr of an :class:`~mimkit.config.OptimConfig`: warmup from
    ``warmup_start_lr``, then the cosine ``cfg.schedule`` names down to ``min_lr``. With
    ``cfg.scale_min_lr`` (and the peak from ``base_lr``) those two scale with the peak,
    by effective batch / ``ref_batch``."""
    fn = SCHEDULES[getattr(cfg, "schedule", "cosine")]
    scale = 1.0
    if getattr(cfg, "scale_min_lr", False) and cfg.lr is None and cfg.base_lr > 0:
        scale = peak / cfg.base_lr  # = effective batch / ref_batch
    return fn(step, peak, warmup_steps, total_steps, cfg.min_lr * scale, cfg.warmup_start_lr * scale)


def wd_at(step: int, cfg: Any, total_steps: int) -> float:
    """Constant weight decay, or a cosine from ``weight_decay`` to ``weight_decay_end``."""
    if cfg.weight_decay_end is None:
        return cfg.weight_decay
    return cosine(step / max(1, total_steps), cfg.weight_decay, cfg.weight_decay_end)
