"""Teachers: gradient-free encoders whose outputs feed maskers, targets and losses.

``ema``: an exponential moving average of parts of the student (the encoder by default),
updated after the optimizer step or the epoch, with a constant, cosine or piecewise-linear
momentum schedule. ``frozen``: an encoder loaded from a mimkit checkpoint or export.
Both are submodules of the model, so they are saved in every checkpoint and resume exactly.
Outputs (in ``ctx.teacher``): ``teacher_latent`` (B, prefix + N, D) on the teacher's input,
``teacher_cls_attn`` (B, N): last-layer [CLS]->patch attention averaged over heads.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import attrs
import torch
from torch import nn

from ..schema import one_of
from ..errors import ConfigError
from ..types import Context
from . import BuildEnv


def cls_attention(block: nn.Module, x: torch.Tensor, num_prefix: int = 1) -> torch.Tensor:
    """Head-averaged attention of token 0 to the patch tokens in one timm ViT block.

    x: (B, T, D) the block's input -> (B, T - num_prefix).
    """
    attn = block.attn
    b, t, d = x.shape
    h = block.norm1(x)
    qkv = attn.qkv(h).reshape(b, t, 3, attn.num_heads, d // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]  # (B, H, T, hd)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scores = (q[:, :, :1] @ k.transpose(-2, -1)) * attn.scale  # (B, H, 1, T)
    return scores.softmax(-1)[:, :, 0, num_prefix:].mean(1)  # (B, N)


def encoder_outputs(encoder: nn.Module, x: torch.Tensor, want_attention: bool = True,
                    final_norm: bool = True) -> dict[str, torch.Tensor]:
    """Run a ViT encoder on whole inputs; return its latent (after the final norm unless
    ``final_norm`` is off, as CMAE's momentum encoder) and last-layer CLS attention."""
    tokens = encoder.embed(x, None)
    blocks = encoder.vit.blocks
    for blk in blocks[:-1]:
        tokens = blk(tokens)
    out: dict[str, torch.Tensor] = {}
    if want_attention and encoder.num_prefix_tokens:
        out["teacher_cls_attn"] = cls_attention(blocks[-1], tokens, encoder.num_prefix_tokens)
    last = blocks[-1](tokens)
    out["teacher_latent"] = encoder.vit.norm(last) if final_norm else last
    return out


def _momentum_points(_inst: Any, _attr: attrs.Attribute, value: list | None) -> None:
    if value is not None and (len(value) < 2 or any(len(p) != 2 for p in value)):
        raise ValueError("points must be a list of at least two [epoch, momentum] pairs")


class EMATeacher(nn.Module):
    """An EMA copy of student submodules (``copy``: dotted paths, the encoder by default)."""

    @attrs.define(kw_only=True)
    class Config:
        copy: list[str] = attrs.field(factory=lambda: ["encoder"])
        momentum: float = 0.996
        momentum_end: float = 1.0
        schedule: str = attrs.field(default="cosine", validator=one_of("constant", "cosine", "piecewise"))
        points: list[list[float]] | None = attrs.field(default=None, validator=_momentum_points)  # piecewise: [epoch, m]
        every: str = attrs.field(default="step", validator=one_of("step", "epoch"))
        input_key: str = "image"
        attention: bool = True
        final_norm: bool = True

    def __init__(self, config: "EMATeacher.Config", env: BuildEnv, student: nn.Module):
        super().__init__()
        self.config = config
        if config.schedule == "piecewise" and not config.points:
            raise ConfigError("model.teacher.points: the piecewise schedule needs [[epoch, momentum], ...]")
        self.paths = list(config.copy)
        self.copies = nn.ModuleDict()
        for path in self.paths:
            try:
                module = student.get_submodule(path)
            except AttributeError:
                raise ConfigError(f"model.teacher.copy: the student has no submodule {path!r}") from None
            clone = copy.deepcopy(module)
            for p in clone.parameters():
                p.requires_grad_(False)
            self.copies[path.replace(".", "__")] = clone
        self.total_steps, self.steps_per_epoch, self.total_epochs = 1, 1, 1.0
        self.register_buffer("last_momentum", torch.tensor(float(config.momentum)))

    def set_schedule(self, total_steps: int, steps_per_epoch: int) -> None:
        self.total_steps, self.steps_per_epoch = max(1, total_steps), max(1, steps_per_epoch)
        self.total_epochs = self.total_steps / self.steps_per_epoch

    @property
    def encoder(self) -> nn.Module:
        return self.copies[self.paths[0].replace(".", "__")]

    def momentum_at(self, step: int) -> float:
        """m(step): constant; cosine m_end - (m_end - m0)(cos(pi k / K) + 1) / 2; or
        piecewise-linear in epochs. With ``every: epoch``, k counts epochs."""
        c = self.config
        if c.schedule == "constant":
            return c.momentum
        if c.schedule == "piecewise":
            e = step / self.steps_per_epoch if c.every == "step" else float(step)
            pts = sorted((float(a), float(b)) for a, b in c.points)  # type: ignore[union-attr]
            if e <= pts[0][0]:
                return pts[0][1]
            for (e0, m0), (e1, m1) in zip(pts, pts[1:]):
                if e <= e1:
                    return m0 + (m1 - m0) * (e - e0) / (e1 - e0)
            return pts[-1][1]
        k, big_k = (step, self.total_steps) if c.every == "step" else (step, max(1.0, self.total_epochs))
        return c.momentum_end - (c.momentum_end - c.momentum) * (math.cos(math.pi * min(k, big_k) / big_k) + 1) / 2

    @torch.no_grad()
    def update(self, student: nn.Module, m: float) -> None:
        """teacher = m * teacher + (1 - m) * student, parameters; buffers are copied."""
        for path in self.paths:
            t, s = self.copies[path.replace(".", "__")], student.get_submodule(path)
            t_params = [p for p in t.parameters()]
            s_params = [p.detach() for p in s.parameters()]
            torch._foreach_mul_(t_params, m)
            torch._foreach_add_(t_params, s_params, alpha=1 - m)
            for tb, sb in zip(t.buffers(), s.buffers()):
                tb.copy_(sb)
        self.last_momentum.fill_(m)

    def on_step_end(self, student: nn.Module, step: int) -> None:
        if self.config.every == "step":
            self.update(student, self.momentum_at(step - 1))

    def on_epoch_end(self, student: nn.Module, epoch: int) -> None:
        if self.config.every == "epoch":
            self.update(student, self.momentum_at(epoch - 1))

    @torch.no_grad()
    def forward(self, batch: dict, ctx: Context | None = None) -> dict[str, torch.Tensor]:
        self.encoder.eval()
        return encoder_outputs(self.encoder, batch[self.config.input_key], self.config.attention,
                               self.config.final_norm)


class FrozenTeacher(nn.Module):
    """The encoder of a pretrained mimkit model (run folder, checkpoint or export), frozen."""

    @attrs.define(kw_only=True)
    class Config:
        path: str
        input_key: str = "image"
        attention: bool = True
        final_norm: bool = True

    def __init__(self, config: "FrozenTeacher.Config", env: BuildEnv, student: nn.Module | None = None):
        super().__init__()
        self.config = config
        if env.load is None:
            raise ConfigError("model.teacher: the frozen teacher needs a loader (build it with mimkit.build or "
                              "BuildEnv(load=mimkit.load))")
        try:
            self.encoder = env.load(config.path).encoder
        except Exception as exc:
            raise ConfigError(f"model.teacher.path: cannot load {config.path!r}: {exc}") from None
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def forward(self, batch: dict, ctx: Context | None = None) -> dict[str, torch.Tensor]:
        self.encoder.eval()
        return encoder_outputs(self.encoder, batch[self.config.input_key], self.config.attention,
                               self.config.final_norm)
