"""Frozen language-aligned teachers: per-token features in the image-text space + last-layer
[CLS]->patch attention (head-averaged).

MILAN's teacher is OpenAI CLIP's image encoder (``clip_demo.py``): every output token goes through
``ln_post`` and the joint-space projection ``proj`` (``x = ln_post(x); x = x @ proj``), so the
targets are (B, 1 + N, 512) for ViT-B/16 - the CLIP embedding width, which is why the current
``models_milan.py`` ends in ``nn.Linear(decoder_embed_dim, 512)``. The importance map is the last
block's attention (``nn.MultiheadAttention``, head-averaged) of [CLS] to the patches. Both teachers
here give the same two outputs:

* ``flip_image`` - the image tower of a FLIP run: visible-only ViT on the whole image -> final
  norm -> FLIP's bias-free image projection, per token. ``source``: a run folder or checkpoint;
  ``source: null`` builds the architecture of the ``recipe`` preset with random weights (smoke
  tests only: a warning says so).
* ``hf_clip`` - a Hugging Face CLIP checkpoint folder (``CLIPModel`` or
  ``CLIPVisionModelWithProjection``: ``config.json`` + weights), read offline:
  ``visual_projection(post_layernorm(last_hidden_state))`` per token, as CLIP's ``ln_post @ proj``.
  Inputs are resized to its resolution; a gray input is repeated to 3 channels; when its patch
  grid differs from the student's, features and attention are resized to the student's grid.

Outputs (``ctx.teacher``): ``teacher_tokens`` (B, 1 + N, E), ``teacher_cls_attn`` (B, N).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from mimkit.plugin_api import BuildEnv, ConfigError, Context, cls_attention, component, load


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class FLIPImageTeacher(nn.Module):
    """The frozen image tower (+ projection) of a FLIP model."""

    @attrs.define(kw_only=True)
    class Config:
        source: str | None = None  # a FLIP run folder / checkpoint; null: random weights of `recipe`
        recipe: str = "flip_tiny_fashion_mnist"  # the FLIP preset whose architecture a null source takes
        input_key: str = "image"

    def __init__(self, config: "FLIPImageTeacher.Config", env: BuildEnv, student: nn.Module | None = None):
        super().__init__()
        self.config = config
        if config.source is not None:
            try:
                flip = (env.load or load)(config.source)
            except Exception as exc:
                raise ConfigError(f"model.teacher.source: cannot load the FLIP run {config.source!r}: {exc}") from None
        else:
            warnings.warn(f"model.teacher.source is null: MILAN distils a RANDOMLY initialized {config.recipe} "
                          "image tower (smoke tests only); set model.teacher.source to a FLIP run", stacklevel=2)
            preset = env.registry.get("presets", config.recipe, where="model.teacher.recipe")
            cls, cfg = component("models", preset.get("model", {}), "model.teacher.recipe", env.registry)
            flip = cls(cfg, BuildEnv(registry=env.registry))
        if not (hasattr(flip, "encoder") and hasattr(flip, "img_proj")):
            raise ConfigError(f"model.teacher.source: {config.source!r} is not a FLIP model (no image tower + projection)")
        self.encoder, self.proj = flip.encoder, flip.img_proj
        _freeze(self)
        self.dim: int = self.proj.out_features
        self.grid = self.encoder.grid

    @torch.no_grad()
    def forward(self, batch: dict, ctx: Context | None = None) -> dict[str, torch.Tensor]:
        self.eval()
        enc = self.encoder
        x = enc.embed(batch[self.config.input_key], None)  # (B, 1 + N, D)
        for blk in enc.vit.blocks[:-1]:
            x = blk(x)
        attn = cls_attention(enc.vit.blocks[-1], x, enc.num_prefix_tokens)  # (B, N)
        x = enc.vit.norm(enc.vit.blocks[-1](x))
        return {"teacher_tokens": self.proj(x), "teacher_cls_attn": attn}  # (B, 1 + N, E), (B, N)


class CLIPTeacher(nn.Module):
    """A frozen Hugging Face CLIP image encoder with its projection."""

    @attrs.define(kw_only=True)
    class Config:
        source: str | None = None  # folder with config.json + weights (or a file inside it); null: random
        vision: dict[str, Any] = attrs.field(factory=lambda: {  # CLIPVisionConfig when source is null (ViT-B/16)
            "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
            "patch_size": 16, "image_size": 224, "projection_dim": 512})
        mean: tuple[float, float, float] | None = None  # re-normalize inputs for CLIP (given the data's mean/std)
        std: tuple[float, float, float] | None = None
        input_key: str = "image"

    def __init__(self, config: "CLIPTeacher.Config", env: BuildEnv, student: nn.Module | None = None):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.config = config
        if config.source is not None:
            folder = Path(config.source)
            folder = folder.parent if folder.is_file() else folder
            if not (folder / "config.json").is_file():
                raise ConfigError(f"model.teacher.source: {config.source!r} holds no Hugging Face CLIP checkpoint "
                                  "(config.json + model.safetensors / pytorch_model.bin)")
            self.clip = self._load(folder)
        else:
            warnings.warn("model.teacher.source is null: a RANDOMLY initialized CLIP teacher (smoke tests only); "
                          "set model.teacher.source to a CLIP checkpoint folder", stacklevel=2)
            try:
                cfg = CLIPVisionConfig(**config.vision)
            except TypeError as exc:
                raise ConfigError(f"model.teacher.vision: {exc}") from None
            cfg._attn_implementation = "eager"
            self.clip = CLIPVisionModelWithProjection(cfg)
        _freeze(self)
        c = self.clip.config
        self.dim: int = c.projection_dim
        self.size: int = c.image_size
        self.teacher_grid = (c.image_size // c.patch_size,) * 2
        enc = env.encoder
        self.grid = tuple(enc.grid[1:]) if enc is not None else self.teacher_grid

    @staticmethod
    def _load(folder: Path) -> nn.Module:
        """The vision half of a CLIP checkpoint folder; every vision weight must load (no silent re-init)."""
        import json

        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        raw = json.loads((folder / "config.json").read_text())
        if raw.get("model_type") == "clip":  # a whole CLIPModel: the projection width lives at the top level
            cfg = CLIPVisionConfig(**{**raw.get("vision_config", {}), "projection_dim": raw.get("projection_dim", 512)})
        else:
            cfg = CLIPVisionConfig.from_pretrained(str(folder), local_files_only=True)
        try:
            model, info = CLIPVisionModelWithProjection.from_pretrained(
                str(folder), config=cfg, local_files_only=True, attn_implementation="eager", output_loading_info=True)
        except Exception as exc:
            raise ConfigError(f"model.teacher.source: cannot load CLIP from {folder}: {exc}") from None
        bad = list(info.get("missing_keys", [])) + [str(m) for m in info.get("mismatched_keys", [])]
        if bad:
            raise ConfigError(f"model.teacher.source: {folder} does not hold every CLIP vision weight: {bad[:4]}")
        return model

    def _to_student_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h' w', C) on the teacher grid -> (B, h w, C) on the student's (bilinear)."""
        if tuple(self.grid) == tuple(self.teacher_grid):
            return tokens
        b, _, ch = tokens.shape
        th, tw = self.teacher_grid
        maps = tokens.transpose(1, 2).reshape(b, ch, th, tw)
        maps = F.interpolate(maps, size=tuple(self.grid), mode="bilinear", align_corners=False)
        return maps.reshape(b, ch, -1).transpose(1, 2)

    @torch.no_grad()
    def forward(self, batch: dict, ctx: Context | None = None) -> dict[str, torch.Tensor]:
        self.eval()
        x = batch[self.config.input_key]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.config.mean is not None and self.config.std is not None:  # data normalization -> CLIP's
            clip_mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=x.device).view(1, 3, 1, 1)
            clip_std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=x.device).view(1, 3, 1, 1)
            m = torch.tensor(self.config.mean, device=x.device).view(1, 3, 1, 1)
            s = torch.tensor(self.config.std, device=x.device).view(1, 3, 1, 1)
            x = (x * s + m - clip_mean) / clip_std
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)
        out = self.clip.vision_model(pixel_values=x, output_attentions=True)
        tokens = self.clip.visual_projection(self.clip.vision_model.post_layernorm(out.last_hidden_state))  # (B, 1+N', E)
        attn = out.attentions[-1][:, :, 0, 1:].mean(1)  # (B, N'): [CLS] -> patches, head-averaged
        patches = self._to_student_grid(tokens[:, 1:])
        attn = self._to_student_grid(attn.unsqueeze(-1)).squeeze(-1)
        attn = attn / attn.sum(-1, keepdim=True)
        return {"teacher_tokens": torch.cat([tokens[:, :1], patches], dim=1), "teacher_cls_attn": attn}
