"""A functional ViT encoder with one parameter copy per test image (batched TTT-MAE).

The encoder's trainable tensors are stacked on a leading image dimension, ``(n, *shape)``, and the
forward pass is written out with batched matrix products (``torch.baddbmm``) so that image ``i``'s
tokens only ever meet image ``i``'s weights. One ``torch.autograd.grad`` of the *sum* of the
per-image losses then gives every image its own gradient (the images do not interact), and the
SGD-momentum update runs over all stacked tensors at once with ``torch._foreach_*`` ops. No
per-image Python loop, no ``vmap``.

Supported: the core's ``vit`` encoder in ``visible_only`` mode built from a plain timm
VisionTransformer (pre-norm blocks, fused qkv, GELU MLP, a [CLS] token, no layer scale, no q/k
norm, no dropout or drop path). :func:`supports` says whether an encoder qualifies; the batched
adaptation falls back to ``torch.func.vmap`` otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.plugin_api import Mask


def _is(mod: nn.Module, name: str) -> bool:
    return type(mod).__name__ == name


def supports(enc: nn.Module) -> str | None:
    """None if :class:`StackedViT` can run this encoder, else the reason it cannot."""
    vit = getattr(enc, "vit", None)
    cfg = getattr(enc, "config", None)
    if vit is None or not hasattr(vit, "blocks") or getattr(cfg, "mode", None) != "visible_only":
        return "not a visible-only `vit` encoder"
    if getattr(enc, "num_prefix_tokens", None) != 1 or vit.cls_token is None:
        return "needs exactly one prefix ([CLS]) token"
    if not _is(vit.norm_pre, "Identity") or not _is(vit.patch_embed.norm, "Identity") or not _is(vit.norm, "LayerNorm"):
        return "norm_pre / patch-embed norm / final norm of an unsupported kind"
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in vit.modules()):
        return "dropout > 0"
    for blk in vit.blocks:
        a, m = getattr(blk, "attn", None), getattr(blk, "mlp", None)
        if not (_is(blk, "Block") and _is(a, "Attention") and _is(m, "Mlp")):
            return f"block of type {type(blk).__name__}"
        if not all(_is(x, "Identity") for x in (blk.ls1, blk.ls2, blk.drop_path1, blk.drop_path2, a.q_norm, a.k_norm,
                                                 a.norm, m.norm)):
            return "layer scale, drop path or q/k/attn/mlp norm"
        if getattr(a, "gate", None) is not None or not isinstance(m.act, nn.GELU):
            return "gated attention or a non-GELU MLP"
        if not (_is(blk.norm1, "LayerNorm") and _is(blk.norm2, "LayerNorm")):
            return "non-LayerNorm block norms"
    return None


def _affine(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x (n, M, in) @ w.T + b, where w is (out, in) shared or (n, out, in) per image, and b is
    None, (out,) shared or (n, out) per image."""
    if w.ndim == 3:
        if b is not None and b.ndim == 2:
            return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        out = torch.bmm(x, w.transpose(1, 2))
    else:
        if b is None or b.ndim == 1:
            return F.linear(x, w, b)
        out = F.linear(x, w)
    return out if b is None else out + (b.unsqueeze(1) if b.ndim == 2 else b)


