"""The base of every model the trainer runs (:class:`MethodModel`); the composed masked model
built on it is the built-in component :class:`mimkit.components.masked.MaskedModel`."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .types import Context, Mask


def step_noise(masker: nn.Module, batch: dict, ctx: Context | None, noise: torch.Tensor | None,
               batch_size: int, device: torch.device | str) -> torch.Tensor:
    """The masker's randomness for one step, (B, M) on ``device``: ``noise`` when the caller
    passes it, else the loader's ``batch["mask_noise"]`` (drawn per sample from (seed, epoch,
    index), so masks resume exactly), else ``masker.draw`` from ``ctx.generator`` (Python API)."""
    if noise is None:
        noise = batch.get("mask_noise")
    if noise is None:
        noise = masker.draw(batch_size, ctx.generator if ctx is not None else None, device)
    return noise.to(device)


class MethodModel(nn.Module):
    """Base of every model the trainer runs: the teacher's lifecycle and frozen features.

    Subclasses set ``self.encoder`` and, when they have one, ``self.teacher``; the trainer
    calls ``set_schedule`` before the first step, ``on_step_end`` after each optimizer step
    and ``on_epoch_end`` after each epoch (EMA updates, momentum schedules). A subclass with
    ``self.masker`` and ``self.input_key`` gets :meth:`make_mask`.
    """

    def make_mask(self, batch: dict, ctx: Context, noise: torch.Tensor | None = None) -> Mask:
        """The mask of ``batch[self.input_key]`` for this step, from :func:`step_noise`."""
        x = batch[self.input_key]
        return self.masker(batch, step_noise(self.masker, batch, ctx, noise, x.shape[0], x.device), ctx)

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
