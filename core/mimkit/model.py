"""The base of every model the trainer runs (:class:`MethodModel`); the composed masked model
built on it is the built-in component :class:`mimkit.components.masked.MaskedModel`."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class MethodModel(nn.Module):
    """Base of every model the trainer runs: the teacher's lifecycle and frozen features.

    Subclasses set ``self.encoder`` and, when they have one, ``self.teacher``; the trainer
    calls ``set_schedule`` before the first step, ``on_step_end`` after each optimizer step
    and ``on_epoch_end`` after each epoch (EMA updates, momentum schedules).
    """

    def _teacher_hook(self, name: str) -> Any:
        teacher = getattr(self, "teacher", None)  # a submodule, so not a class attribute
        return getattr(teacher, name, None)

    def set_schedule(self, total_steps: int, steps_per_epoch: int) -> None:
        if (hook := self._teacher_hook("set_schedule")) is not None:
            hook(total_steps, steps_per_epoch)

    def on_step_end(self, step: int) -> None:
        if (hook := self._teacher_hook("on_step_end")) is not None:
            hook(self, step)

    def on_epoch_end(self, epoch: int) -> None:
        if (hook := self._teacher_hook("on_epoch_end")) is not None:
            hook(self, epoch)

    @torch.no_grad()
    def features(self, x: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """Frozen features of whole inputs for evaluation: (B, D)."""
        return self.encoder.pool(self.encoder.forward_features(x), pool)
