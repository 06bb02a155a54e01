"""The ``vit`` encoder: a timm VisionTransformer with MAE's split of embed and encode.

Weights keep timm's key names (under ``vit.``), so an encoder exports to timm unchanged.
Modes: ``visible_only`` (MAE: only kept patches are embedded and encoded),
``with_mask_token`` (SimMIM/MaskFeat/BEiT: all tokens, hidden ones replaced by a learned
token), ``full`` (MFM: the whole, possibly corrupted, input; the mask is ignored).
"""
from __future__ import annotations

from functools import partial

import attrs
import timm
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..schema import one_of
from ..errors import ConfigError
from ..geometry import gather_tokens, sincos_2d
from ..types import Mask
from . import BuildEnv, init_xavier_


def _pair(v: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ViTEncoder(nn.Module):
    """A timm ViT that embeds and encodes only what the mask lets it see."""

    @attrs.define(kw_only=True)
    class Config:
        model: str = "vit_base_patch16_224"  # any timm ViT name
        img_size: int | list[int] | None = attrs.field(default=None, metadata={"follows": "img_size"})  # default: the data's
        patch_size: int | None = None
        in_chans: int | None = attrs.field(default=None, metadata={"follows": "channels"})  # default: the data's
        embed_dim: int | None = None
        depth: int | None = None
        num_heads: int | None = None
        mlp_ratio: float | None = None
        norm_eps: float | None = None  # LayerNorm eps (default: timm's 1e-6; Hugging Face's ports use 1e-12)
        pos_embed: str = attrs.field(default="sincos", validator=one_of("sincos", "learned"))
        mode: str = attrs.field(default="visible_only", validator=one_of("visible_only", "with_mask_token", "full"))
        drop_path: float = 0.0
        init: str = attrs.field(default="mae", validator=one_of("mae", "timm"))
        grad_checkpointing: bool = False

    def __init__(self, config: "ViTEncoder.Config", env: BuildEnv | None = None):
        super().__init__()
        self.config = config
        kwargs = {k: getattr(config, k) for k in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if config.img_size is not None:
            kwargs["img_size"] = _pair(config.img_size)
        if config.norm_eps is not None:
            kwargs["norm_layer"] = partial(nn.LayerNorm, eps=config.norm_eps)
        try:
            self.vit = timm.create_model(
                config.model, pretrained=False, num_classes=0, drop_path_rate=config.drop_path, **kwargs
            )
        except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"model.encoder: timm cannot build {config.model!r} with {kwargs}: {exc}") from None
        vit = self.vit
        if not hasattr(vit, "blocks") or not hasattr(vit, "patch_embed"):
            raise ConfigError(f"model.encoder.model: {config.model!r} is not a timm VisionTransformer")
        if vit.pos_embed is None:
            raise ConfigError(f"model.encoder.model: {config.model!r} has no absolute position embedding")
        if getattr(vit, "no_embed_class", False) or getattr(vit, "reg_token", None) is not None:
            raise ConfigError(f"model.encoder.model: {config.model!r} uses register tokens or no_embed_class, not supported")
        self.embed_dim: int = vit.embed_dim
        self.num_prefix_tokens: int = vit.num_prefix_tokens
        gh, gw = vit.patch_embed.grid_size
        ph, pw = vit.patch_embed.patch_size
        ih, iw = vit.patch_embed.img_size
        if ih % ph or iw % pw:
            raise ConfigError(f"model.encoder.img_size {(ih, iw)} (it follows data.img_size) is not divisible by the "
                              f"patch size {(ph, pw)}: choose a data.img_size that is a multiple of {ph}")
        self.grid: tuple[int, int, int] = (1, gh, gw)
        self.patch: tuple[int, int, int] = (1, ph, pw)
        self.in_chans: int = vit.patch_embed.proj.in_channels
        self.img_size: tuple[int, int] = (gh * ph, gw * pw)
        self.num_patches: int = gh * gw
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim)) if config.mode == "with_mask_token" else None
        if config.pos_embed == "sincos":
            table = sincos_2d(self.embed_dim, gh, gw, cls_token=self.num_prefix_tokens == 1)
            if self.num_prefix_tokens > 1:
                raise ConfigError("model.encoder: sin-cos positions support at most one prefix token")
            vit.pos_embed.data.copy_(table.unsqueeze(0))
            vit.pos_embed.requires_grad_(False)  # fixed, as in MAE
        if config.init == "mae":
            self._init_mae()
        vit.set_grad_checkpointing(config.grad_checkpointing)

    def _init_mae(self) -> None:
        """MAE's initialization: xavier-uniform linears and patch projection, N(0, .02) tokens."""
        w = self.vit.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
        if self.vit.cls_token is not None:
            nn.init.normal_(self.vit.cls_token, std=0.02)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        init_xavier_(self.vit)

    # -- embed: patches -> tokens -------------------------------------------------------------

    def _patch_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, C*ph*pw) in the conv weight's (c, i, j) order."""
        b, c, h, w = x.shape
        _, ph, pw = self.patch
        x = x.reshape(b, c, h // ph, ph, w // pw, pw).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // ph) * (w // pw), c * ph * pw)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"vit encoder expects (B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}) input, "
                f"got {tuple(x.shape)}"
            )

    def _prefix(self, b: int) -> torch.Tensor | None:
        if self.vit.cls_token is None:
            return None
        return (self.vit.cls_token + self.vit.pos_embed[:, :1]).expand(b, -1, -1)

    def embed(self, x: torch.Tensor, mask: Mask | None = None) -> torch.Tensor:
        """Patch-embed + positions. Visible-only: only the kept patches are projected."""
        self._check_input(x)
        b = x.shape[0]
        pos = self.vit.pos_embed[:, self.num_prefix_tokens :]  # (1, N, D)
        if self.config.mode == "visible_only" and mask is not None:
            proj = self.vit.patch_embed.proj
            patches = gather_tokens(self._patch_vectors(x), mask.ids_keep)  # (B, K, C*p*p)
            tokens = patches @ proj.weight.reshape(self.embed_dim, -1).t()  # (B, K, D)
            if proj.bias is not None:
                tokens = tokens + proj.bias
            tokens = tokens + gather_tokens(pos.expand(b, -1, -1), mask.ids_keep)
        else:
            tokens = self.vit.patch_embed(x)  # (B, N, D)
            if self.config.mode == "with_mask_token" and mask is not None:
                hidden = mask.hidden.unsqueeze(-1)
                tokens = torch.where(hidden, self.mask_token.to(tokens.dtype), tokens)
            tokens = tokens + pos
        prefix = self._prefix(b)
        if prefix is not None:
            tokens = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)  # (B, 1 + K, D)
        return self.vit.norm_pre(self.vit.pos_drop(tokens))

    # -- encode: tokens -> latent ------------------------------------------------------------

    def encode(self, tokens: torch.Tensor, mask: Mask | None = None, return_layers: bool = False):
        """Transformer blocks + final norm over the given tokens: (B, T, D) -> (B, T, D).

        With ``return_layers`` also returns every block's output (before the final norm).
        """
        layers = []
        x = tokens
        for blk in self.vit.blocks:
            if self.vit.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if return_layers:
                layers.append(x)
        x = self.vit.norm(x)
        return (x, layers) if return_layers else x

    def forward(self, x: torch.Tensor, mask: Mask | None = None) -> torch.Tensor:
        return self.encode(self.embed(x, mask), mask)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens, no mask: (B, prefix + N, D), identical to timm's ``forward_features``."""
        self._check_input(x)
        return self.vit.forward_features(x)

    def pool(self, latent: torch.Tensor, how: str = "cls") -> torch.Tensor:
        """(B, T, D) -> (B, D): the [CLS] token, or the mean of the patch tokens."""
        if how == "cls" and self.num_prefix_tokens:
            return latent[:, 0]
        return latent[:, self.num_prefix_tokens :].mean(1)



def require_visible_only_vit(encoder: nn.Module, method: str) -> None:
    """Refuse, naming ``model.encoder``, an encoder that is not a timm ViT (``vit``) running on
    the visible tokens only, for methods that reach into its blocks or encode partial views."""
    if not hasattr(encoder, "vit") or encoder.config.mode != "visible_only":
        raise ConfigError(f"model.encoder: {method} needs the `vit` encoder in mode visible_only")
