"""The ``mfm_vit`` encoder: the core ``vit`` encoder with the BEiT initialization that
Jiahao000/MFM's ``VisionTransformerForMFM`` inherits (``models/vision_transformer.py``).

* Linear and Conv2d weights (the patch projection included), ``pos_embed`` and ``cls_token``:
  truncated normal with std 0.02, **cut at +-0.02** (``VisionTransformerForMFM._trunc_normal_``
  passes a=-std, b=std), biases 0; LayerNorms weight 1, bias 0.
* ``fix_init_weight``: each block's ``attn.proj.weight`` and ``mlp.fc2.weight`` divided by
  sqrt(2 * layer_id), layer_id counted from 1.

Option ``layer_scale`` (the official ``init_values``, ``MODEL.VIT.INIT_VALUES``): per-channel
gains ``gamma_1``/``gamma_2`` on the attention and MLP branches, initialized to the value (timm's
``LayerScale``, keys ``blocks.N.ls1.gamma``/``ls2.gamma``). The released MFM configs set it to
None (off, the default here); the official ``config.py`` default is 0.1.

The official attention has learned ``q_bias`` and ``v_bias`` and no key bias; timm's ``qkv.bias``
also holds a key bias, which starts at 0 and stays there: q.(k + b_k) adds the same q.b_k to every
logit of a query, so the softmax and every gradient through it ignore it (its gradient is 0).
"""
from __future__ import annotations

import math

import attrs
import torch
from timm.layers import LayerScale
from torch import nn

from mimkit.plugin_api import BuildEnv, ViTEncoder


def _tn(t: torch.Tensor, std: float = 0.02) -> None:
    nn.init.trunc_normal_(t, mean=0.0, std=std, a=-std, b=std)


def beit_init_(encoder: ViTEncoder) -> None:
    """Re-initialize a ``vit`` encoder as MFM's ViT does (see the module docstring)."""
    vit = encoder.vit
    if vit.pos_embed is not None and vit.pos_embed.requires_grad:
        _tn(vit.pos_embed.data)
    if vit.cls_token is not None:
        _tn(vit.cls_token.data)
    for m in vit.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            _tn(m.weight.data)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for layer_id, blk in enumerate(vit.blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))


class MFMViTEncoder(ViTEncoder):
    """``mfm_vit``: the ``vit`` encoder (same options and checkpoint keys), BEiT-initialized,
    with optional layer scale."""

    @attrs.define(kw_only=True)
    class Config(ViTEncoder.Config):
        layer_scale: float | None = None  # the official init_values; None = no gamma (the released configs)

    def __init__(self, config: "MFMViTEncoder.Config", env: BuildEnv | None = None):
        super().__init__(config, env)
        beit_init_(self)
        if config.layer_scale is not None:
            for blk in self.vit.blocks:
                blk.ls1 = LayerScale(self.embed_dim, init_values=config.layer_scale)
                blk.ls2 = LayerScale(self.embed_dim, init_values=config.layer_scale)