class StackedViT:
    """``n`` independent copies of a ViT encoder's trainable tensors, as leaf tensors ``(n, *shape)``.

    Frozen tensors (fixed sin-cos positions) stay shared. ``params`` lists the stacked leaves in
    the encoder's ``named_parameters`` order.
    """

    def __init__(self, enc: nn.Module, n: int):
        why = supports(enc)
        if why is not None:
            raise ValueError(f"StackedViT: {why}")
        self.enc, self.vit, self.n = enc, enc.vit, n
        self.names = [k for k, v in enc.named_parameters() if v.requires_grad]
        self.stacked = {k: enc.get_parameter(k).detach().unsqueeze(0).repeat(n, *[1] * enc.get_parameter(k).ndim)
                        .requires_grad_(True) for k in self.names}
        self.shared = {k: v.detach() for k, v in enc.named_parameters() if not v.requires_grad}
        self.dim = enc.embed_dim

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.stacked[k] for k in self.names]

    def p(self, name: str) -> torch.Tensor | None:
        """A tensor by its encoder name: stacked (n, *shape) or shared (*shape); None if absent."""
        full = f"vit.{name}"
        if full in self.stacked:
            return self.stacked[full]
        return self.shared.get(full)

    def _per_image(self, t: torch.Tensor | None, name: str, ndim: int) -> torch.Tensor | None:
        """Shape a (possibly stacked) tensor for broadcasting over (n, rows, ...)."""
        if t is None:
            return None
        if f"vit.{name}" in self.stacked:  # (n, *shape) -> (n, 1.., *shape)
            return t.view(t.shape[0], *[1] * (ndim - 1 - (t.ndim - 1)), *t.shape[1:])
        return t

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x (n, M, in) -> (n, M, out) with image i's weight (out, in) and bias."""
        return _affine(x, self.p(f"{name}.weight"), self.p(f"{name}.bias"))

    def layer_norm(self, x: torch.Tensor, name: str, eps: float) -> torch.Tensor:
        """x (n, M, D) -> (n, M, D) with image i's affine."""
        w = self._per_image(self.p(f"{name}.weight"), f"{name}.weight", x.ndim)
        b = self._per_image(self.p(f"{name}.bias"), f"{name}.bias", x.ndim)
        if w is not None and w.ndim == 1 and (b is None or b.ndim == 1):
            return F.layer_norm(x, (x.shape[-1],), w, b, eps)
        y = F.layer_norm(x, (x.shape[-1],), None, None, eps)
        y = y * w if w is not None else y
        return y + b if b is not None else y

    def block(self, x: torch.Tensor, i: int, copies: int) -> torch.Tensor:
        """One pre-norm block on x (n, copies * T, D)."""
        blk = self.vit.blocks[i]
        pre = f"blocks.{i}"
        n, rows, d = x.shape
        t = rows // copies
        heads = blk.attn.num_heads
        h = self.layer_norm(x, f"{pre}.norm1", blk.norm1.eps)
        qkv = self.linear(h, f"{pre}.attn.qkv")  # (n, copies*T, 3D)
        qkv = qkv.view(n * copies, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (n*copies, H, T, hd)
        a = a.transpose(1, 2).reshape(n, rows, d)
        x = x + self.linear(a, f"{pre}.attn.proj")
        h = self.layer_norm(x, f"{pre}.norm2", blk.norm2.eps)
        h = F.gelu(self.linear(h, f"{pre}.mlp.fc1"), approximate=blk.mlp.act.approximate)
        return x + self.linear(h, f"{pre}.mlp.fc2")

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (n, C, H, W) -> patch tokens + positions (n, N, D), and the [CLS] token + its
        position (n or 1, 1, D). Every patch is projected once per image; copies gather from it."""
        n = images.shape[0]
        patches = self.enc._patch_vectors(images)  # (n, N, C*p*p)
        w = self.p("patch_embed.proj.weight")
        b = self.p("patch_embed.proj.bias")
        w = w.reshape(*w.shape[: w.ndim - 4], self.dim, -1)  # conv weight -> (.., D, C*p*p)
        tok = _affine(patches, w, b)
        pos = self.p("pos_embed")  # (1, 1 + N, D) shared, or (n, 1, 1 + N, D) stacked
        pos = pos.view(-1, *pos.shape[-2:])
        tok = tok + pos[:, 1:]
        cls = self.p("cls_token")
        cls = cls.view(-1, 1, self.dim) + pos[:, :1]
        return tok, cls.expand(n, 1, self.dim) if cls.shape[0] != n else cls

    def encode(self, x: torch.Tensor, copies: int) -> torch.Tensor:
        for i in range(len(self.vit.blocks)):
            x = self.block(x, i, copies)
        return self.layer_norm(x, "norm", self.vit.norm.eps)

    def forward_masked(self, images: torch.Tensor, mask: Mask) -> torch.Tensor:
        """Copies of each image under their own masks: images (n, C, H, W), a mask over n * copies
        rows (image-major) -> latent (n * copies, 1 + K, D), as ``encoder(copies, mask)`` per image."""
        n, d = images.shape[0], self.dim
        copies, k = mask.ids_keep.shape[0] // n, mask.num_keep
        tok, cls = self.embed(images)
        ids = mask.ids_keep.reshape(n, copies * k, 1).expand(-1, -1, d)
        vis = torch.gather(tok, 1, ids).view(n, copies, k, d)
        x = torch.cat([cls.unsqueeze(1).expand(n, copies, 1, d), vis], 2)  # (n, copies, 1 + K, D)
        x = self.encode(x.view(n, copies * (1 + k), d), copies)
        return x.view(n * copies, 1 + k, d)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """All tokens, no mask: (n, C, H, W) -> (n, 1 + N, D), as ``encoder.forward_features``."""
        tok, cls = self.embed(images)
        return self.encode(torch.cat([cls, tok], 1), 1)
